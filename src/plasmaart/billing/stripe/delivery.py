"""One delivery of a Stripe event, received as Stripe wants it answered:
quickly, and each event applied exactly once by its id.

A repeat is recognised with one read; what needs Stripe's API is fetched
before the write transaction (``StripeWebhooks.prefetch``), so the event is
applied in one short transaction; two deliveries of one event racing each
other meet at the events table's primary key, and the loser answers
``duplicate``. This owns its transactions, like a worker's task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy.exc import IntegrityError

from plasmaart.billing.stripe.repository import EventOutcome
from plasmaart.db.engine import Database

if TYPE_CHECKING:
    from plasmaart.billing.stripe.webhooks import StripeWebhooks


@dataclass(frozen=True)
class Delivery:
    event_id: str
    outcome: EventOutcome | Literal["duplicate"]
    detail: str | None = None


def receive(
    db: Database, webhooks: StripeWebhooks, payload: bytes, signature: str | None
) -> Delivery:
    """Verify ``payload`` (``invalid_signature`` if forged or stale) and
    apply its event unless it was applied before."""
    event = webhooks.verify(payload, signature)
    with db.read() as conn:
        if webhooks.seen(conn, event):
            return Delivery(event.id, "duplicate")
        prefetched = webhooks.prefetch(conn, event)
    try:
        with db.write() as conn:
            applied = webhooks.apply(conn, event, prefetched)
    except IntegrityError:
        # Another delivery of the same event won the race and applied it.
        with db.read() as conn:
            if not webhooks.seen(conn, event):
                raise
        return Delivery(event.id, "duplicate")
    if applied.outcome is None:
        return Delivery(event.id, "duplicate")
    return Delivery(event.id, applied.outcome, applied.detail)

"""The Stripe backend's SQL: customers, subscriptions, applied events,
clawbacks, and finding a payment by the Stripe id kept with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, Connection, insert, select, update

from plasmaart.billing.repository import Payment, payment_by_key
from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    payments,
    stripe_clawbacks,
    stripe_customers,
    stripe_events,
    stripe_subscriptions,
    users,
)

EventOutcome = Literal["applied", "ignored", "unknown_customer"]


@dataclass(frozen=True)
class StripeSubscriptionLink:
    stripe_subscription_id: str
    subscription_id: str
    customer_id: str
    last_event_created: datetime | None


@dataclass(frozen=True)
class StripeClawback:
    """A refund or dispute applied once: which payment, why, the event that
    said so, and the credits taken back (``spent`` of them already used)."""

    payment_id: str
    reason: str
    event_id: str
    credits: int
    spent: int
    created_at: datetime


# -- customers -------------------------------------------------------------


def _exists(conn: Connection, key: ColumnElement[str], value: str) -> bool:
    """Whether a row whose ``key`` column is ``value`` exists."""
    return conn.execute(select(key).where(key == value)).first() is not None


def user_exists(conn: Connection, user_id: str) -> bool:
    return _exists(conn, users.c.id, user_id)


def customer_id_of_user(conn: Connection, user_id: str) -> str | None:
    found: str | None = conn.execute(
        select(stripe_customers.c.customer_id).where(stripe_customers.c.user_id == user_id)
    ).scalar_one_or_none()
    return found


def user_of_customer(conn: Connection, customer_id: str) -> str | None:
    found: str | None = conn.execute(
        select(stripe_customers.c.user_id).where(stripe_customers.c.customer_id == customer_id)
    ).scalar_one_or_none()
    return found


def insert_customer(conn: Connection, *, user_id: str, customer_id: str, now: datetime) -> None:
    conn.execute(
        insert(stripe_customers).values(user_id=user_id, customer_id=customer_id, created_at=now)
    )


# -- subscriptions ------------------------------------------------------------


def subscription_link(conn: Connection, stripe_subscription_id: str) -> StripeSubscriptionLink:
    """The link of a Stripe subscription to ours (``LookupError`` if none)."""
    row = conn.execute(
        select(stripe_subscriptions).where(
            stripe_subscriptions.c.stripe_subscription_id == stripe_subscription_id
        )
    ).one_or_none()
    if row is None:
        raise LookupError(stripe_subscription_id)
    return StripeSubscriptionLink(
        stripe_subscription_id=row.stripe_subscription_id,
        subscription_id=row.subscription_id,
        customer_id=row.customer_id,
        last_event_created=None
        if row.last_event_created is None
        else as_utc(row.last_event_created),
    )


def link_subscription(
    conn: Connection,
    *,
    stripe_subscription_id: str,
    subscription_id: str,
    customer_id: str,
    now: datetime,
) -> None:
    """Point ``subscription_id`` (ours, one per wallet) at a Stripe
    subscription: a new one replaces the one before it (a resubscription)."""
    conn.execute(
        stripe_subscriptions.delete().where(
            stripe_subscriptions.c.subscription_id == subscription_id
        )
    )
    conn.execute(
        insert(stripe_subscriptions).values(
            stripe_subscription_id=stripe_subscription_id,
            subscription_id=subscription_id,
            customer_id=customer_id,
            last_event_created=None,
            created_at=now,
            updated_at=now,
        )
    )


def set_last_event_created(
    conn: Connection, stripe_subscription_id: str, created: datetime, now: datetime
) -> None:
    conn.execute(
        update(stripe_subscriptions)
        .where(stripe_subscriptions.c.stripe_subscription_id == stripe_subscription_id)
        .values(last_event_created=created, updated_at=now)
    )


# -- events -------------------------------------------------------------------


def event_seen(conn: Connection, event_id: str) -> bool:
    return _exists(conn, stripe_events.c.id, event_id)


def record_event(
    conn: Connection, *, event_id: str, event_type: str, created: datetime, now: datetime
) -> None:
    """The event is being applied (``update_event`` records how it ended): a
    second insert of its id fails on the primary key, so a delivery racing
    this one rolls its own effects back."""
    conn.execute(
        insert(stripe_events).values(
            id=event_id, type=event_type, created=created, processed_at=now, outcome="applied"
        )
    )


def update_event(
    conn: Connection, event_id: str, *, outcome: EventOutcome, detail: str | None
) -> None:
    conn.execute(
        update(stripe_events)
        .where(stripe_events.c.id == event_id)
        .values(outcome=outcome, detail=None if detail is None else detail[:2000])
    )


# -- payments and their reversals ---------------------------------------------


def payment_by_external_id(conn: Connection, external_id: str) -> Payment | None:
    """The succeeded payment Stripe knows by ``external_id`` (a payment
    intent or an invoice)."""
    key = conn.execute(
        select(payments.c.idempotency_key)
        .where(payments.c.external_id == external_id, payments.c.status == "succeeded")
        .order_by(payments.c.id)
        .limit(1)
    ).scalar_one_or_none()
    return None if key is None else payment_by_key(conn, key)


def clawed_back(conn: Connection, payment_id: str) -> bool:
    return _exists(conn, stripe_clawbacks.c.payment_id, payment_id)


def record_clawback(conn: Connection, clawback: StripeClawback) -> None:
    conn.execute(insert(stripe_clawbacks).values(asdict(clawback)))

"""The sandbox billing backend: payments succeed at once, offline.

Like Stripe's test mode it has a test clock (``SandboxTestClock``, moved by
``POST /v1/admin/clock/advance``) and cards that can be made to decline
(``POST /v1/admin/users/{id}/billing/sandbox-card {"declines": true}``): while
a user's card declines, every sandbox charge of theirs fails, so renewals put
the subscription past due and purchases answer 402 ``payment_failed``.
Off-session charges (auto top-ups, ``charge_off_session``) also honour
``{"requires_action": true}``: like Stripe's 3D Secure test cards, each asks
the customer to authenticate it (docs/credits.md, Auto top-up).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.backends import (
    ActionRequired,
    ChargeOutcome,
    CheckoutOutcome,
    Customer,
    Declined,
    Effective,
    OffSessionOutcome,
    Paid,
)
from plasmaart.billing.repository import Subscription
from plasmaart.catalog import CreditPack, PlanSpec
from plasmaart.clock import Clock

DECLINED = "the sandbox card declines (an admin set it to)"
AUTHENTICATION = "the sandbox card asks for authentication (an admin set it to)"


class SandboxBackend:
    name = "sandbox"
    renews_on_clock = True

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def checkout_subscription(
        self,
        conn: Connection,
        *,
        customer: Customer,
        plan: PlanSpec,
        idempotency_key: str,  # noqa: ARG002 - nothing external to deduplicate
    ) -> CheckoutOutcome:
        return self._charge(conn, customer, plan.price_cents)

    def checkout_pack(
        self,
        conn: Connection,
        *,
        customer: Customer,
        pack: CreditPack,
        idempotency_key: str,  # noqa: ARG002
    ) -> CheckoutOutcome:
        return self._charge(conn, customer, pack.price_cents)

    def change_plan(
        self,
        conn: Connection,
        *,
        customer: Customer,
        subscription: Subscription,  # noqa: ARG002 - the service keeps its state
        plan: PlanSpec,  # noqa: ARG002
        effective: Effective,  # noqa: ARG002
        amount_cents: int,
        idempotency_key: str,  # noqa: ARG002
        prorate_at: datetime | None = None,  # noqa: ARG002 - amount_cents is prorated
    ) -> ChargeOutcome:
        return self._charge(conn, customer, amount_cents)

    def _nothing_to_tell(
        self,
        conn: Connection,  # noqa: ARG002
        *,
        customer: Customer,  # noqa: ARG002
        subscription: Subscription,  # noqa: ARG002
    ) -> None:
        """Nothing outside to tell: the clock reads the subscription's own
        state (``cancel_at_period_end``, ``stops_for_suspension``), ends it at
        its period end or charges its renewal."""
        return None

    cancel = stop_renewal = resume_renewal = end_now = _nothing_to_tell

    def charge_renewal(
        self,
        conn: Connection,
        *,
        customer: Customer,
        subscription: Subscription,  # noqa: ARG002
        plan: PlanSpec,  # noqa: ARG002
        amount_cents: int,
        idempotency_key: str,  # noqa: ARG002
    ) -> ChargeOutcome:
        return self._charge(conn, customer, amount_cents)

    def has_payment_method(self, conn: Connection, *, customer: Customer) -> bool:  # noqa: ARG002
        """Every sandbox customer has a card on file."""
        return True

    def charge_off_session(
        self,
        conn: Connection,
        *,
        customer: Customer,
        pack: CreditPack,
        idempotency_key: str,  # noqa: ARG002 - nothing external to deduplicate
        cards_as_of: datetime | None = None,  # noqa: ARG002 - one card per user
    ) -> OffSessionOutcome:
        """Paid at once; declined while the card declines; authentication
        asked while it ``requires_action`` (a decline wins over it)."""
        charged = self._charge(conn, customer, pack.price_cents)
        if isinstance(charged, Paid) and repo.card_requires_action(conn, customer.user_id):
            return ActionRequired(AUTHENTICATION)
        return charged

    # -- the sandbox's own controls ------------------------------------------

    def card_declines(self, conn: Connection, user_id: str) -> bool:
        return repo.card_declines(conn, user_id)

    def set_card(
        self,
        conn: Connection,
        user_id: str,
        *,
        declines: bool,
        requires_action: bool | None = None,
    ) -> None:
        """Make every charge of ``user_id`` decline (or succeed again);
        ``requires_action``: off-session charges ask for authentication (None:
        as before)."""
        repo.set_card(
            conn, user_id, declines=declines, now=self.clock.now(), requires_action=requires_action
        )

    def _charge(self, conn: Connection, customer: Customer, amount_cents: int) -> Paid | Declined:
        if amount_cents and repo.card_declines(conn, customer.user_id):
            return Declined(DECLINED)
        return Paid()

"""Clawbacks: a paid purchase taken back by a refund or a dispute.

What remains of the purchase's credits leaves the wallet (the ledger's
``clawback``, idempotent per payment and reason), the audit log records it,
and the clawback listeners (``hooks.py``; fair use: the review flag) hear of it, all in the
caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.repository import Payment
from plasmaart.clock import Clock
from plasmaart.ledger.service import LedgerService

ClawbackReason = Literal["refund", "dispute"]


@dataclass(frozen=True)
class ClawbackOutcome:
    """A paid purchase taken back by a refund or a dispute: ``clawed_back``
    credits of it removed from the wallet, ``spent`` credits of it already
    consumed (and ``held`` by running generations). ``spent > 0`` is what the
    policy's review flag is about."""

    user_id: str
    wallet_id: str
    payment_id: str
    clawed_back: int
    spent: int
    held: int
    reason: ClawbackReason

    @property
    def needs_review(self) -> bool:
        return self.spent > 0


class ClawbackService:
    def __init__(self, clock: Clock, ledger: LedgerService, hooks: BillingHooks) -> None:
        self.clock = clock
        self.ledger = ledger
        # Who hears of every clawback (billing/hooks.py).
        self.hooks = hooks

    def claw_back(
        self, conn: Connection, payment: Payment, *, reason: ClawbackReason, actor: str
    ) -> ClawbackOutcome:
        """Take back what remains of ``payment``'s credits (a refund or a
        dispute), write it to the audit log and tell the clawback listeners.
        The caller applies each reversal once (the ledger's key makes a repeat
        with the same reason a no-op, but the listeners would hear it again)."""
        clawed_back = spent = held = 0
        if payment.lot_id is not None:
            result = self.ledger.clawback(
                conn,
                payment.lot_id,
                idempotency_key=f"clawback:{payment.id}:{reason}",
                reason=f"{reason} of payment {payment.id}",
            )
            clawed_back, spent, held = result.clawed_back, result.spent, result.held
        outcome = ClawbackOutcome(
            user_id=payment.user_id,
            wallet_id=payment.wallet_id,
            payment_id=payment.id,
            clawed_back=clawed_back,
            spent=spent,
            held=held,
            reason=reason,
        )
        audit.record(
            conn,
            actor=actor,
            action=f"billing.{reason}_clawback",
            target=payment.user_id,
            reason=f"{reason} of payment {payment.id}",
            now=self.clock.now(),
            data={
                "payment_id": payment.id,
                "wallet_id": payment.wallet_id,
                "clawed_back": clawed_back,
                "spent": spent,
                "held": held,
                "needs_review": outcome.needs_review,
            },
        )
        self.hooks.clawed_back(conn, outcome)
        return outcome

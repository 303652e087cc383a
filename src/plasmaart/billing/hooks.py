"""Who hears of billing's facts, inside the transaction that makes them.

Billing tells two facts to the packages above it, which it does not import:
a clawback (a purchase refunded or disputed, with how much of it was spent)
and a payment recorded (fair use watches upgrades for plan-change cycling).
``BillingService`` owns one ``BillingHooks`` from its construction; a
listener registers itself when it is built (``FairUseService`` does, in its
constructor), so bootstrap builds the services in order and patches nothing.

A listener runs inside the caller's transaction: what it writes commits or
rolls back with the fact it heard of, and an exception it raises refuses the
whole write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection

if TYPE_CHECKING:
    from plasmaart.billing.clawbacks import ClawbackOutcome
    from plasmaart.billing.repository import Payment

# Told of every clawback inside its transaction (fair use flags the account).
ClawbackListener = Callable[[Connection, "ClawbackOutcome"], None]
# Told of every payment recorded, inside its transaction (fair use watches
# upgrades for plan-change cycling).
PaymentListener = Callable[[Connection, "Payment"], None]


class BillingHooks:
    def __init__(self) -> None:
        self._clawback_listeners: list[ClawbackListener] = []
        self._payment_listeners: list[PaymentListener] = []

    def listen_to_clawbacks(self, listener: ClawbackListener) -> None:
        self._clawback_listeners.append(listener)

    def listen_to_payments(self, listener: PaymentListener) -> None:
        self._payment_listeners.append(listener)

    def clawed_back(self, conn: Connection, outcome: ClawbackOutcome) -> None:
        """Tell every clawback listener, in registration order."""
        for listener in self._clawback_listeners:
            listener(conn, outcome)

    def payment_recorded(self, conn: Connection, payment: Payment) -> None:
        """Tell every payment listener, in registration order."""
        for listener in self._payment_listeners:
            listener(conn, payment)

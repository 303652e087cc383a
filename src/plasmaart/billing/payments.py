"""Payments: recording each one (numbering its receipt, ``receipts.py``, and
telling the payment listeners, ``hooks.py``), and the customer's payment
history. Every payment is written by the use case that moved the money
(``subscriptions.py``, ``packs.py``), in its transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.receipts import ReceiptService
from plasmaart.billing.repository import Payment, PaymentKind
from plasmaart.catalog import CreditPack, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock


class PaymentService:
    def __init__(
        self, clock: Clock, catalogs: Catalogs, hooks: BillingHooks, receipts: ReceiptService
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        # Who hears of every payment recorded (billing/hooks.py).
        self.hooks = hooks
        # Numbers every succeeded payment and queues its receipt (receipts.py).
        self.receipts = receipts

    def history(
        self, conn: Connection, user_id: str, *, limit: int, before: str | None = None
    ) -> list[Payment]:
        """The user's payments, newest first; ``before``: a payment id (the cursor)."""
        return repo.payments_of_user(conn, user_id, before=before, limit=limit)

    def record(
        self,
        conn: Connection,
        *,
        payment_id: str,
        key: str,
        user_id: str,
        wallet_id: str,
        subscription_id: str | None,
        kind: PaymentKind,
        plan: PlanSpec | None,
        amount_cents: int,
        credits: int,
        lot_id: str | None,
        period: tuple[datetime, datetime] | None,
        backend: str,
        external_id: str | None,
        pack: CreditPack | None = None,
        failure_reason: str | None = None,
        hosted_invoice_url: str | None = None,
    ) -> Payment:
        """Write a payment (succeeded, or failed with its ``failure_reason``)
        and tell the listeners, in the caller's transaction. A succeeded one
        gets its receipt number and its receipt, whatever it paid for:
        this is the one place every payment goes through.
        ``hosted_invoice_url``: the provider's page of the invoice (Stripe)."""
        payment = repo.insert_payment(
            conn,
            id=payment_id,
            idempotency_key=key,
            user_id=user_id,
            wallet_id=wallet_id,
            subscription_id=subscription_id,
            kind=kind,
            status="failed" if failure_reason else "succeeded",
            plan_id=None if plan is None else plan.id,
            pack_id=None if pack is None else pack.id,
            amount_cents=amount_cents,
            # The catalog file's currency: announced changes never touch it.
            currency=self.catalogs.base.currency,
            credits=credits,
            lot_id=lot_id,
            period_start=None if period is None else period[0],
            period_end=None if period is None else period[1],
            backend=backend,
            external_id=external_id,
            failure_reason=failure_reason,
            created_at=self.clock.now(),
            hosted_invoice_url=hosted_invoice_url,
        )
        if payment.status == "succeeded":
            payment = self.receipts.issue(conn, payment, plan=plan)
        self.hooks.payment_recorded(conn, payment)
        return payment

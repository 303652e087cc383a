"""Payments: recording each one (numbering its receipt, ``receipts.py``,
telling the payment listeners, ``hooks.py``, and the payer's webhooks,
``payment.succeeded`` / ``payment.failed``), and the customer's payment
history. Every payment is written by the use case that moved the money
(``subscriptions.py``, ``packs.py``), in its transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.receipts import ReceiptService, receipt_label
from plasmaart.billing.repository import Payment, PaymentKind
from plasmaart.catalog import CreditPack, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.db.values import WebhookEventType
from plasmaart.eventbus import iso_utc
from plasmaart.outbox.webhooks import WebhookEvents


class PaymentService:
    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        hooks: BillingHooks,
        receipts: ReceiptService,
        *,
        webhook_events: WebhookEvents | None = None,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        # Who hears of every payment recorded (billing/hooks.py).
        self.hooks = hooks
        # Numbers every succeeded payment and queues its receipt (receipts.py).
        self.receipts = receipts
        # Tells the payer's webhook endpoints of each payment (docs/webhooks.md).
        self.webhook_events = webhook_events

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
        self._tell_webhooks(conn, payment)
        return payment

    def _tell_webhooks(self, conn: Connection, payment: Payment) -> None:
        """``payment.succeeded`` or ``payment.failed``, once per payment, for
        the payer's endpoints subscribed to it (none: nothing is written)."""
        events = self.webhook_events
        if events is None:
            return
        event: WebhookEventType = (
            "payment.succeeded" if payment.status == "succeeded" else "payment.failed"
        )
        if not events.wanted(conn, payment.user_id, event):
            return
        events.emit(
            conn,
            cause_key=f"payment:{payment.id}",
            user_id=payment.user_id,
            type=event,
            data=payment_data(payment),
        )


def payment_data(payment: Payment) -> dict[str, object]:
    """A payment as its webhook event carries it (``GET /v1/payments`` shows
    the same facts)."""
    number = payment.receipt_number if payment.status == "succeeded" else None
    return {
        "id": payment.id,
        "kind": payment.kind,
        "status": payment.status,
        "amount_cents": payment.amount_cents,
        "currency": payment.currency,
        "credits": payment.credits,
        "plan": payment.plan_id,
        "pack": payment.pack_id,
        "period_start": None if payment.period_start is None else iso_utc(payment.period_start),
        "period_end": None if payment.period_end is None else iso_utc(payment.period_end),
        "failure_reason": payment.failure_reason,
        "receipt_number": None if number is None else receipt_label(number),
        "created_at": iso_utc(payment.created_at),
    }

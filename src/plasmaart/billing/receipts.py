"""Receipts: a number and a receipt for every payment that succeeded.

``ReceiptService.issue`` is called by ``PaymentService.record`` for each
succeeded payment of every kind (subscription, renewal, upgrade, pack;
sandbox or Stripe), in the payment's transaction:

* the payment gets the next receipt number (``repository.number_receipt``:
  consecutive, without gaps, never reused), shown as ``PA-000042``
  (``receipt_label``);
* its receipt is queued for the outbox once per payment (cause
  ``receipt:<payment id>``). A renewal happens while the customer is away:
  its receipt is the renewal notice (``notices.RenewalPaid``, in the app and
  by mail), which carries the receipt's number and links; any other payment
  was made by the customer there and then, and its receipt is a letter
  (``ReceiptIssued``, mail only). Either way one mail per payment.

``ReceiptService.receipt`` reads one receipt for the page
``GET /v1/payments/{id}/receipt``: only the payer's own, and only of a
payment that succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.errors import NoReceipt
from plasmaart.billing.notices import RenewalPaid
from plasmaart.billing.repository import Payment
from plasmaart.catalog import PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.errors import NotFound
from plasmaart.links import Links
from plasmaart.outbox import Outbox

RECEIPT_PREFIX = "PA-"


def receipt_label(number: int) -> str:
    """A receipt number as receipts show it: ``PA-`` and at least six digits."""
    return f"{RECEIPT_PREFIX}{number:06d}"


def receipt_path(payment_id: str) -> str:
    return f"/v1/payments/{payment_id}/receipt"


@dataclass(frozen=True)
class Receipt:
    """A succeeded payment as its receipt shows it."""

    payment: Payment
    number: str  # PA-000042
    buyer_email: str
    # The plan paid for (a subscription, renewal or upgrade), by name.
    plan_name: str | None
    # The receipt page, at the server's public address.
    url: str

    @property
    def invoice_url(self) -> str | None:
        """Stripe's hosted invoice page, when Stripe took the payment."""
        return self.payment.hosted_invoice_url

    @property
    def paid_at(self) -> datetime:
        return self.payment.created_at


@dataclass(frozen=True)
class ReceiptIssued:
    """The receipt of a subscription, an upgrade or a credit pack, mailed to the payer."""

    kind: ClassVar[str] = "billing.receipt"
    receipt: Receipt

    def data(self) -> dict[str, Any]:
        return {"payment_id": self.receipt.payment.id, "receipt_number": self.receipt.number}


class ReceiptService:
    def __init__(self, clock: Clock, catalogs: Catalogs, outbox: Outbox, links: Links) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.outbox = outbox
        self.links = links

    def issue(self, conn: Connection, payment: Payment, *, plan: PlanSpec | None) -> Payment:
        """Number the succeeded ``payment`` and queue its receipt (once per
        payment); the payment with its number. ``plan``: what a plan's
        payment paid for, as the catalog had it."""
        number = repo.number_receipt(conn, payment.id, self.clock.now())
        payment = replace(payment, receipt_number=number)
        receipt = Receipt(
            payment=payment,
            number=receipt_label(number),
            buyer_email=repo.user_email(conn, payment.user_id),
            plan_name=None if plan is None else plan.name,
            url=self.links.url(receipt_path(payment.id)),
        )
        if (
            payment.kind == "renewal"
            and plan is not None
            and payment.subscription_id is not None
            and payment.period_end is not None
        ):
            self.outbox.enqueue(
                conn,
                cause_key=f"receipt:{payment.id}",
                user_id=payment.user_id,
                fact=RenewalPaid(
                    payment.subscription_id,
                    plan,
                    payment.id,
                    payment.credits,
                    payment.period_end,
                    payment.currency,
                    receipt=receipt,
                ),
            )
        else:
            self.outbox.enqueue(
                conn,
                cause_key=f"receipt:{payment.id}",
                user_id=payment.user_id,
                fact=ReceiptIssued(receipt),
                in_app=False,
            )
        return payment

    def receipt(self, conn: Connection, user_id: str, payment_id: str) -> Receipt:
        """The receipt of ``user_id``'s payment ``payment_id``. Somebody
        else's payment is as unknown as a payment that does not exist (a
        team's members see its wallet, not what its owner paid); a failed
        payment has no receipt (``no_receipt``)."""
        payment = repo.payment_by_id(conn, payment_id)
        if payment is None or payment.user_id != user_id:
            raise NotFound(f"you have no payment {payment_id!r}")
        if payment.status != "succeeded" or payment.receipt_number is None:
            raise NoReceipt(
                f"payment {payment_id} failed ({payment.failure_reason or 'declined'}): "
                "nothing was charged, so there is no receipt"
            )
        return Receipt(
            payment=payment,
            number=receipt_label(payment.receipt_number),
            buyer_email=repo.user_email(conn, payment.user_id),
            plan_name=self._plan_name(conn, payment),
            url=self.links.url(receipt_path(payment.id)),
        )

    def _plan_name(self, conn: Connection, payment: Payment) -> str | None:
        """The plan's name as the catalog had it when its period started."""
        if payment.plan_id is None:
            return None
        catalog = self.catalogs.at(conn, payment.period_start or payment.created_at)
        try:
            return catalog.plan(payment.plan_id).name
        except KeyError:
            return payment.plan_id

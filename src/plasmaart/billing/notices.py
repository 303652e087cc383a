"""What billing tells subscribers, as facts for the notification outbox
(``plasmaart.outbox``); the words are ``notify.texts``'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from plasmaart.catalog.schema import PlanSpec

if TYPE_CHECKING:
    from plasmaart.billing.receipts import Receipt


@dataclass(frozen=True)
class RenewalPaid:
    """The subscription renewed on ``plan``: ``credits`` granted for the new
    period, which ends at ``period_end``, and the plan's price charged. It is
    the renewal's receipt too (``receipts.py``): ``receipt`` gives its number
    and links."""

    kind: ClassVar[str] = "billing.renewed"
    subscription_id: str
    plan: PlanSpec
    payment_id: str
    credits: int
    period_end: datetime
    currency: str
    receipt: Receipt | None = None

    def data(self) -> dict[str, Any]:
        data = {
            "subscription_id": self.subscription_id,
            "plan": self.plan.id,
            "payment_id": self.payment_id,
        }
        if self.receipt is not None:
            data["receipt_number"] = self.receipt.number
        return data


@dataclass(frozen=True)
class RenewalDeclined:
    """The renewal on ``plan`` was declined (``reason``, as the payment
    backend gave it); the plan is kept for ``grace_days``."""

    kind: ClassVar[str] = "billing.payment_failed"
    subscription_id: str
    plan: PlanSpec
    reason: str
    grace_days: int

    def data(self) -> dict[str, Any]:
        return {"subscription_id": self.subscription_id, "plan": self.plan.id}

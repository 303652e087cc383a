"""What billing tells subscribers, as facts for the notification outbox
(``plasmaart.outbox``); the words are ``notify.texts``'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class RenewalPaid:
    kind: ClassVar[str] = "billing.renewed"
    subscription_id: str
    plan_id: str
    plan_name: str
    payment_id: str
    # Granted for the new period, which ends at ``period_end``.
    credits: int
    period_end: datetime
    price_cents: int
    currency: str

    def data(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "plan": self.plan_id,
            "payment_id": self.payment_id,
        }


@dataclass(frozen=True)
class RenewalDeclined:
    kind: ClassVar[str] = "billing.payment_failed"
    subscription_id: str
    plan_id: str
    plan_name: str
    # As the payment backend gave it.
    reason: str
    grace_days: int

    def data(self) -> dict[str, Any]:
        return {"subscription_id": self.subscription_id, "plan": self.plan_id}

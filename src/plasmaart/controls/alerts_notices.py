"""What a balance alert tells the wallet's owner, as a fact for the outbox:
the available balance fell below one of the owner's own thresholds. It is a
notice (in the app and by mail); the words are ``notify.letters.alerts``'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class BalanceAlertFired:
    kind: ClassVar[str] = "credits.low"
    alert_id: str
    wallet_id: str
    team_id: str | None
    available: int
    # The threshold in credits it fell below, and how it was set: a number
    # of credits, or a percent of the wallet's monthly allocation.
    threshold: int
    credits: int | None
    percent: int | None

    def data(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "wallet_id": self.wallet_id,
            "team_id": self.team_id,
            "available": self.available,
            "threshold": self.threshold,
            "credits": self.credits,
            "percent": self.percent,
        }

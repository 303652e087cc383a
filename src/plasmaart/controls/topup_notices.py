"""What the auto top-up tells the wallet's owner, as facts for the outbox
(``plasmaart.outbox``); the words are ``notify.letters.topup``'s. A run that
succeeds says so with its receipt (``billing.receipts``), like every payment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from plasmaart.controls.topup_repository import TopupRun


@dataclass(frozen=True)
class RunFact:
    """A notice about one run: its pack, credits and price."""

    run_id: str
    wallet_id: str
    pack: str
    credits: int
    amount_cents: int
    currency: str

    @classmethod
    def about(cls, run: TopupRun, **rest: Any) -> Self:
        """This notice about ``run``, with the notice's own fields in ``rest``."""
        return cls(
            run.id, run.wallet_id, run.pack_id, run.credits, run.amount_cents, run.currency, **rest
        )


@dataclass(frozen=True)
class TopupFailed(RunFact):
    """A run was declined (``reason``); ``failures`` in a row so far, the
    auto top-up still on (it tries again when the balance next drops)."""

    kind: ClassVar[str] = "topup.failed"
    reason: str
    failures: int
    limit: int
    settings_url: str

    def data(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "wallet_id": self.wallet_id, "failures": self.failures}


@dataclass(frozen=True)
class TopupDisabled(RunFact):
    """The ``failures``-th failure in a row turned the auto top-up off."""

    kind: ClassVar[str] = "topup.disabled"
    reason: str
    failures: int
    settings_url: str

    def data(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "wallet_id": self.wallet_id, "failures": self.failures}


@dataclass(frozen=True)
class TopupActionRequired(RunFact):
    """The bank asked the customer to authenticate the charge (SCA): nothing
    was charged; ``url`` is where they pay the pack themselves."""

    kind: ClassVar[str] = "topup.action_required"
    url: str

    def data(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "wallet_id": self.wallet_id, "action_url": self.url}


@dataclass(frozen=True)
class TopupCapReached:
    """A top-up was due but would pass the monthly cap: none this month."""

    kind: ClassVar[str] = "topup.cap_reached"
    wallet_id: str
    month: str  # 2026-01
    spent_cents: int
    cap_cents: int
    price_cents: int
    currency: str
    settings_url: str

    def data(self) -> dict[str, Any]:
        return {"wallet_id": self.wallet_id, "month": self.month}

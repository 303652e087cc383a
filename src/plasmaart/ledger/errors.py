"""The ledger's refusals. Each writes nothing: the caller's transaction rolls back."""

from __future__ import annotations

from plasmaart.errors import (
    Conflict,
    DomainError,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
)
from plasmaart.errors import InvalidInput as InvalidAmount

__all__ = [
    "CaptureExceedsHold",
    "HoldAlreadyResolved",
    "HoldNotFound",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidAmount",
    "LedgerError",
    "LotNotFound",
    "WalletNotFound",
]

LedgerError = DomainError


class WalletNotFound(NotFound):
    def __init__(self, wallet_id: str) -> None:
        super().__init__(f"no wallet {wallet_id!r}")


class HoldNotFound(NotFound):
    def __init__(self, hold_id: str) -> None:
        super().__init__(f"no hold {hold_id!r}")


class LotNotFound(NotFound):
    def __init__(self, lot_id: str) -> None:
        super().__init__(f"no lot {lot_id!r}")


class HoldAlreadyResolved(Conflict):
    code = "hold_resolved"
    title = "Hold already resolved"

    def __init__(self, hold_id: str, status: str) -> None:
        super().__init__(f"hold {hold_id!r} is already {status}; a hold resolves exactly once")


class CaptureExceedsHold(InvalidAmount):
    def __init__(self, hold_id: str, credits: int, amount: int) -> None:
        super().__init__(
            f"cannot capture {credits} credits from hold {hold_id!r} of {amount}",
            field="credits",
        )

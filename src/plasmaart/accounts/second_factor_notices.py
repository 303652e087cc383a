"""What two-factor tells the account's address, as facts for the outbox: it
was turned on or off, a recovery code was used, new recovery codes were made.
Each is a security notice (in the app and by mail), so that someone who did
not do it learns of it; the words are ``notify.letters.twofa``'s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class TwoFactorEnabled:
    kind: ClassVar[str] = "account.two_factor_enabled"
    at: datetime
    recovery_codes: int

    def data(self) -> dict[str, Any]:
        return {"two_factor": True}


@dataclass(frozen=True)
class TwoFactorDisabled:
    kind: ClassVar[str] = "account.two_factor_disabled"
    at: datetime
    # True when an operator turned it off (``plasmaart users disable-2fa``).
    by_operator: bool

    def data(self) -> dict[str, Any]:
        return {"two_factor": False, "by_operator": self.by_operator}


@dataclass(frozen=True)
class RecoveryCodeUsed:
    kind: ClassVar[str] = "account.recovery_code_used"
    at: datetime
    codes_left: int

    def data(self) -> dict[str, Any]:
        return {"recovery_codes_left": self.codes_left}


@dataclass(frozen=True)
class RecoveryCodesRegenerated:
    kind: ClassVar[str] = "account.recovery_codes_regenerated"
    at: datetime
    recovery_codes: int

    def data(self) -> dict[str, Any]:
        return {"recovery_codes_left": self.recovery_codes}

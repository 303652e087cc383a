"""What accounts tell their users, as facts for the notification outbox
(``plasmaart.outbox``); the words are ``notify.texts``'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class SignupAttempt:
    """Somebody tried to sign up with the address of an existing account."""

    kind: ClassVar[str] = "account.signup_attempt"
    email: str
    at: datetime

    def data(self) -> dict[str, Any]:
        return {"email": self.email}


@dataclass(frozen=True)
class AccountSuspended:
    kind: ClassVar[str] = "account.suspended"
    # As the admin (or fair use) gave it, shown to the user.
    reason: str | None

    def data(self) -> dict[str, Any]:
        return {"status": "suspended"}


@dataclass(frozen=True)
class AccountReinstated:
    kind: ClassVar[str] = "account.reinstated"

    def data(self) -> dict[str, Any]:
        return {"status": "active"}

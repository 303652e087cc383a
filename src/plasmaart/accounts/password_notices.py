"""What password reset and change tell the owner of an address, as facts for
the notification outbox; the words are ``notify/letters/passwords.py``'s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal


@dataclass(frozen=True)
class PasswordResetLink:
    """The single-use link that sets a new password (a letter: mail only,
    sensitive, since its body carries the token)."""

    kind: ClassVar[str] = "account.password_reset"
    email: str
    url: str
    minutes: int

    def data(self) -> dict[str, Any]:
        # Never the link: ``data`` is kept after the body is blanked.
        return {"email": self.email}


@dataclass(frozen=True)
class PasswordChanged:
    """The account's password was changed: by a reset link or from the
    settings. Tells the owner what to do if it was not them."""

    kind: ClassVar[str] = "account.password_changed"
    email: str
    at: datetime
    how: Literal["reset", "change"]
    # The client address the change came from, as the server saw it.
    address: str
    support_email: str
    # Where to ask for a new reset link (the dashboard's forgot-password page).
    forgot_url: str

    def data(self) -> dict[str, Any]:
        return {"email": self.email, "how": self.how}

"""What proving and changing an address tells the user, as facts for the
notification outbox; the words are ``notify.letters.addresses``'.

The link letters carry a token in their ``url`` (queued ``sensitive``: the
body is blanked once the mail is out); their ``data`` never holds it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class VerificationLink:
    """The link that proves the account's address (sign-up, or a resend)."""

    kind: ClassVar[str] = "account.verify_email"
    email: str
    url: str
    valid_days: int

    def data(self) -> dict[str, Any]:
        return {"email": self.email}


@dataclass(frozen=True)
class Welcome:
    """The first steps, mailed (and shown in the app) once, at sign-up."""

    kind: ClassVar[str] = "account.welcome"
    email: str
    plan_name: str
    monthly_credits: int
    cheapest_model: str
    cheapest_model_credits: int
    pack_credits: int
    pack_price_cents: int
    pack_currency: str
    verify_first: bool
    create_url: str
    billing_url: str
    settings_url: str
    docs_url: str
    support_email: str

    def data(self) -> dict[str, Any]:
        return {"email": self.email, "plan": self.plan_name}


@dataclass(frozen=True)
class AddressChangeLink:
    """To the new address: the link that makes it the account's."""

    kind: ClassVar[str] = "account.email_change_link"
    old_email: str
    new_email: str
    url: str
    valid_days: int

    def data(self) -> dict[str, Any]:
        return {"email": self.new_email}


@dataclass(frozen=True)
class AddressChangeRequested:
    """To the current address: a change to another one was asked."""

    kind: ClassVar[str] = "account.email_change_requested"
    old_email: str
    new_email: str
    at: datetime

    def data(self) -> dict[str, Any]:
        return {"email": self.old_email, "new_email": self.new_email}


@dataclass(frozen=True)
class AddressChanged:
    """To the old address (and in the app): the change took effect."""

    kind: ClassVar[str] = "account.email_changed"
    old_email: str
    new_email: str
    at: datetime

    def data(self) -> dict[str, Any]:
        return {"email": self.new_email, "old_email": self.old_email}


@dataclass(frozen=True)
class AddressInUse:
    """To the owner of an address another account asked to move to. Says
    nothing of who asked, and nothing changes for the owner."""

    kind: ClassVar[str] = "account.email_change_attempt"
    email: str
    at: datetime

    def data(self) -> dict[str, Any]:
        return {"email": self.email}

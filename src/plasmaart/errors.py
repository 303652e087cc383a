"""Business failures: exception classes with a stable ``code`` and HTTP status.

One handler in ``web`` turns them into problem+json; the CLI prints them. An
expected refusal is never a 500.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal


class DomainError(Exception):
    code: ClassVar[str] = "invalid_input"
    status: ClassVar[int] = 422
    title: ClassVar[str] = "Invalid input"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(DomainError):
    code = "invalid_input"
    status = 422
    title = "Invalid input"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        errors = [{"field": field or "body", "message": detail}]
        super().__init__(detail, errors=extra.pop("errors", errors), **extra)


class Unauthenticated(DomainError):
    code = "unauthenticated"
    status = 401
    title = "Authentication required"


class Forbidden(DomainError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class AccountSuspended(DomainError):
    code = "account_suspended"
    status = 403
    title = "Account suspended"


class EmailNotVerified(DomainError):
    """The account has not proven its address yet, and the request needs it
    (paying, joining a team, creating API keys: docs/accounts.md)."""

    code = "email_not_verified"
    status = 403
    title = "E-mail address not verified"


class InvalidToken(DomainError):
    """A single-use link's token (a reset, a verification, an invitation)
    that is unknown, used or expired: the same answer for all three."""

    code = "invalid_token"
    status = 400
    title = "Invalid or expired link"


class NotFound(DomainError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(DomainError):
    code = "conflict"
    status = 409
    title = "Conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"
    title = "Idempotency key reused"


def credits_text(n: int) -> str:
    """``1 credit``, ``800 credits``: a count of credits, in the right number."""
    return f"{n} credit" + ("" if n == 1 else "s")


def needs_credits(required: int, available: int) -> str:
    """Why a request is refused for want of credits, in words."""
    are = "is" if available == 1 else "are"
    return f"this needs {credits_text(required)} and {available} {are} available"


class InsufficientCredits(DomainError):
    code = "insufficient_credits"
    status = 402
    title = "Insufficient credits"

    def __init__(self, required: int, available: int) -> None:
        super().__init__(
            needs_credits(required, available),
            required=required,
            available=available,
        )
        self.required = required
        self.available = available


SpendLimit = Literal["wallet_monthly", "key_daily", "key_monthly", "member_monthly"]


class SpendLimitReached(DomainError):
    """A spend limit (docs/credits.md) would be passed: which one, how much
    is left of it, and when it resets."""

    code = "spend_limit_reached"
    status = 402
    title = "Spend limit reached"

    def __init__(
        self, detail: str, *, limit: SpendLimit, resets_at: datetime, cap: int, spent: int
    ) -> None:
        super().__init__(detail, limit=limit, resets_at=resets_at.isoformat(), cap=cap, spent=spent)
        self.limit = limit
        self.resets_at = resets_at

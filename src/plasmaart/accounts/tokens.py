"""Single-use links mailed to an address, and the throttle of the routes that
mail them.

A token is 256 random bits, handed out once (in the link) and stored as its
SHA-256 only; it is this purpose's, used once (a conditional UPDATE) and
short-lived. Every refusal (unknown, used, expired, another purpose's) is the
same ``invalid_token`` and writes nothing.
"""

from __future__ import annotations

import math
import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection

from plasmaart.accounts import tokens_repository as repo
from plasmaart.accounts.credentials import digest
from plasmaart.accounts.tokens_repository import TokenGrant
from plasmaart.clock import Clock
from plasmaart.db.values import AccountTokenPurpose
from plasmaart.errors import DomainError, InvalidToken
from plasmaart.ids import new_id

__all__ = ["LIFETIMES", "AccountTokens", "Throttle", "Throttled", "TokenGrant", "retry_after"]

LIFETIMES: dict[AccountTokenPurpose, timedelta] = {
    "password_reset": timedelta(minutes=30),
    "email_verification": timedelta(days=2),
    "email_change": timedelta(days=2),
}


class AccountTokens:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def issue(
        self, conn: Connection, purpose: AccountTokenPurpose, *, user_id: str, email: str
    ) -> str:
        """A new token for ``purpose``, mailed to ``email``; the user's older
        unused tokens of this purpose stop working (the newest link wins)."""
        now = self.clock.now()
        repo.retire_tokens(conn, user_id, (purpose,), now)
        token = secrets.token_urlsafe(32)
        repo.insert_token(
            conn,
            token_id=new_id("tok"),
            purpose=purpose,
            user_id=user_id,
            email=email,
            token_hash=digest(token),
            now=now,
            expires_at=now + LIFETIMES[purpose],
        )
        return token

    def use(self, conn: Connection, purpose: AccountTokenPurpose, token: str) -> TokenGrant:
        """Spend the token; ``InvalidToken`` if it is unknown, used, expired or
        another purpose's."""
        grant = repo.use_token(conn, purpose, digest(token), self.clock.now())
        if grant is None:
            raise InvalidToken("this link is not valid: it was used already, expired or mistyped")
        return grant

    def peek(self, conn: Connection, purpose: AccountTokenPurpose, token: str) -> TokenGrant:
        """What the token would grant, without spending it (a page that asks
        for a new password first shows whether the link still works)."""
        grant = repo.live_token(conn, purpose, digest(token), self.clock.now())
        if grant is None:
            raise InvalidToken("this link is not valid: it was used already, expired or mistyped")
        return grant

    def retire(
        self, conn: Connection, user_id: str, purposes: tuple[AccountTokenPurpose, ...]
    ) -> None:
        repo.retire_tokens(conn, user_id, purposes, self.clock.now())

    def purge(self, conn: Connection) -> int:
        """Forget tokens expired for a day (kept that long for support questions)."""
        return repo.delete_tokens_before(conn, self.clock.now() - timedelta(days=1))


class Throttled(DomainError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(
            f"too many {what}; try again in {retry_after} seconds", retry_after=retry_after
        )
        self.retry_after = retry_after


class Throttle:
    """At most ``limit`` requests of an action per subject (an address, a
    client, a user) in a sliding window, counted in the database so that
    every API process sees the same count."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def take(
        self,
        conn: Connection,
        action: str,
        subjects: tuple[tuple[str, int], ...],
        *,
        window: timedelta,
        what: str,
    ) -> None:
        """Count one request of ``action`` for each ``(subject, limit)``;
        ``Throttled`` (and nothing counted) when any subject is at its limit."""
        now = self.clock.now()
        for subject, limit in subjects:
            recent = repo.recent_requests(conn, action, subject, since=now - window, limit=limit)
            wait = retry_after(recent, limit, window, now)
            if wait is not None:
                raise Throttled(what, wait)
        for subject, _limit in subjects:
            repo.insert_request(conn, action, subject, now)

    def purge(self, conn: Connection, *, older_than: timedelta = timedelta(days=1)) -> int:
        return repo.delete_requests_before(conn, self.clock.now() - older_than)


def retry_after(recent: list[datetime], limit: int, window: timedelta, now: datetime) -> int | None:
    """Seconds until the oldest of the ``limit`` newest requests (newest
    first) leaves the window; None while fewer than ``limit`` were made."""
    if len(recent) < limit:
        return None
    return max(1, math.ceil((recent[limit - 1] + window - now).total_seconds()))

"""Sessions, API keys and the login throttle.

Session tokens and API keys are random secrets handed out once; the database
keeps only their SHA-256 (they carry 256 bits of entropy, so a fast hash is
enough — unlike passwords, which get argon2id). The SQL is in
``credentials_repository``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Connection

from plasmaart.accounts import credentials_repository as repo
from plasmaart.accounts.credentials_repository import ApiKey, KeyLimits, SessionInfo
from plasmaart.clock import Clock
from plasmaart.errors import DomainError, InvalidInput, NotFound
from plasmaart.ids import new_id

__all__ = [
    "API_KEYS_PER_USER",
    "API_KEY_PREFIX",
    "IDEMPOTENCY_RETENTION",
    "MAX_KEY_CREDIT_LIMIT",
    "SESSION_LIFETIME",
    "SESSION_TOUCH_EVERY",
    "ApiKey",
    "CredentialService",
    "KeyLimits",
    "LoginThrottled",
    "NewApiKey",
    "NewSession",
    "SessionInfo",
    "digest",
]

SESSION_LIFETIME = timedelta(days=30)
# A session's last_seen_at is refreshed at most this often, so that reads do
# not turn into writes.
SESSION_TOUCH_EVERY = timedelta(minutes=5)
API_KEY_PREFIX = "pa_live_"
API_KEYS_PER_USER = 50
API_KEY_NAME_MAX = 100
# A key's daily and monthly credit limits: whole credits from 1 up to this.
MAX_KEY_CREDIT_LIMIT = 10**12
# Failed logins: at most this many per account, and per client address, in the window.
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_FAILURES_PER_EMAIL = 5
LOGIN_FAILURES_PER_ADDRESS = 20
# How long a response to a POST with an Idempotency-Key is replayed.
IDEMPOTENCY_RETENTION = timedelta(hours=24)


class LoginThrottled(DomainError):
    code = "rate_limited"
    status = 429
    title = "Too many attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed logins; try again in {retry_after} seconds",
            retry_after=retry_after,
        )
        self.retry_after = retry_after


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_credit_limit(value: int | None, field: str) -> int | None:
    """A key's limit: a whole number of credits from 1 up, or None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("must be a whole number of credits or null", field=field)
    if not 1 <= value <= MAX_KEY_CREDIT_LIMIT:
        raise InvalidInput(f"must be between 1 and {MAX_KEY_CREDIT_LIMIT}", field=field)
    return value


def retry_after(failures: list[datetime], limit: int, now: datetime) -> int | None:
    """Seconds until the oldest of ``limit`` recent failures (newest first)
    leaves the window, or None while fewer than ``limit`` failed."""
    if len(failures) < limit:
        return None
    wait = (failures[limit - 1] + LOGIN_WINDOW - now).total_seconds()
    return max(1, math.ceil(wait))


@dataclass(frozen=True)
class NewSession(SessionInfo):
    """A session just opened, with its token: the secret, shown once."""

    token: str


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str


class CredentialService:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    # -- sessions --------------------------------------------------------

    def open_session(
        self,
        conn: Connection,
        user_id: str,
        *,
        user_agent: str | None = None,
        address: str | None = None,
    ) -> NewSession:
        """A new session with fresh tokens (never reuse one: no fixation),
        noting the browser (``User-Agent``) and client address it came from."""
        now = self.clock.now()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + SESSION_LIFETIME
        session_id = new_id("ses")
        repo.insert_session(
            conn,
            session_id=session_id,
            token_hash=digest(token),
            user_id=user_id,
            csrf_token=csrf,
            now=now,
            expires_at=expires,
            user_agent=None if user_agent is None else user_agent[:300],
            address=None if address is None else address[:64],
        )
        return NewSession(user_id, csrf, expires, session_id, token)

    def session(self, conn: Connection, token: str) -> SessionInfo | None:
        """The session of ``token`` while it has not expired, else None."""
        found = repo.session_by_hash(conn, digest(token))
        if found is None or found.expires_at <= self.clock.now():
            return None
        return found

    def touch_session(self, conn: Connection, token: str) -> None:
        now = self.clock.now()
        repo.touch_session(conn, digest(token), now=now, seen_before=now - SESSION_TOUCH_EVERY)

    def close_session(self, conn: Connection, token: str) -> None:
        repo.delete_session(conn, digest(token))

    def close_all_sessions(self, conn: Connection, user_id: str) -> None:
        repo.delete_sessions_of(conn, user_id)

    def purge_expired_sessions(self, conn: Connection) -> int:
        return repo.delete_sessions_expired(conn, self.clock.now())

    # -- API keys --------------------------------------------------------

    def create_api_key(
        self,
        conn: Connection,
        user_id: str,
        name: str,
        *,
        daily_credit_limit: int | None = None,
        monthly_credit_limit: int | None = None,
    ) -> NewApiKey:
        """A new key, with its spend limits (None: none; docs/credits.md)."""
        daily = key_credit_limit(daily_credit_limit, "daily_credit_limit")
        monthly = key_credit_limit(monthly_credit_limit, "monthly_credit_limit")
        name = name.strip()
        if not 1 <= len(name) <= API_KEY_NAME_MAX:
            raise InvalidInput(
                f"a key needs a name of 1 to {API_KEY_NAME_MAX} characters", field="name"
            )
        if repo.count_active_api_keys(conn, user_id) >= API_KEYS_PER_USER:
            raise InvalidInput(
                f"at most {API_KEYS_PER_USER} active keys; revoke one first", field="name"
            )
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(new_id("key"), name, secret[:16], self.clock.now(), None, None, daily, monthly)
        repo.insert_api_key(conn, key, user_id=user_id, secret_hash=digest(secret))
        return NewApiKey(key, secret)

    def list_api_keys(self, conn: Connection, user_id: str) -> list[ApiKey]:
        """The user's keys, newest first."""
        return repo.api_keys_of(conn, user_id)

    def set_api_key_limits(
        self,
        conn: Connection,
        user_id: str,
        key_id: str,
        *,
        daily_credit_limit: int | None,
        monthly_credit_limit: int | None,
    ) -> ApiKey:
        """Change one of the user's keys' spend limits (None: no limit); the
        next request made with the key obeys them."""
        daily = key_credit_limit(daily_credit_limit, "daily_credit_limit")
        monthly = key_credit_limit(monthly_credit_limit, "monthly_credit_limit")
        key = repo.api_key_of(conn, user_id, key_id)
        if key is None:
            raise NotFound(f"no API key {key_id!r}")
        if key.revoked_at is not None:
            raise InvalidInput("this key is revoked; its limits no longer matter", field="body")
        repo.set_api_key_limits(conn, user_id, key_id, daily, monthly)
        return replace(key, daily_credit_limit=daily, monthly_credit_limit=monthly)

    def revoke_api_key(self, conn: Connection, user_id: str, key_id: str) -> ApiKey:
        """Revoke one of the user's keys (revoking it again changes nothing)."""
        key = repo.api_key_of(conn, user_id, key_id)
        if key is None:
            raise NotFound(f"no API key {key_id!r}")
        if key.revoked_at is not None:
            return key
        now = self.clock.now()
        repo.revoke_api_key(conn, user_id, key_id, now)
        return replace(key, revoked_at=now)

    def user_of_api_key(self, conn: Connection, secret: str) -> tuple[str, str, bool] | None:
        """``(user_id, key_id, stale)`` for a live key, else None; ``stale`` says
        that ``last_used_at`` is due for a refresh (see ``touch_api_keys``)."""
        found = self.live_api_key(conn, secret)
        if found is None:
            return None
        user_id, limits, stale = found
        return user_id, limits.key_id, stale

    def live_api_key(self, conn: Connection, secret: str) -> tuple[str, KeyLimits, bool] | None:
        """``(user_id, the key's limits, stale)`` for a live key, else None."""
        if not secret.startswith(API_KEY_PREFIX):
            return None
        key = repo.live_api_key(conn, digest(secret))
        if key is None:
            return None
        last = key.last_used_at
        stale = last is None or last < self.clock.now() - SESSION_TOUCH_EVERY
        limits = KeyLimits(key.id, key.daily_credit_limit, key.monthly_credit_limit)
        return key.user_id, limits, stale

    def touch_api_keys(self, conn: Connection, used: Mapping[str, datetime]) -> None:
        """Record when each key was last used (one statement, many rows);
        a time older than the one recorded is ignored."""
        if used:
            repo.touch_api_keys(conn, used)

    # -- the login throttle ----------------------------------------------

    def check_login_allowed(self, conn: Connection, email: str, address: str) -> None:
        """Refuse before checking the password when this account or this client
        failed too often lately: guessing stays slow whatever the attacker rotates."""
        now = self.clock.now()
        since = now - LOGIN_WINDOW
        checks: tuple[tuple[Literal["email", "address"], str, int], ...] = (
            ("email", email, LOGIN_FAILURES_PER_EMAIL),
            ("address", address, LOGIN_FAILURES_PER_ADDRESS),
        )
        for by, value, limit in checks:
            failures = repo.recent_login_failures(conn, by, value, since=since, limit=limit)
            wait = retry_after(failures, limit, now)
            if wait is not None:
                raise LoginThrottled(wait)

    def record_login_failure(self, conn: Connection, email: str, address: str) -> None:
        repo.insert_login_failure(conn, email=email, address=address, now=self.clock.now())

    def forget_login_failures(self, conn: Connection, email: str) -> None:
        repo.delete_login_failures_of(conn, email)

    def purge_idempotency_records(self, conn: Connection, now: datetime) -> None:
        """Forget replayable responses past their retention (24 hours promised;
        kept twice as long). ``now`` is real time, never the sandbox's test
        clock: moving billing time forward must not forget a key."""
        repo.delete_idempotency_records_before(conn, now - 2 * IDEMPOTENCY_RETENTION)

    def purge_login_failures(self, conn: Connection) -> None:
        repo.delete_login_failures_before(conn, self.clock.now() - LOGIN_WINDOW)

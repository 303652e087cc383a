"""Sessions, API keys and the login throttle.

Session tokens and API keys are random secrets handed out once; the database
keeps only their SHA-256 (they carry 256 bits of entropy, so a fast hash is
enough — unlike passwords, which get argon2id).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update

from plasmaart.accounts.repository import AnyRow
from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import api_keys, idempotency_records, login_failures, sessions
from plasmaart.errors import DomainError, InvalidInput, NotFound
from plasmaart.ids import new_id

SESSION_LIFETIME = timedelta(days=30)
# A session's last_seen_at is refreshed at most this often, so that reads do
# not turn into writes.
SESSION_TOUCH_EVERY = timedelta(minutes=5)
API_KEY_PREFIX = "pa_live_"
API_KEYS_PER_USER = 50
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


@dataclass(frozen=True)
class NewSession:
    token: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class SessionInfo:
    user_id: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str


class CredentialService:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    # -- sessions --------------------------------------------------------

    def open_session(self, conn: Connection, user_id: str) -> NewSession:
        """A new session with fresh tokens (never reuse one: no fixation)."""
        now = self.clock.now()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + SESSION_LIFETIME
        conn.execute(
            insert(sessions).values(
                token_hash=digest(token),
                user_id=user_id,
                csrf_token=csrf,
                created_at=now,
                expires_at=expires,
                last_seen_at=now,
            )
        )
        return NewSession(token, csrf, expires)

    def session(self, conn: Connection, token: str) -> SessionInfo | None:
        row = conn.execute(
            select(sessions).where(sessions.c.token_hash == digest(token))
        ).one_or_none()
        if row is None or as_utc(row.expires_at) <= self.clock.now():
            return None
        return SessionInfo(row.user_id, row.csrf_token, as_utc(row.expires_at))

    def touch_session(self, conn: Connection, token: str) -> None:
        now = self.clock.now()
        conn.execute(
            update(sessions)
            .where(
                sessions.c.token_hash == digest(token),
                sessions.c.last_seen_at < now - SESSION_TOUCH_EVERY,
            )
            .values(last_seen_at=now)
        )

    def close_session(self, conn: Connection, token: str) -> None:
        token_hash = digest(token)
        conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash))
        invalidate(conn, f"session:{token_hash}")

    def close_all_sessions(self, conn: Connection, user_id: str) -> None:
        conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
        invalidate(conn, f"user:{user_id}")

    def purge_expired_sessions(self, conn: Connection) -> int:
        result = conn.execute(delete(sessions).where(sessions.c.expires_at <= self.clock.now()))
        return int(result.rowcount or 0)

    # -- API keys --------------------------------------------------------

    def create_api_key(self, conn: Connection, user_id: str, name: str) -> NewApiKey:
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise InvalidInput("a key needs a name of 1 to 100 characters", field="name")
        active = conn.execute(
            select(func.count())
            .select_from(api_keys)
            .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
        ).scalar_one()
        if active >= API_KEYS_PER_USER:
            raise InvalidInput(
                f"at most {API_KEYS_PER_USER} active keys; revoke one first", field="name"
            )
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(new_id("key"), name, secret[:16], self.clock.now(), None, None)
        conn.execute(
            insert(api_keys).values(
                id=key.id,
                user_id=user_id,
                name=key.name,
                prefix=key.prefix,
                secret_hash=digest(secret),
                created_at=key.created_at,
            )
        )
        invalidate(conn, f"user:{user_id}")
        return NewApiKey(key, secret)

    def list_api_keys(self, conn: Connection, user_id: str) -> list[ApiKey]:
        rows = conn.execute(
            select(api_keys)
            .where(api_keys.c.user_id == user_id)
            .order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
        )
        return [_api_key(row) for row in rows]

    def revoke_api_key(self, conn: Connection, user_id: str, key_id: str) -> ApiKey:
        row = conn.execute(
            select(api_keys).where(api_keys.c.id == key_id, api_keys.c.user_id == user_id)
        ).one_or_none()
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        if row.revoked_at is None:
            conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=self.clock.now())
            )
            invalidate(conn, f"user:{user_id}")
        return _api_key(conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one())

    def user_of_api_key(self, conn: Connection, secret: str) -> tuple[str, str, bool] | None:
        """``(user_id, key_id, stale)`` for a live key, else None; ``stale`` says
        that ``last_used_at`` is due for a refresh (see ``touch_api_keys``)."""
        if not secret.startswith(API_KEY_PREFIX):
            return None
        row = conn.execute(
            select(api_keys.c.id, api_keys.c.user_id, api_keys.c.last_used_at).where(
                api_keys.c.secret_hash == digest(secret), api_keys.c.revoked_at.is_(None)
            )
        ).one_or_none()
        if row is None:
            return None
        last = row.last_used_at
        stale = last is None or as_utc(last) < self.clock.now() - SESSION_TOUCH_EVERY
        return row.user_id, row.id, stale

    def touch_api_keys(self, conn: Connection, used: Mapping[str, datetime]) -> None:
        """Record when each key was last used (one statement, many rows);
        a time older than the one recorded is ignored."""
        if not used:
            return
        conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == bindparam("key_id"),
                or_(
                    api_keys.c.last_used_at.is_(None),
                    api_keys.c.last_used_at < bindparam("used_at"),
                ),
            )
            .values(last_used_at=bindparam("used_at")),
            [{"key_id": key_id, "used_at": at} for key_id, at in used.items()],
        )

    # -- the login throttle ----------------------------------------------

    def check_login_allowed(self, conn: Connection, email: str, address: str) -> None:
        """Refuse before checking the password when this account or this client
        failed too often lately: guessing stays slow whatever the attacker rotates."""
        now = self.clock.now()
        since = now - LOGIN_WINDOW
        for column, value, limit in (
            (login_failures.c.email, email, LOGIN_FAILURES_PER_EMAIL),
            (login_failures.c.address, address, LOGIN_FAILURES_PER_ADDRESS),
        ):
            times = (
                conn.execute(
                    select(login_failures.c.created_at)
                    .where(column == value, login_failures.c.created_at > since)
                    .order_by(login_failures.c.created_at.desc())
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            if len(times) >= limit:
                oldest = as_utc(times[-1])
                wait = (oldest + LOGIN_WINDOW - now).total_seconds()
                raise LoginThrottled(max(1, math.ceil(wait)))

    def record_login_failure(self, conn: Connection, email: str, address: str) -> None:
        conn.execute(
            insert(login_failures).values(email=email, address=address, created_at=self.clock.now())
        )

    def forget_login_failures(self, conn: Connection, email: str) -> None:
        conn.execute(delete(login_failures).where(login_failures.c.email == email))

    def purge_idempotency_records(self, conn: Connection) -> None:
        """Forget replayable responses past their retention (24 hours promised;
        kept twice as long)."""
        cutoff = self.clock.now() - 2 * IDEMPOTENCY_RETENTION
        conn.execute(delete(idempotency_records).where(idempotency_records.c.created_at < cutoff))

    def purge_login_failures(self, conn: Connection) -> None:
        cutoff = self.clock.now() - LOGIN_WINDOW
        conn.execute(delete(login_failures).where(login_failures.c.created_at <= cutoff))


def _api_key(row: AnyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=as_utc(row.created_at),
        last_used_at=None if row.last_used_at is None else as_utc(row.last_used_at),
        revoked_at=None if row.revoked_at is None else as_utc(row.revoked_at),
    )

"""Credentials' SQL: sessions, API keys, failed logins, and the purge of
replayable responses. Rows come back as the frozen records below; every
write that changes who a credential belongs to invalidates the cached
principals (``user:<id>``, ``session:<token hash>``: accounts/principals.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update

from plasmaart.accounts.repository import AnyRow
from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import api_keys, idempotency_records, login_failures, sessions


@dataclass(frozen=True)
class SessionInfo:
    user_id: str
    csrf_token: str
    expires_at: datetime
    # The public id (``GET /v1/sessions``); the token's hash is never shown.
    id: str


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    # Credits the key may spend per UTC day and per calendar month (None: no limit).
    daily_credit_limit: int | None = None
    monthly_credit_limit: int | None = None


@dataclass(frozen=True)
class KeyLimits:
    """An API key's id and its spend limits: what a request made with it
    carries (cached with the principal, accounts/principals.py)."""

    key_id: str
    daily: int | None = None
    monthly: int | None = None

    @property
    def limited(self) -> bool:
        return self.daily is not None or self.monthly is not None


class LiveKey(NamedTuple):
    """A key not revoked, found by its secret's hash."""

    id: str
    user_id: str
    last_used_at: datetime | None
    daily_credit_limit: int | None = None
    monthly_credit_limit: int | None = None


# -- sessions ------------------------------------------------------------


def insert_session(
    conn: Connection,
    *,
    session_id: str,
    token_hash: str,
    user_id: str,
    csrf_token: str,
    now: datetime,
    expires_at: datetime,
    user_agent: str | None = None,
    address: str | None = None,
) -> None:
    conn.execute(
        insert(sessions).values(
            id=session_id,
            user_agent=user_agent,
            address=address,
            token_hash=token_hash,
            user_id=user_id,
            csrf_token=csrf_token,
            created_at=now,
            expires_at=expires_at,
            last_seen_at=now,
        )
    )


def session_by_hash(conn: Connection, token_hash: str) -> SessionInfo | None:
    """The session, expired or not (the caller compares with its clock)."""
    row = conn.execute(
        select(
            sessions.c.user_id, sessions.c.csrf_token, sessions.c.expires_at, sessions.c.id
        ).where(sessions.c.token_hash == token_hash)
    ).one_or_none()
    if row is None:
        return None
    return SessionInfo(row.user_id, row.csrf_token, as_utc(row.expires_at), row.id)


def touch_session(
    conn: Connection, token_hash: str, *, now: datetime, seen_before: datetime
) -> None:
    """Note the session seen ``now`` unless it was already seen since ``seen_before``."""
    conn.execute(
        update(sessions)
        .where(sessions.c.token_hash == token_hash, sessions.c.last_seen_at < seen_before)
        .values(last_seen_at=now)
    )


def delete_session(conn: Connection, token_hash: str) -> None:
    conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash))
    invalidate(conn, f"session:{token_hash}")


def delete_sessions_of(conn: Connection, user_id: str) -> None:
    conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
    invalidate(conn, f"user:{user_id}")


def delete_sessions_expired(conn: Connection, now: datetime) -> int:
    result = conn.execute(delete(sessions).where(sessions.c.expires_at <= now))
    return int(result.rowcount or 0)


# -- API keys ------------------------------------------------------------


def count_active_api_keys(conn: Connection, user_id: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(api_keys)
            .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
        ).scalar_one()
    )


def insert_api_key(conn: Connection, key: ApiKey, *, user_id: str, secret_hash: str) -> None:
    conn.execute(
        insert(api_keys).values(
            id=key.id,
            user_id=user_id,
            name=key.name,
            prefix=key.prefix,
            secret_hash=secret_hash,
            created_at=key.created_at,
            daily_credit_limit=key.daily_credit_limit,
            monthly_credit_limit=key.monthly_credit_limit,
        )
    )
    invalidate(conn, f"user:{user_id}")


def set_api_key_limits(
    conn: Connection, user_id: str, key_id: str, daily: int | None, monthly: int | None
) -> None:
    """A key's spend limits; requests with it see them once the cached
    principal is dropped (``user:<id>``)."""
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.user_id == user_id)
        .values(daily_credit_limit=daily, monthly_credit_limit=monthly)
    )
    invalidate(conn, f"user:{user_id}")


def api_keys_of(conn: Connection, user_id: str) -> list[ApiKey]:
    """The user's keys, newest first."""
    rows = conn.execute(
        select(api_keys)
        .where(api_keys.c.user_id == user_id)
        .order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
    )
    return [_api_key(row) for row in rows]


def api_key_of(conn: Connection, user_id: str, key_id: str) -> ApiKey | None:
    row = conn.execute(
        select(api_keys).where(api_keys.c.id == key_id, api_keys.c.user_id == user_id)
    ).one_or_none()
    return None if row is None else _api_key(row)


def revoke_api_key(conn: Connection, user_id: str, key_id: str, now: datetime) -> None:
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
    invalidate(conn, f"user:{user_id}")


def live_api_key(conn: Connection, secret_hash: str) -> LiveKey | None:
    row = conn.execute(
        select(
            api_keys.c.id,
            api_keys.c.user_id,
            api_keys.c.last_used_at,
            api_keys.c.daily_credit_limit,
            api_keys.c.monthly_credit_limit,
        ).where(api_keys.c.secret_hash == secret_hash, api_keys.c.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    last = row.last_used_at
    return LiveKey(
        row.id,
        row.user_id,
        None if last is None else as_utc(last),
        _int_or_none(row.daily_credit_limit),
        _int_or_none(row.monthly_credit_limit),
    )


def touch_api_keys(conn: Connection, used: Mapping[str, datetime]) -> None:
    """Record when each key was last used (one statement, many rows); a time
    older than the one recorded is ignored."""
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


def _api_key(row: AnyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=as_utc(row.created_at),
        last_used_at=None if row.last_used_at is None else as_utc(row.last_used_at),
        revoked_at=None if row.revoked_at is None else as_utc(row.revoked_at),
        daily_credit_limit=_int_or_none(row.daily_credit_limit),
        monthly_credit_limit=_int_or_none(row.monthly_credit_limit),
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


# -- failed logins -------------------------------------------------------


def recent_login_failures(
    conn: Connection,
    by: Literal["email", "address"],
    value: str,
    *,
    since: datetime,
    limit: int,
) -> list[datetime]:
    """When the last ``limit`` failures of this e-mail (or client address)
    after ``since`` happened, newest first."""
    column = login_failures.c.email if by == "email" else login_failures.c.address
    times = conn.execute(
        select(login_failures.c.created_at)
        .where(column == value, login_failures.c.created_at > since)
        .order_by(login_failures.c.created_at.desc())
        .limit(limit)
    ).scalars()
    return [as_utc(at) for at in times]


def insert_login_failure(conn: Connection, *, email: str, address: str, now: datetime) -> None:
    conn.execute(insert(login_failures).values(email=email, address=address, created_at=now))


def delete_login_failures_of(conn: Connection, email: str) -> None:
    conn.execute(delete(login_failures).where(login_failures.c.email == email))


def delete_login_failures_before(conn: Connection, cutoff: datetime) -> None:
    conn.execute(delete(login_failures).where(login_failures.c.created_at <= cutoff))


# -- replayable responses ------------------------------------------------


def delete_idempotency_records_before(conn: Connection, cutoff: datetime) -> None:
    conn.execute(delete(idempotency_records).where(idempotency_records.c.created_at < cutoff))

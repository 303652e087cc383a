"""The SQL of the sessions list (``GET /v1/sessions``), of revoking one
session or all but one, and of finding whom a password reset is for.

Every delete invalidates the cached principals of the sessions it ends
(``session:<token hash>``: accounts/principals.py), so that a revoked
session is refused at once by every process."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, delete, or_, select

from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import sessions, users


@dataclass(frozen=True)
class SessionRecord:
    """A live session as its owner sees it (never its token or its hash)."""

    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str | None
    address: str | None


@dataclass(frozen=True)
class ResetAccount:
    """Who a reset for an address is for: an account not deleted."""

    user_id: str
    email: str


def live_sessions(
    conn: Connection,
    user_id: str,
    *,
    now: datetime,
    limit: int,
    after: tuple[datetime, str] | None = None,
) -> list[SessionRecord]:
    """The user's unexpired sessions, the most recently opened first, from
    after ``(created_at, id)`` of the last one served."""
    query = select(
        sessions.c.id,
        sessions.c.created_at,
        sessions.c.last_seen_at,
        sessions.c.expires_at,
        sessions.c.user_agent,
        sessions.c.address,
    ).where(sessions.c.user_id == user_id, sessions.c.expires_at > now)
    if after is not None:
        created_at, session_id = after
        query = query.where(
            or_(
                sessions.c.created_at < created_at,
                and_(sessions.c.created_at == created_at, sessions.c.id < session_id),
            )
        )
    rows = conn.execute(
        query.order_by(sessions.c.created_at.desc(), sessions.c.id.desc()).limit(limit)
    )
    return [
        SessionRecord(
            row.id,
            as_utc(row.created_at),
            as_utc(row.last_seen_at),
            as_utc(row.expires_at),
            row.user_agent,
            row.address,
        )
        for row in rows
    ]


def delete_session_of(conn: Connection, user_id: str, session_id: str) -> bool:
    """End the user's session ``session_id``; False if the user has none of
    that id (another user's session is never touched)."""
    token_hash = conn.execute(
        select(sessions.c.token_hash).where(
            sessions.c.id == session_id, sessions.c.user_id == user_id
        )
    ).scalar_one_or_none()
    if token_hash is None:
        return False
    conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash))
    invalidate(conn, f"session:{token_hash}")
    return True


def delete_other_sessions(conn: Connection, user_id: str, keep_hash: str | None) -> int:
    """End every session of the user but the one of ``keep_hash`` (all of
    them when None); how many ended."""
    query = select(sessions.c.token_hash).where(sessions.c.user_id == user_id)
    if keep_hash is not None:
        query = query.where(sessions.c.token_hash != keep_hash)
    hashes = list(conn.execute(query).scalars())
    if not hashes:
        return 0
    conn.execute(delete(sessions).where(sessions.c.token_hash.in_(hashes)))
    invalidate(conn, *(f"session:{token_hash}" for token_hash in hashes))
    return len(hashes)


def reset_account(conn: Connection, email: str) -> ResetAccount | None:
    """The account registered with ``email`` (normalised), unless deleted."""
    row = conn.execute(
        select(users.c.id, users.c.email).where(
            users.c.email == email, users.c.deleted_at.is_(None)
        )
    ).one_or_none()
    return None if row is None else ResetAccount(row.id, row.email)


def is_deleted(conn: Connection, user_id: str) -> bool:
    deleted_at = conn.execute(
        select(users.c.deleted_at).where(users.c.id == user_id)
    ).scalar_one_or_none()
    return deleted_at is not None

"""The SQL of proving and changing an account's address: the user's
``email`` and ``email_verified_at``, and the change waiting for its link.
Each write drops the cached user (``user:<id>``) after commit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from plasmaart.db.engine import invalidate
from plasmaart.db.tables import account_tokens, users


def mark_verified(conn: Connection, user_id: str, email: str, now: datetime) -> bool:
    """Prove ``email`` the user's, if it is still their address and not
    proven yet; False (nothing written) otherwise."""
    done = conn.execute(
        update(users)
        .where(
            users.c.id == user_id,
            users.c.email == email,
            users.c.email_verified_at.is_(None),
        )
        .values(email_verified_at=now)
    ).rowcount
    invalidate(conn, f"user:{user_id}")
    return bool(done)


def change_email(
    conn: Connection, user_id: str, old_email: str, new_email: str, now: datetime
) -> bool:
    """Make ``new_email`` (proven now) the user's address, if it is still
    ``old_email``; False (nothing written) otherwise."""
    done = conn.execute(
        update(users)
        .where(users.c.id == user_id, users.c.email == old_email)
        .values(email=new_email, email_verified_at=now)
    ).rowcount
    invalidate(conn, f"user:{user_id}")
    return bool(done)


def pending_email(conn: Connection, user_id: str, now: datetime) -> str | None:
    """The address of the user's change waiting for its link (the newest
    link still usable), or None."""
    row = conn.execute(
        select(account_tokens.c.email)
        .where(
            account_tokens.c.user_id == user_id,
            account_tokens.c.purpose == "email_change",
            account_tokens.c.used_at.is_(None),
            account_tokens.c.expires_at > now,
        )
        .order_by(account_tokens.c.created_at.desc())
        .limit(1)
    ).first()
    return None if row is None else str(row.email)

"""The SQL of single-use links (``account_tokens``), of the throttle of the
account routes (``auth_throttle``) and of two-factor recovery codes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, update

from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import account_tokens, auth_throttle, recovery_codes, users
from plasmaart.db.values import AccountTokenPurpose

# -- single-use links -----------------------------------------------------------


@dataclass(frozen=True)
class TokenGrant:
    """What a used token proved: the user, and the address it was mailed to."""

    id: str
    user_id: str
    email: str


def insert_token(
    conn: Connection,
    *,
    token_id: str,
    purpose: AccountTokenPurpose,
    user_id: str,
    email: str,
    token_hash: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    conn.execute(
        insert(account_tokens).values(
            id=token_id,
            purpose=purpose,
            user_id=user_id,
            email=email,
            token_hash=token_hash,
            created_at=now,
            expires_at=expires_at,
        )
    )


def use_token(
    conn: Connection, purpose: AccountTokenPurpose, token_hash: str, now: datetime
) -> TokenGrant | None:
    """Mark the token used if it is this purpose's, unused and unexpired (a
    conditional UPDATE: of two requests racing with one link, one wins);
    None otherwise, and nothing is written."""
    used = conn.execute(
        update(account_tokens)
        .where(
            account_tokens.c.token_hash == token_hash,
            account_tokens.c.purpose == purpose,
            account_tokens.c.used_at.is_(None),
            account_tokens.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(account_tokens.c.id, account_tokens.c.user_id, account_tokens.c.email)
    ).first()
    return None if used is None else TokenGrant(used.id, used.user_id, used.email)


def live_token(
    conn: Connection, purpose: AccountTokenPurpose, token_hash: str, now: datetime
) -> TokenGrant | None:
    """The token's grant while it could still be used; nothing is written."""
    row = conn.execute(
        select(account_tokens.c.id, account_tokens.c.user_id, account_tokens.c.email).where(
            account_tokens.c.token_hash == token_hash,
            account_tokens.c.purpose == purpose,
            account_tokens.c.used_at.is_(None),
            account_tokens.c.expires_at > now,
        )
    ).first()
    return None if row is None else TokenGrant(row.id, row.user_id, row.email)


def retire_tokens(
    conn: Connection, user_id: str, purposes: tuple[AccountTokenPurpose, ...], now: datetime
) -> None:
    """Make the user's unused tokens of these purposes unusable (a newer link
    replaces older ones; a new password ends pending resets)."""
    conn.execute(
        update(account_tokens)
        .where(
            account_tokens.c.user_id == user_id,
            account_tokens.c.purpose.in_(purposes),
            account_tokens.c.used_at.is_(None),
        )
        .values(used_at=now)
    )


def delete_tokens_before(conn: Connection, before: datetime) -> int:
    """Forget tokens that expired before ``before``."""
    return conn.execute(delete(account_tokens).where(account_tokens.c.expires_at < before)).rowcount


# -- the throttle -------------------------------------------------------------------


def recent_requests(
    conn: Connection, action: str, subject: str, *, since: datetime, limit: int
) -> list[datetime]:
    """When the newest ``limit`` requests of ``action`` for ``subject`` since
    ``since`` were made, newest first."""
    rows = conn.execute(
        select(auth_throttle.c.created_at)
        .where(
            auth_throttle.c.action == action,
            auth_throttle.c.subject == subject,
            auth_throttle.c.created_at >= since,
        )
        .order_by(auth_throttle.c.created_at.desc())
        .limit(limit)
    )
    return [as_utc(row.created_at) for row in rows]


def insert_request(conn: Connection, action: str, subject: str, now: datetime) -> None:
    conn.execute(insert(auth_throttle).values(action=action, subject=subject[:340], created_at=now))


def delete_requests_before(conn: Connection, before: datetime) -> int:
    return conn.execute(delete(auth_throttle).where(auth_throttle.c.created_at < before)).rowcount


# -- two-factor ---------------------------------------------------------------------


@dataclass(frozen=True)
class TotpState:
    secret: str | None
    pending_secret: str | None
    last_step: int | None


def totp_state(conn: Connection, user_id: str, *, lock: bool = False) -> TotpState:
    """The user's two-factor columns. ``lock``: the user's row is locked
    (PostgreSQL; SQLite's write transactions are serial already) until the
    transaction ends, so that checks of one account's codes run one at a time
    and each sees the failures counted before it."""
    query = select(users.c.totp_secret, users.c.totp_pending_secret, users.c.totp_last_step).where(
        users.c.id == user_id
    )
    if lock:
        query = query.with_for_update(key_share=True)
    row = conn.execute(query).one()
    return TotpState(
        row.totp_secret,
        row.totp_pending_secret,
        None if row.totp_last_step is None else int(row.totp_last_step),
    )


def set_pending_secret(conn: Connection, user_id: str, secret: str | None) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(totp_pending_secret=secret))


def enable_totp(conn: Connection, user_id: str, secret: str, step: int) -> None:
    conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(totp_secret=secret, totp_pending_secret=None, totp_last_step=step)
    )
    invalidate(conn, f"user:{user_id}")


def disable_totp(conn: Connection, user_id: str) -> None:
    conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(totp_secret=None, totp_pending_secret=None, totp_last_step=None)
    )
    conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
    invalidate(conn, f"user:{user_id}")


def advance_step(conn: Connection, user_id: str, step: int) -> bool:
    """Record ``step`` as the last code used, unless a code of this step or a
    later one was used already (conditional: a replayed code loses)."""
    result = conn.execute(
        update(users)
        .where(
            users.c.id == user_id,
            users.c.totp_secret.is_not(None),
            (users.c.totp_last_step.is_(None)) | (users.c.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return result.rowcount == 1


def replace_recovery_codes(
    conn: Connection, user_id: str, rows: list[tuple[str, str]], now: datetime
) -> None:
    """The user's recovery codes become these ``(id, code hash)`` pairs."""
    conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
    conn.execute(
        insert(recovery_codes),
        [
            {"id": code_id, "user_id": user_id, "code_hash": code_hash, "created_at": now}
            for code_id, code_hash in rows
        ],
    )


def use_recovery_code(conn: Connection, user_id: str, code_hash: str, now: datetime) -> str | None:
    """Mark the code used if it is the user's and unused (conditional); its
    id, or None when nothing was written."""
    used = conn.execute(
        update(recovery_codes)
        .where(
            recovery_codes.c.user_id == user_id,
            recovery_codes.c.code_hash == code_hash,
            recovery_codes.c.used_at.is_(None),
        )
        .values(used_at=now)
        .returning(recovery_codes.c.id)
    ).first()
    return None if used is None else str(used.id)


def unused_recovery_codes(conn: Connection, user_id: str) -> int:
    count = conn.execute(
        select(func.count())
        .select_from(recovery_codes)
        .where(recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None))
    ).scalar_one()
    return int(count)

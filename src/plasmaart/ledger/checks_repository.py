"""The scheduled ledger verification's table, ``ledger_checks`` (migration
0014), and the PostgreSQL advisory lock that lets one worker at a time run it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select

from plasmaart.db.tables import ledger_checks

# pg_try_advisory_lock's key: "ledger verify", any constant the platform uses once.
_LOCK_KEY = 0x504C_4C56  # "PLLV"


def try_lock(conn: Connection) -> bool:
    """Take the session-level lock of the verification; False if another
    session holds it (PostgreSQL only). Release it with ``unlock``."""
    return bool(conn.execute(select(func.pg_try_advisory_lock(_LOCK_KEY))).scalar())


def unlock(conn: Connection) -> None:
    conn.execute(select(func.pg_advisory_unlock(_LOCK_KEY)))


def latest_started_at(conn: Connection) -> datetime | None:
    """When the newest recorded verification started (None: never)."""
    started: datetime | None = conn.execute(
        select(ledger_checks.c.started_at)
        .order_by(ledger_checks.c.finished_at.desc(), ledger_checks.c.id.desc())
        .limit(1)
    ).scalar()
    return started


def record(
    conn: Connection,
    *,
    check_id: str,
    started_at: datetime,
    finished_at: datetime,
    ok: bool,
    problems: int,
    summary: str,
    checked_by: str,
) -> None:
    conn.execute(
        insert(ledger_checks).values(
            id=check_id,
            started_at=started_at,
            finished_at=finished_at,
            ok=ok,
            problems=problems,
            summary=summary,
            checked_by=checked_by,
        )
    )


def prune(conn: Connection, before: datetime) -> int:
    """Delete the results that finished before ``before``; how many."""
    return conn.execute(delete(ledger_checks).where(ledger_checks.c.finished_at < before)).rowcount

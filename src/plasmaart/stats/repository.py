"""The queries behind the operators' numbers (``plasmaart.stats``): jobs
counted by state, and the journal's grants, captures and expiries summed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from plasmaart.db.tables import generations, journal_entries
from plasmaart.db.values import GENERATION_STATUSES

_JOBS_BY_STATE = select(generations.c.status, func.count().label("jobs")).group_by(
    generations.c.status
)
_j = journal_entries
_CREDITS_MOVED = select(
    func.coalesce(func.sum(_j.c.amount).filter(_j.c.kind.in_(("grant", "rollover"))), 0).label(
        "granted"
    ),
    func.coalesce(func.sum(_j.c.credits).filter(_j.c.kind == "capture"), 0).label("consumed"),
    func.coalesce(func.sum(_j.c.amount).filter(_j.c.kind == "expire"), 0).label("expired"),
)


@dataclass(frozen=True)
class PlatformStats:
    queue_depth: int  # jobs waiting for a worker
    jobs_by_state: dict[str, int]  # every state, zero included
    credits_granted: int  # grants and rollovers into wallets
    credits_consumed: int  # captured by generations
    credits_expired: int  # lots that ran out unspent
    since: datetime | None  # the window's start (None: all time)


def platform_stats(conn: Connection, *, since: datetime | None = None) -> PlatformStats:
    """Queue depth and jobs by state (now), and the credits granted, consumed
    and expired since ``since`` (all time when None)."""
    counted = dict.fromkeys(GENERATION_STATUSES, 0)
    for row in conn.execute(_JOBS_BY_STATE):
        counted[str(row.status)] = int(row.jobs)
    query = _CREDITS_MOVED
    if since is not None:
        query = query.where(journal_entries.c.created_at >= since)
    moved = conn.execute(query).one()
    return PlatformStats(
        queue_depth=counted["queued"],
        jobs_by_state=counted,
        credits_granted=int(moved.granted),
        credits_consumed=int(moved.consumed),
        # An expiry's amount is the (negative) change of the available balance.
        credits_expired=-int(moved.expired),
        since=since,
    )

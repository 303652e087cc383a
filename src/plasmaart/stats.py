"""The operators' numbers: the generation queue and the credits that moved.

Read by ``GET /v1/admin/stats`` and the dashboard's admin page, from the same
tables the worker and the ledger write (no counters of their own to drift).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from plasmaart.db.tables import generations, journal_entries

GENERATION_STATES = ("queued", "running", "succeeded", "failed", "canceled")


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
    counted = dict.fromkeys(GENERATION_STATES, 0)
    for status, count in conn.execute(
        select(generations.c.status, func.count()).group_by(generations.c.status)
    ).all():
        counted[str(status)] = int(count)
    j = journal_entries
    query = select(
        func.coalesce(func.sum(j.c.amount).filter(j.c.kind.in_(("grant", "rollover"))), 0),
        func.coalesce(func.sum(j.c.credits).filter(j.c.kind == "capture"), 0),
        func.coalesce(func.sum(j.c.amount).filter(j.c.kind == "expire"), 0),
    )
    if since is not None:
        query = query.where(j.c.created_at >= since)
    granted, consumed, expired = conn.execute(query).one()
    return PlatformStats(
        queue_depth=counted["queued"],
        jobs_by_state=counted,
        credits_granted=int(granted),
        credits_consumed=int(consumed),
        # An expiry's amount is the (negative) change of the available balance.
        credits_expired=-int(expired),
        since=since,
    )

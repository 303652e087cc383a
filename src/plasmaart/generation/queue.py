"""The queue in the database: claiming jobs with a lease and a fencing token.

A claim reads the head of the queue (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent workers never block on or take the same row; the
write lock of ``BEGIN IMMEDIATE`` on SQLite), applies the scheduling rules
(virtual start, the wallet's concurrency caps, reserved GPU slots), and marks
the chosen job running with a lease and a new fencing token. Every later write
of the worker is conditional on that token, so a worker whose lease expired
(and whose job another worker took over) can no longer change it.

Leases and deadlines are in real time (the platform's job clock), never the
billing test clock: ``now`` is that clock; ``recorded_at``, the time shown to
users (``started_at``), is the platform's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, case, func, or_, select, update

from plasmaart.billing.service import BillingService
from plasmaart.catalog import Catalog
from plasmaart.db.tables import generations
from plasmaart.generation.bounds import deadline_for
from plasmaart.generation.scheduling import QueuedJob, Running, WalletLimits, pick_next

# How far down the queue one claim looks for a job whose wallet is under its caps.
CLAIM_WINDOW = 64


@dataclass(frozen=True)
class Claim:
    id: str
    token: int
    resumed: bool  # a job another worker had started (its lease expired)


def claim(
    conn: Connection,
    *,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    busy_slots: int,
    total_slots: int,
    catalog: Catalog,
    billing: BillingService,
    recorded_at: datetime | None = None,
) -> Claim | None:
    g = generations
    expired = and_(g.c.status == "running", g.c.lease_expires_at < now)
    # Jobs whose worker died come first: they are already under way.
    candidates = conn.execute(
        select(
            g.c.id,
            g.c.wallet_id,
            g.c.queue_class,
            g.c.enqueued_at,
            g.c.video,
            g.c.status,
            g.c.kind,
            g.c.deadline_at,
        )
        .where(or_(g.c.status == "queued", expired))
        .order_by((g.c.status == "queued").asc(), g.c.virtual_start, g.c.enqueued_at, g.c.id)
        .limit(CLAIM_WINDOW)
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        return None
    resumable = [row for row in candidates if row.status == "running"]
    by_id = {row.id: row for row in candidates}
    if resumable:
        chosen_id, resumed = resumable[0].id, True
    else:
        wallets = {row.wallet_id for row in candidates}
        running = _running(conn, wallets, now)
        limits = _wallet_limits(conn, wallets, billing)
        jobs = [
            QueuedJob(row.id, row.wallet_id, row.queue_class, row.enqueued_at, bool(row.video))
            for row in candidates
        ]
        chosen = pick_next(
            jobs,
            boosts={str(name): boost for name, boost in catalog.queue.boost_seconds.items()},
            running=running,
            limits=limits,
            busy_slots=busy_slots,
            total_slots=total_slots,
            reserved_slots=min(catalog.queue.reserved_gpu_slots, max(total_slots - 1, 0)),
        )
        if chosen is None:
            return None
        chosen_id, resumed = chosen.id, False
    row = by_id[chosen_id]
    # The hard deadline is set once, by the first claim; a resumed job keeps it.
    deadline = row.deadline_at if row.deadline_at is not None else deadline_for(row.kind, now)
    token = conn.execute(
        update(g)
        .where(g.c.id == chosen_id)
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=now + lease,
            fencing_token=g.c.fencing_token + 1,
            started_at=func.coalesce(g.c.started_at, recorded_at or now),
            deadline_at=deadline,
            attempts=g.c.attempts + 1,
        )
        .returning(g.c.fencing_token)
    ).scalar_one()
    return Claim(chosen_id, int(token), resumed)


def _wallet_limits(
    conn: Connection, wallets: set[str], billing: BillingService
) -> dict[str, WalletLimits]:
    """Each wallet's concurrency caps under its current plan. A claim weighs
    up to ``CLAIM_WINDOW`` wallets: their plans come in one batch (the largest
    cost of a claim when it was one lookup per wallet)."""
    return {
        wallet_id: WalletLimits(plan.concurrency.jobs, plan.concurrency.video_jobs)
        for wallet_id, plan in billing.current_plans(conn, wallets).items()
    }


def _running(conn: Connection, wallets: set[str], now: datetime) -> dict[str, Running]:
    g = generations
    rows = conn.execute(
        select(
            g.c.wallet_id,
            func.count(),
            func.sum(case((g.c.video, 1), else_=0)),
        )
        .where(g.c.wallet_id.in_(wallets), g.c.status == "running", g.c.lease_expires_at >= now)
        .group_by(g.c.wallet_id)
    ).all()
    return {row[0]: Running(int(row[1]), int(row[2] or 0)) for row in rows}


def renew(conn: Connection, generation_id: str, token: int, until: datetime) -> bool:
    """Extend the lease; False when the job is no longer ours."""
    result = conn.execute(
        update(generations)
        .where(
            generations.c.id == generation_id,
            generations.c.fencing_token == token,
            generations.c.status == "running",
        )
        .values(lease_expires_at=until)
    )
    return bool(result.rowcount)


def set_provider_request(conn: Connection, generation_id: str, token: int, request_id: str) -> bool:
    result = conn.execute(
        update(generations)
        .where(generations.c.id == generation_id, generations.c.fencing_token == token)
        .values(provider_request_id=request_id)
    )
    return bool(result.rowcount)


def hand_back(conn: Connection, generation_id: str, token: int) -> bool:
    """A worker stopping gracefully leaves its job (leased, at the provider)
    for whoever claims it next: a clean hand-over does not count as one of
    the job's attempts."""
    result = conn.execute(
        update(generations)
        .where(
            generations.c.id == generation_id,
            generations.c.fencing_token == token,
            generations.c.status == "running",
            generations.c.attempts > 0,
        )
        .values(attempts=generations.c.attempts - 1)
    )
    return bool(result.rowcount)


def owns(conn: Connection, generation_id: str, token: int) -> bool:
    row = conn.execute(
        select(generations.c.fencing_token, generations.c.status)
        .where(generations.c.id == generation_id)
        .with_for_update()
    ).one_or_none()
    return row is not None and int(row.fencing_token) == token and row.status == "running"

"""The queue in the database: claiming jobs with a lease and a fencing token.

A claim reads the head of the queue (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent workers never block on or take the same row; the
write lock of ``BEGIN IMMEDIATE`` on SQLite), applies the scheduling rules
(virtual start, the wallet's concurrency caps, reserved GPU slots), and marks
the chosen jobs running with a lease and a new fencing token: a worker claims
all its free slots in one read and one ``UPDATE … RETURNING``. Every later write
of the worker is conditional on that token, so a worker whose lease expired
(and whose job another worker took over) can no longer change it.

Leases and deadlines are in real time (the platform's job clock), never the
billing test clock: ``now`` is that clock; ``recorded_at``, the time shown to
users (``started_at``), is the platform's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, case, func, or_, select, update

from plasmaart.billing.plans import PlanService
from plasmaart.catalog import Catalog
from plasmaart.db.tables import generations
from plasmaart.generation.bounds import deadline_for
from plasmaart.generation.repository import AnyRow
from plasmaart.generation.scheduling import QueuedJob, Running, WalletLimits, pick_many

# How far down the queue one claim looks for a job whose wallet is under its caps.
CLAIM_WINDOW = 64


@dataclass
class Claim:
    id: str
    token: int
    resumed: bool  # a job another worker had started (its lease expired)
    # The job's row as the claim left it (running, leased, with its token):
    # the runner starts from it instead of reading the job again.
    row: AnyRow | None = field(default=None, repr=False, compare=False)

    def take_row(self) -> AnyRow | None:
        """The row as claimed, once: a second run of the same claim (a
        worker that stopped and goes on) reads the job as it is now."""
        row, self.row = self.row, None
        return row


def claim_batch(
    conn: Connection,
    *,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    busy_slots: int,
    total_slots: int,
    catalog: Catalog,
    plans: PlanService,
    recorded_at: datetime | None = None,
    limit: int | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` jobs (by default every free slot of the worker)
    in one read of the queue and one ``UPDATE … RETURNING``.

    The jobs are the ones ``pick_next`` would choose one claim after another:
    jobs whose worker died first, then queue order, each pick counting the
    jobs picked before it against its wallet's caps and the worker's slots.
    """
    free = total_slots - busy_slots
    wanted = free if limit is None else min(limit, free)
    if wanted <= 0:
        return []
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
        return []
    by_id = {row.id: row for row in candidates}
    # A job taken over is already under way: it needs no slot rule or cap.
    chosen: list[tuple[str, bool]] = [
        (row.id, True) for row in candidates if row.status == "running"
    ][:wanted]
    queued = [row for row in candidates if row.status == "queued"]
    if len(chosen) < wanted and queued:
        wallets = {row.wallet_id for row in queued}
        running = _running(conn, wallets, now)
        for job_id, _resumed in chosen:
            taken = by_id[job_id]
            running[taken.wallet_id] = _plus(running.get(taken.wallet_id), bool(taken.video))
        picked = pick_many(
            [
                QueuedJob(row.id, row.wallet_id, row.queue_class, row.enqueued_at, bool(row.video))
                for row in queued
            ],
            count=wanted - len(chosen),
            boosts={str(name): boost for name, boost in catalog.queue.boost_seconds.items()},
            running=running,
            limits=_wallet_limits(conn, wallets, plans),
            busy_slots=busy_slots + len(chosen),
            total_slots=total_slots,
            reserved_slots=min(catalog.queue.reserved_gpu_slots, max(total_slots - 1, 0)),
        )
        chosen.extend((job.id, False) for job in picked)
    if not chosen:
        return []
    ids = [job_id for job_id, _resumed in chosen]
    # The hard deadline is set once, by the first claim; a resumed job keeps it.
    deadlines = {
        job_id: deadline_for(by_id[job_id].kind, now)
        for job_id in ids
        if by_id[job_id].deadline_at is None
    }
    deadline = (
        func.coalesce(g.c.deadline_at, case(deadlines, value=g.c.id, else_=g.c.deadline_at))
        if deadlines
        else g.c.deadline_at
    )
    rows = conn.execute(
        update(g)
        .where(g.c.id.in_(ids))
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=now + lease,
            fencing_token=g.c.fencing_token + 1,
            started_at=func.coalesce(g.c.started_at, recorded_at or now),
            deadline_at=deadline,
            attempts=g.c.attempts + 1,
        )
        .returning(*g.c)
    ).all()
    claimed = {row.id: row for row in rows}
    return [
        Claim(job_id, int(claimed[job_id].fencing_token), resumed, claimed[job_id])
        for job_id, resumed in chosen
    ]


def _plus(running: Running | None, video: bool) -> Running:
    before = running or Running()
    return Running(before.jobs + 1, before.video_jobs + int(video))


def _wallet_limits(
    conn: Connection, wallets: set[str], plans: PlanService
) -> dict[str, WalletLimits]:
    """Each wallet's concurrency caps under its current plan. A claim weighs
    up to ``CLAIM_WINDOW`` wallets: their plans come in one batch (the largest
    cost of a claim when it was one lookup per wallet)."""
    return {
        wallet_id: WalletLimits(plan.concurrency.jobs, plan.concurrency.video_jobs)
        for wallet_id, plan in plans.plans_of(conn, wallets).items()
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
    return generation_id in renew_many(conn, [(generation_id, token)], until)


def renew_many(conn: Connection, jobs: Sequence[tuple[str, int]], until: datetime) -> set[str]:
    """Extend the leases of ``jobs`` (id, fencing token) in one statement; the
    ids of those still ours."""
    if not jobs:
        return set()
    g = generations
    return set(
        conn.execute(
            update(g)
            .where(
                or_(
                    *(and_(g.c.id == job_id, g.c.fencing_token == token) for job_id, token in jobs)
                ),
                g.c.status == "running",
            )
            .values(lease_expires_at=until)
            .returning(g.c.id)
        ).scalars()
    )


def check_in(
    conn: Connection,
    generation_id: str,
    token: int,
    until: datetime,
    request_id: str | None = None,
) -> bool | None:
    """Between two polls, in one statement: the job is still ours (else
    None), its lease extended, the provider's ``request_id`` stored if given;
    whether its user asked to cancel it."""
    g = generations
    values: dict[str, object] = {"lease_expires_at": until}
    if request_id is not None:
        values["provider_request_id"] = request_id
    row = conn.execute(
        update(g)
        .where(g.c.id == generation_id, g.c.fencing_token == token, g.c.status == "running")
        .values(**values)
        .returning(g.c.cancel_requested)
    ).one_or_none()
    return None if row is None else bool(row.cancel_requested)


def hand_back(
    conn: Connection, generation_id: str, token: int, request_id: str | None = None
) -> bool:
    """A worker stopping gracefully leaves its job (leased, at the provider,
    whose ``request_id`` it stores if not stored yet) for whoever claims it
    next: a clean hand-over does not count as one of the job's attempts."""
    values: dict[str, object] = {"attempts": generations.c.attempts - 1}
    if request_id is not None:
        values["provider_request_id"] = request_id
    result = conn.execute(
        update(generations)
        .where(
            generations.c.id == generation_id,
            generations.c.fencing_token == token,
            generations.c.status == "running",
            generations.c.attempts > 0,
        )
        .values(**values)
    )
    return bool(result.rowcount)


def lock_if_owned(conn: Connection, generation_id: str, token: int) -> AnyRow | None:
    """The job's row, locked, if it is still ours (running under ``token``)."""
    row = conn.execute(
        select(generations).where(generations.c.id == generation_id).with_for_update()
    ).one_or_none()
    if row is None or int(row.fencing_token) != token or row.status != "running":
        return None
    return row

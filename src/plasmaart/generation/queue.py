"""Claiming jobs: a lease and a fencing token for each.

A claim reads the head of the queue, applies the scheduling rules
(``scheduling.py``: virtual start, the wallet's concurrency caps, reserved
GPU slots), and marks the chosen jobs running with a lease and a new fencing
token: a worker claims all its free slots in one read and one
``UPDATE … RETURNING`` (the SQL: ``queue_repository.py``). Every later write
of the worker is conditional on that token, so a worker whose lease expired
(and whose job another worker took over) can no longer change it.

Leases and deadlines are in real time (the platform's job clock), never the
billing test clock: ``now`` is that clock; ``recorded_at``, the time shown to
users (``started_at``), is the platform's clock.

A lease is written as "now + one lease" by the clock of the worker that
holds it, and renewed every third of a lease. So no lease can legitimately
run out more than one lease from now: one that does was written before the
wall clock jumped back (or by a worker whose clock runs ahead). If its
worker died, nobody would take its job over until the clock caught up
again, minutes or hours later. The workers' clock pass therefore brings
such leases back to one lease from now (``clamp_runaway_leases``): a live
holder renews it in time as usual (its token is untouched), a dead one's
job is taken over one lease later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection

from plasmaart.billing.plans import PlanService
from plasmaart.catalog import Catalog
from plasmaart.db.engine import Database
from plasmaart.generation import queue_repository as queue_repo
from plasmaart.generation.bounds import deadline_for
from plasmaart.generation.repository import GenerationRow
from plasmaart.generation.scheduling import QueuedJob, Running, WalletLimits, pick_many


@dataclass
class Claim:
    id: str
    token: int
    resumed: bool  # a job another worker had started (its lease expired)
    # The job's row as the claim left it (running, leased, with its token):
    # the runner starts from it instead of reading the job again.
    row: GenerationRow | None = field(default=None, repr=False, compare=False)

    def take_row(self) -> GenerationRow | None:
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
    candidates = queue_repo.candidates(conn, now)
    if not candidates:
        return []
    by_id = {job.id: job for job in candidates}
    # A job taken over is already under way: it needs no slot rule or cap.
    chosen: list[tuple[str, bool]] = [
        (job.id, True) for job in candidates if job.status == "running"
    ][:wanted]
    queued = [job for job in candidates if job.status == "queued"]
    if len(chosen) < wanted and queued:
        wallets = {job.wallet_id for job in queued}
        running = queue_repo.running_by_wallet(conn, wallets, now)
        for job_id, _resumed in chosen:
            taken = by_id[job_id]
            running[taken.wallet_id] = _plus(running.get(taken.wallet_id), bool(taken.video))
        picked = pick_many(
            [
                QueuedJob(job.id, job.wallet_id, job.queue_class, job.enqueued_at, bool(job.video))
                for job in queued
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
    claimed = queue_repo.mark_claimed(
        conn,
        ids,
        worker_id=worker_id,
        lease_until=now + lease,
        started_at=recorded_at or now,
        # The hard deadline is set once, by the first claim; a resumed job keeps it.
        deadlines={
            job_id: deadline_for(by_id[job_id].kind, now)
            for job_id in ids
            if by_id[job_id].deadline_at is None
        },
    )
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
    up to ``queue_repository.CLAIM_WINDOW`` wallets: their plans come in one batch (the largest
    cost of a claim when it was one lookup per wallet)."""
    return {
        wallet_id: WalletLimits(plan.concurrency.jobs, plan.concurrency.video_jobs)
        for wallet_id, plan in plans.plans_of(conn, wallets).items()
    }


def clamp_runaway_leases(db: Database, *, now: datetime, lease: timedelta) -> list[str]:
    """Bring every lease that runs out more than ``lease`` after ``now`` back
    to ``now + lease``; the ids of the jobs whose lease moved. One read when
    there is none (the usual case), no write."""
    limit = now + lease
    with db.read() as conn:
        if not queue_repo.lease_beyond(conn, limit):
            return []
    with db.write() as conn:
        return queue_repo.clamp_leases(conn, limit, limit)

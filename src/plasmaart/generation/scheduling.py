"""Who runs next: the queue's pure scheduling rules (DESIGN.md §4).

Jobs are ordered by a *virtual start time*, ``enqueued_at - boost(queue
class)``: a higher plan's job goes ahead of a lower plan's job enqueued less
than the difference of their boosts earlier, and never further. So no class
starves: a job enqueued at ``t`` can only be overtaken by jobs enqueued before
``t + max_boost``, a bounded set however many higher-plan jobs keep arriving.

At claim time a job is skipped (not reordered) while its wallet is at its
plan's cap of concurrent jobs, or of concurrent video jobs. Worker slots are
shared, except ``reserved_slots`` that only the ``priority_gpu`` class (Studio's
"priority GPU allocation") may take.

Plain data in, plain data out: the queue's SQL (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) applies these rules to the rows it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict, Unpack

PRIORITY_GPU = "priority_gpu"


@dataclass(frozen=True, slots=True)
class QueuedJob:
    id: str
    wallet_id: str
    queue_class: str
    enqueued_at: datetime
    video: bool


@dataclass(frozen=True, slots=True)
class WalletLimits:
    jobs: int
    video_jobs: int


@dataclass(frozen=True, slots=True)
class Running:
    """What a wallet has running now."""

    jobs: int = 0
    video_jobs: int = 0


def virtual_start(enqueued_at: datetime, boost_seconds: int) -> datetime:
    return enqueued_at - timedelta(seconds=boost_seconds)


def queue_order(job: QueuedJob, boosts: Mapping[str, int]) -> tuple[datetime, datetime, str]:
    """The sort key of the queue: virtual start, then real enqueue time, then id."""
    return (virtual_start(job.enqueued_at, boosts[job.queue_class]), job.enqueued_at, job.id)


def within_limits(job: QueuedJob, running: Running, limits: WalletLimits) -> bool:
    if running.jobs >= limits.jobs:
        return False
    return not (job.video and running.video_jobs >= limits.video_jobs)


def may_take_slot(job: QueuedJob, busy_slots: int, total_slots: int, reserved_slots: int) -> bool:
    """Whether a free worker slot may go to ``job``: the last ``reserved_slots``
    free slots are kept for the priority GPU class."""
    free = total_slots - busy_slots
    if free <= 0:
        return False
    return job.queue_class == PRIORITY_GPU or free > reserved_slots


class QueueState(TypedDict):
    """What a pick weighs besides the queued jobs: the queue classes'
    boosts, what each wallet has running and may run, and the worker's slots."""

    boosts: Mapping[str, int]
    running: Mapping[str, Running]
    limits: Mapping[str, WalletLimits]
    busy_slots: int
    total_slots: int
    reserved_slots: int


def pick_next(queued: Iterable[QueuedJob], **state: Unpack[QueueState]) -> QueuedJob | None:
    """The job a worker with a free slot claims next, or None: the first
    that ``pick_many`` would take."""
    picked = pick_many(queued, count=1, **state)
    return picked[0] if picked else None


def pick_many(
    queued: Iterable[QueuedJob],
    *,
    count: int,
    boosts: Mapping[str, int],
    running: Mapping[str, Running],
    limits: Mapping[str, WalletLimits],
    busy_slots: int,
    total_slots: int,
    reserved_slots: int,
) -> list[QueuedJob]:
    """The jobs ``count`` claims in a row would take, in that order: each is
    ``pick_next`` of what is left, with the jobs picked before it counted as
    running (their wallets' caps) and their slots as busy. One pass over the
    queue order, so a batch of claims costs one sort."""
    picked: list[QueuedJob] = []
    now_running = dict(running)
    busy = busy_slots
    for job in sorted(queued, key=lambda j: queue_order(j, boosts)):
        if len(picked) >= count:
            break
        if not may_take_slot(job, busy, total_slots, reserved_slots):
            continue
        before = now_running.get(job.wallet_id, Running())
        if not within_limits(job, before, limits[job.wallet_id]):
            continue
        picked.append(job)
        now_running[job.wallet_id] = Running(before.jobs + 1, before.video_jobs + int(job.video))
        busy += 1
    return picked


def queue_positions(queued: Iterable[QueuedJob], boosts: Mapping[str, int]) -> dict[str, int]:
    """1-based position of every queued job in queue order (what the API
    reports as ``queue_position``; caps may let a later job start first)."""
    ordered = sorted(queued, key=lambda j: queue_order(j, boosts))
    return {job.id: position for position, job in enumerate(ordered, start=1)}


def max_overtake(boosts: Mapping[str, int], queue_class: str) -> timedelta:
    """How much later than a job of ``queue_class`` another job may be
    enqueued and still go first: the largest boost difference."""
    return timedelta(seconds=max(boosts.values()) - boosts[queue_class])

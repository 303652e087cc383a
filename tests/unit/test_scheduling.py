"""The queue's scheduling rules, with Hypothesis: higher plans go first by a
bounded margin, and no plan starves under a steady flood of higher-plan jobs."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from plasmaart.catalog import load_catalog
from plasmaart.generation.scheduling import (
    QueuedJob,
    Running,
    WalletLimits,
    max_overtake,
    may_take_slot,
    pick_next,
    queue_positions,
    within_limits,
)

BOOSTS = dict(load_catalog().queue.boost_seconds)  # the seed catalog's: 0, 30, 60
T0 = datetime(2026, 3, 1, tzinfo=UTC)
PLENTY = WalletLimits(jobs=100, video_jobs=100)


def job(
    name: str, queue_class: str, at: float, wallet: str | None = None, video: bool = False
) -> QueuedJob:
    return QueuedJob(name, wallet or name, queue_class, T0 + timedelta(seconds=at), video)


def first(*jobs: QueuedJob, slots: int = 4, reserved: int = 0) -> str | None:
    chosen = pick_next(
        jobs,
        boosts=BOOSTS,
        running={},
        limits={j.wallet_id: PLENTY for j in jobs},
        busy_slots=0,
        total_slots=slots,
        reserved_slots=reserved,
    )
    return chosen.id if chosen else None


def test_seed_boosts_are_ordered() -> None:
    assert BOOSTS["standard"] < BOOSTS["priority"] < BOOSTS["priority_gpu"]
    assert max_overtake(BOOSTS, "standard") == timedelta(seconds=BOOSTS["priority_gpu"])


@given(delay=st.floats(min_value=0, max_value=600, allow_nan=False))
def test_a_studio_job_overtakes_a_free_job_by_less_than_the_boost(delay: float) -> None:
    free = job("free", "standard", 0)
    studio = job("studio", "priority_gpu", delay)
    margin = BOOSTS["priority_gpu"] - BOOSTS["standard"]
    expected = "studio" if delay < margin else "free"
    assert first(free, studio) == expected


def test_fifo_within_a_class_and_ties_broken_by_id() -> None:
    assert first(job("b", "priority", 5), job("a", "priority", 5), job("c", "priority", 1)) == "c"
    assert first(job("b", "priority", 5), job("a", "priority", 5)) == "a"


def test_caps_skip_a_wallet_without_reordering_the_rest() -> None:
    busy = job("busy", "priority_gpu", 0, wallet="w1")
    video = job("video", "priority", 1, wallet="w2", video=True)
    image = job("image", "standard", 2, wallet="w2")
    limits = {"w1": WalletLimits(1, 0), "w2": WalletLimits(2, 1)}
    running = {"w1": Running(jobs=1), "w2": Running(jobs=1, video_jobs=1)}
    chosen = pick_next(
        [busy, video, image],
        boosts=BOOSTS,
        running=running,
        limits=limits,
        busy_slots=0,
        total_slots=4,
        reserved_slots=0,
    )
    assert chosen is not None
    assert chosen.id == "image"
    assert not within_limits(video, Running(jobs=0, video_jobs=0), WalletLimits(1, 0))


def test_reserved_slots_are_for_priority_gpu_only() -> None:
    studio, pro = job("s", "priority_gpu", 10), job("p", "priority", 0)
    assert may_take_slot(pro, busy_slots=2, total_slots=4, reserved_slots=1)
    assert not may_take_slot(pro, busy_slots=3, total_slots=4, reserved_slots=1)
    assert may_take_slot(studio, busy_slots=3, total_slots=4, reserved_slots=1)
    assert not may_take_slot(studio, busy_slots=4, total_slots=4, reserved_slots=1)
    # With one slot left, the Pro job (earlier in the queue) must wait for the Studio one.
    assert first(pro, studio, slots=1, reserved=1) == "s"


def test_queue_positions_follow_the_queue_order() -> None:
    jobs = [
        job("free", "standard", 0),
        job("pro", "priority", 10),
        job("late", "priority_gpu", 100),
    ]
    assert queue_positions(jobs, BOOSTS) == {"pro": 1, "free": 2, "late": 3}


def simulate(
    arrivals: list[tuple[float, QueuedJob]], slots: int, duration: float, until: float
) -> dict[str, float]:
    """A discrete-event run of the queue: every job takes ``duration``; returns
    each job's start time (seconds after T0)."""
    pending = sorted(arrivals, key=lambda a: a[0])
    queued: list[QueuedJob] = []
    free_at = [0.0] * slots
    started: dict[str, float] = {}
    now = 0.0
    while now <= until and (pending or queued):
        while pending and pending[0][0] <= now:
            queued.append(pending.pop(0)[1])
        slot = min(range(slots), key=lambda s: free_at[s])
        if free_at[slot] <= now and queued:
            chosen = pick_next(
                queued,
                boosts=BOOSTS,
                running={},
                limits={j.wallet_id: PLENTY for j in queued},
                busy_slots=sum(1 for f in free_at if f > now),
                total_slots=slots,
                reserved_slots=0,
            )
            assert chosen is not None
            queued.remove(chosen)
            started[chosen.id] = now
            free_at[slot] = now + duration
            continue
        upcoming = [f for f in free_at if f > now] + [a for a, _ in pending[:1]]
        now = min(upcoming) if upcoming else until + 1
    return started


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False), min_size=20, max_size=120
    ),
    classes=st.lists(st.sampled_from(["priority", "priority_gpu"]), min_size=120, max_size=120),
    free_at=st.floats(min_value=0, max_value=60, allow_nan=False),
    slots=st.integers(1, 3),
    duration=st.sampled_from([1.0, 2.0, 5.0]),
)
def test_a_free_job_runs_within_a_bounded_wait_under_a_flood(
    gaps: list[float], classes: list[str], free_at: float, slots: int, duration: float
) -> None:
    # A steady flood of Pro and Studio jobs, arriving faster than they run.
    arrivals: list[tuple[float, QueuedJob]] = []
    at = 0.0
    for n, gap in enumerate(gaps):
        at += gap
        arrivals.append((at, job(f"j{n}", classes[n], at)))
    # Keep flooding long after the free job arrives.
    flood_end = at
    for n in range(len(gaps), len(gaps) + 400):
        flood_end += 0.5
        arrivals.append((flood_end, job(f"j{n}", "priority_gpu", flood_end)))
    free = job("free", "standard", free_at)
    arrivals.append((free_at, free))
    horizon = flood_end + 10_000
    started = simulate(arrivals, slots, duration, horizon)
    assert "free" in started, "the free job starved"
    # Only jobs enqueued before free_at + max_overtake can go first.
    window = free_at + max_overtake(BOOSTS, "standard").total_seconds()
    ahead = sum(1 for when, j in arrivals if j.id != "free" and when < window)
    bound = free_at + duration + math.ceil(ahead / slots) * duration
    assert started["free"] <= bound
    # And every job enqueued after that window starts after the free job.
    assert all(
        started[j.id] >= started["free"]
        for when, j in arrivals
        if when > window and j.id in started
    )

"""A batch of claims takes exactly the jobs one claim after another would
(``pick_many`` against repeated ``pick_next``), with Hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from plasmaart.catalog import load_catalog
from plasmaart.generation.scheduling import (
    QueuedJob,
    Running,
    WalletLimits,
    pick_many,
    pick_next,
)

BOOSTS = dict(load_catalog().queue.boost_seconds)
T0 = datetime(2026, 3, 1, tzinfo=UTC)
CLASSES = sorted(BOOSTS)
WALLETS = ["w0", "w1", "w2", "w3"]

jobs = st.lists(
    st.tuples(
        st.sampled_from(WALLETS),
        st.sampled_from(CLASSES),
        st.integers(min_value=0, max_value=120),
        st.booleans(),
    ),
    max_size=24,
)
limits = st.fixed_dictionaries(
    {
        wallet: st.builds(WalletLimits, st.integers(min_value=0, max_value=4), st.integers(0, 2))
        for wallet in WALLETS
    }
)
running = st.fixed_dictionaries(
    {
        wallet: st.builds(Running, st.integers(min_value=0, max_value=3), st.integers(0, 2))
        for wallet in WALLETS
    }
)


def one_after_another(
    queued: list[QueuedJob],
    count: int,
    now_running: dict[str, Running],
    caps: dict[str, WalletLimits],
    busy: int,
    total: int,
    reserved: int,
) -> list[QueuedJob]:
    left, taken, state = list(queued), [], dict(now_running)
    for _ in range(count):
        job = pick_next(
            left,
            boosts=BOOSTS,
            running=state,
            limits=caps,
            busy_slots=busy,
            total_slots=total,
            reserved_slots=reserved,
        )
        if job is None:
            break
        taken.append(job)
        left.remove(job)
        before = state.get(job.wallet_id, Running())
        state[job.wallet_id] = Running(before.jobs + 1, before.video_jobs + int(job.video))
        busy += 1
    return taken


@settings(max_examples=300, deadline=None)
@given(
    specs=jobs,
    caps=limits,
    now_running=running,
    total=st.integers(min_value=1, max_value=8),
    busy=st.integers(min_value=0, max_value=8),
    reserved=st.integers(min_value=0, max_value=2),
)
def test_a_batch_takes_what_claims_one_after_another_would(
    specs: list[tuple[str, str, int, bool]],
    caps: dict[str, WalletLimits],
    now_running: dict[str, Running],
    total: int,
    busy: int,
    reserved: int,
) -> None:
    queued = [
        QueuedJob(f"j{n:02d}", wallet, queue_class, T0 + timedelta(seconds=at), video)
        for n, (wallet, queue_class, at, video) in enumerate(specs)
    ]
    count = max(total - busy, 0)
    batch = pick_many(
        queued,
        count=count,
        boosts=BOOSTS,
        running=now_running,
        limits=caps,
        busy_slots=busy,
        total_slots=total,
        reserved_slots=reserved,
    )
    assert batch == one_after_another(queued, count, now_running, caps, busy, total, reserved)
    assert len(batch) <= count

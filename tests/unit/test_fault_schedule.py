"""The fault scheduler of the bank test and ``make soak``
(``tests/support/faults/schedule.py``) with faults that only record what is
done to them, and the writer of the soak's section of reliability.md
(``tests/support/soak.py``)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.faults.schedule import FaultSchedule, Planned
from tests.support.soak import BEGIN, END, Figures, render, rewrite


class Recorded:
    """A fault that notes when it is in, and whether two of it ever were."""

    def __init__(self, kind: str, *, fail_heal: bool = False) -> None:
        self.kind = kind
        self.fail_heal = fail_heal
        self.inside = 0
        self.most_inside = 0
        self.injected = 0
        self.healed = 0
        self.lock = threading.Lock()

    def inject(self) -> None:
        with self.lock:
            self.inside += 1
            self.injected += 1
            self.most_inside = max(self.most_inside, self.inside)

    def heal(self) -> None:
        if self.fail_heal:
            raise RuntimeError("the server would not come back")
        with self.lock:
            self.inside -= 1
            self.healed += 1


def run_for(schedule: FaultSchedule, seconds: float) -> None:
    with schedule:
        time.sleep(seconds)


def test_faults_are_drawn_by_weight_never_two_of_a_kind_and_all_healed_at_the_stop() -> None:
    # Two entries of one kind: still never in twice at once.
    slow = Recorded("slow")
    quick = Recorded("quick")
    once = Recorded("once")
    schedule = FaultSchedule(
        [
            Planned(slow, weight=2, lasts=(0.15, 0.3)),
            Planned(slow, weight=2, lasts=(0.15, 0.3)),
            Planned(quick, weight=1),
            Planned(once, weight=1, lasts=(5.0, 5.0), at_most=1),
        ],
        seed=3,
        every=(0.01, 0.03),
    )
    started = time.monotonic()
    run_for(schedule, 0.8)
    # ``once`` stays in for 5 s unless the stop cuts it short.
    assert time.monotonic() - started < 3
    assert slow.most_inside == 1
    assert (once.injected, once.healed) == (1, 1)
    for fault in (slow, quick, once):
        assert fault.inside == 0
        assert fault.injected == fault.healed
        assert schedule.injected[fault.kind] == fault.injected
    assert slow.injected >= 2
    assert quick.injected >= 1
    assert schedule.skipped["slow"] > 0  # drawn while one was in
    assert schedule.errors == []
    assert schedule.kinds == ["once", "quick", "slow"]
    assert schedule.active == []


def test_a_seed_gives_the_same_draws() -> None:
    def draws(seed: int) -> list[tuple[str, float]]:
        faults = [Recorded("a"), Recorded("b"), Recorded("c")]
        schedule = FaultSchedule(
            [Planned(f, weight=w, lasts=(0, 0.01)) for f, w in zip(faults, (1, 2, 3), strict=True)],
            seed=seed,
            every=(0.005, 0.005),
        )
        run_for(schedule, 0.3)
        assert len(schedule.drawn) >= 8
        return schedule.drawn[:8]

    # Whatever the timing of the injections, the same kinds and durations.
    assert draws(11) == draws(11)
    assert draws(11) != draws(12)


def test_a_heal_that_fails_is_an_error_for_the_caller() -> None:
    stuck = Recorded("stuck", fail_heal=True)
    schedule = FaultSchedule([Planned(stuck)], seed=1, every=(0.01, 0.01))
    run_for(schedule, 0.1)
    assert schedule.errors
    assert schedule.errors[0].startswith("stuck: error: heal raised RuntimeError")
    with pytest.raises(ValueError, match="weight"):
        Planned(stuck, weight=0)
    with pytest.raises(ValueError, match="needs faults"):
        FaultSchedule([], seed=1, every=(1, 2))


def figures(database: str, total: int) -> Figures:
    return Figures(
        database=database,
        mode="soak",
        target=100,
        operations={"submit": total - 10, "cancel": 10},
        refusals={"submit 402 spend_limit_reached": 4},
        notes={},
        faults={"worker SIGKILL": 9, "API SIGKILL": 2},
        jobs={"succeeded": 50},
        topups={},
        checkpoints=12,
        checkpoints_missed=1,
        events_checked=300,
        resyncs=2,
        attempts=400,
        unanswered=30,
        documented_503=7,
        wire_5xx=0,
        violations=0,
        non_terminal=0,
        duration_s=120.0,
        chaos_s=100.0,
    )


def test_the_soak_section_is_rewritten_between_its_markers_only() -> None:
    doc = f"# Reliability\n\n## The soak\n\nProse.\n\n{BEGIN}\n\nold table\n\n{END}\n\n## After\n"
    table = render([figures("sqlite", 110), figures("postgresql", 120)])
    rows = [line for line in table.splitlines() if line.startswith("| SQLite")]
    assert len(rows) == 1
    assert "110 (100)" in rows[0]
    assert "9 worker SIGKILL, 2 API SIGKILL" in rows[0]
    assert "7 answered 503 `unavailable`" in rows[0]
    assert "1.1 operations/s" in rows[0]
    assert "| PostgreSQL + Redis | 120 (100)" in table
    once = rewrite(doc, table)
    assert once.startswith("# Reliability\n\n## The soak\n\nProse.\n\n")
    assert once.endswith(f"{END}\n\n## After\n")
    assert "old table" not in once
    assert rewrite(once, table) == once  # rewritten again, not appended
    # A document with only the first marker gets the end marker.
    assert rewrite(f"a\n{BEGIN}\nrest\n", "t") == f"a\n{BEGIN}\n\nt\n\n{END}\nrest\n"
    with pytest.raises(ValueError, match="marker"):
        rewrite("no markers", table)

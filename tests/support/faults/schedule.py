"""The fault scheduler of the bank test and ``make soak``: faults from a
weighted list, injected at seeded random moments and healed after a bounded
time, never two of one kind at once, counted by kind.

    schedule = FaultSchedule(
        [
            Planned(WorkerKill(fleet, seed=1), weight=3, lasts=(0.0, 0.5)),
            Planned(ApiKill(fleet, 0), weight=1, at_most=1),
            Planned(SomeOutage(...), weight=1, lasts=(2.0, 6.0)),
        ],
        seed=7,
        every=(2.0, 4.0),
    )
    with schedule:  # started; on leaving, no new fault and every one healed
        ...
    schedule.injected  # Counter by kind

Every ``every`` seconds (a seeded random wait in that range) one entry is
drawn by weight among those with injections left (``at_most``); if a fault of
its kind is still in (injected, not yet healed) the moment passes without a
fault (``skipped``). Otherwise a thread of its own injects it, waits the
entry's ``lasts`` (seeded, in that range; cut short when the schedule stops),
and heals it. The draws do not depend on timing, so a seed gives the same
sequence of kinds and durations in every run. An ``inject`` or ``heal`` that
raises, or a heal not done within ``heal_within_s`` of the stop, is recorded
in ``errors``: the caller fails its test with them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from tests.support.faults import Fault

HEAL_WITHIN_S = 120.0


@dataclass(frozen=True)
class Planned:
    """One entry of a schedule: ``fault``, drawn with ``weight``, staying in
    for a time in ``lasts`` (seconds) before its heal, at most ``at_most``
    times in a run (None: no limit)."""

    fault: Fault
    weight: float = 1.0
    lasts: tuple[float, float] = (0.0, 0.0)
    at_most: int | None = None

    def __post_init__(self) -> None:
        low, high = self.lasts
        if self.weight <= 0 or low < 0 or high < low:
            raise ValueError(f"{self.fault.kind}: weight > 0 and 0 <= lasts[0] <= lasts[1]")


@dataclass(frozen=True)
class Moment:
    """One line of the timeline: seconds since the start, kind, what happened."""

    at: float
    kind: str
    what: str  # injected | healed | skipped (one of its kind still in) | error: ...


class FaultSchedule:
    def __init__(
        self,
        planned: Sequence[Planned],
        *,
        seed: int,
        every: tuple[float, float],
        heal_within_s: float = HEAL_WITHIN_S,
    ) -> None:
        low, high = every
        if not planned or low <= 0 or high < low:
            raise ValueError("a schedule needs faults and 0 < every[0] <= every[1]")
        self.planned = list(planned)
        self.every = every
        self.heal_within_s = heal_within_s
        self._draws = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in: set[str] = set()  # kinds injected and not healed yet
        self._left = {id(p): p.at_most for p in self.planned}
        self._runs: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="fault-schedule", daemon=True)
        self._started = 0.0
        self.injected: Counter[str] = Counter()
        self.healed: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.errors: list[str] = []
        self.timeline: list[Moment] = []
        self.drawn: list[tuple[str, float]] = []  # (kind, how long it stays in), in order

    @property
    def kinds(self) -> list[str]:
        return sorted({p.fault.kind for p in self.planned})

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """No new fault; the ones still in are healed now (their wait is cut
        short); returns once each is healed or ``heal_within_s`` passed."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.heal_within_s)
        deadline = time.monotonic() + self.heal_within_s
        for run in list(self._runs):
            run.join(timeout=max(deadline - time.monotonic(), 0.1))
            if run.is_alive():
                self._note(run.name, f"error: not healed within {self.heal_within_s:.0f} s")

    def __enter__(self) -> FaultSchedule:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def active(self) -> list[str]:
        with self._lock:
            return sorted(self._in)

    def _note(self, kind: str, what: str) -> None:
        with self._lock:
            self.timeline.append(Moment(time.monotonic() - self._started, kind, what))
            if what == "injected":
                self.injected[kind] += 1
            elif what == "healed":
                self.healed[kind] += 1
            elif what == "skipped":
                self.skipped[kind] += 1
            elif what.startswith("error"):
                self.errors.append(f"{kind}: {what}")

    def _run(self) -> None:
        while not self._stop.wait(self._draws.uniform(*self.every)):
            candidates = [p for p in self.planned if self._left[id(p)] != 0]
            if not candidates:
                return
            chosen = self._draws.choices(candidates, weights=[p.weight for p in candidates])[0]
            lasts = self._draws.uniform(*chosen.lasts)
            kind = chosen.fault.kind
            self.drawn.append((kind, lasts))
            with self._lock:
                busy = kind in self._in
                if not busy:
                    self._in.add(kind)
                    left = self._left[id(chosen)]
                    if left is not None:
                        self._left[id(chosen)] = left - 1
            if busy:
                self._note(kind, "skipped")
                continue
            run = threading.Thread(
                target=self._inject_then_heal, args=(chosen.fault, lasts), name=kind, daemon=True
            )
            self._runs.append(run)
            run.start()

    def _inject_then_heal(self, fault: Fault, lasts: float) -> None:
        kind = fault.kind
        try:
            try:
                fault.inject()
                self._note(kind, "injected")
            except Exception as error:  # recorded: the caller fails its test
                self._note(kind, f"error: inject raised {error!r}")
            self._stop.wait(lasts)
            try:
                fault.heal()
                self._note(kind, "healed")
            except Exception as error:  # recorded: the caller fails its test
                self._note(kind, f"error: heal raised {error!r}")
        finally:
            with self._lock:
                self._in.discard(kind)

"""The figures of a bank run (``tests/chaos/test_bank.py``), and the soak's
table in ``docs/reliability.md``.

Each run of the bank test, short or long, ends with one ``Figures``: printed
as its report line, and written as JSON to ``$PLASMAART_SOAK_REPORT_DIR/
<database>.json`` when that is set (``make soak`` sets it). Then

    python -m tests.support.soak <report dir> [docs/reliability.md]

rewrites the part of ``docs/reliability.md`` between ``<!-- section: soak -->``
and ``<!-- end section: soak -->`` with a table of every database's figures
(the rest of the file is left as it is, so each soak rewrites its own part).
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RELIABILITY_DOC = REPO / "docs" / "reliability.md"
BEGIN = "<!-- section: soak -->"
END = "<!-- end section: soak -->"
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL + Redis"}


@dataclass
class Figures:
    database: str  # sqlite | postgresql
    mode: str  # short | soak
    target: int | None  # the soak's operations to reach (None: the short run)
    operations: dict[str, int]  # completed, by kind
    refusals: dict[str, int]  # of those, answered with a refusal, by code
    notes: dict[str, int]  # deliberate repeats, operations given up without an answer
    faults: dict[str, int]  # injected, by kind
    jobs: dict[str, int]  # by status at the end
    topups: dict[str, int]  # auto top-up runs by status at the end
    checkpoints: int
    checkpoints_missed: int  # the database was away at that moment
    events_checked: int
    resyncs: int
    attempts: int  # HTTP requests sent by the clients (with their retries)
    unanswered: int  # attempts without an answer (a killed process, a timeout)
    documented_503: int  # 503 `unavailable` answers, retried by the clients
    wire_5xx: int  # any other 5xx on the wire: each is a violation
    violations: int
    non_terminal: int  # jobs and top-up runs not finished at the end
    duration_s: float  # the whole run, set-up and checks included
    chaos_s: float = 0.0  # the clients and faults, until the target (or the short run's 20 s)
    finish_s: float = 0.0  # then until every job and top-up ended
    documented_507: int = 0  # 507 `storage_full` answers (a full disk), refusals
    problems: list[str] = field(default_factory=list)  # the first violations, distinct
    machine: str = field(default_factory=lambda: f"{platform.machine()}, {_cpus()} CPUs")
    finished_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M"))

    @property
    def total(self) -> int:
        return sum(self.operations.values())

    @property
    def rate(self) -> float:
        """Operations completed per second of chaos."""
        return self.total / self.chaos_s if self.chaos_s else 0.0

    def line(self) -> str:
        """The report line a run prints."""
        return (
            f"bank ({self.database}, {self.mode}): {self.total} operations {self.operations}; "
            f"refused {self.refusals}; {self.notes}; jobs {self.jobs}; "
            f"auto top-ups {self.topups}; faults {self.faults}; "
            f"{self.attempts} requests sent, {self.unanswered} without an answer, "
            f"{self.documented_503} documented 503s, {self.documented_507} documented 507s, "
            f"{self.wire_5xx} other 5xx; "
            f"{self.checkpoints} checkpoints ({self.checkpoints_missed} missed), "
            f"{self.events_checked} events checked, {self.resyncs} resyncs; "
            f"{self.non_terminal} not terminal; violations: {self.violations}; "
            f"{self.duration_s:.1f} s ({self.chaos_s:.1f} s of chaos at "
            f"{self.rate:.1f} operations/s, {self.finish_s:.1f} s to finish)"
        )

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.database}.json"
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Figures:
        return cls(**json.loads(path.read_text()))


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {kind}" for kind, n in sorted(values.items(), key=lambda kv: -kv[1]))


def render(runs: list[Figures]) -> str:
    """The generated part of the soak section: a table, a row per database."""
    head = (
        "| database | operations (target) | by kind | faults injected | checks | "
        "5xx outside documented 503s and 507s | violations | not terminal at the end | duration |"
    )
    rule = "|---|---:|---|---|---|---:|---:|---:|---:|"
    rows = []
    for run in runs:
        target = f"{run.target:,}" if run.target else "short run"
        by_kind = _counts(run.operations)
        if run.refusals:
            by_kind += f" (of which refused: {_counts(run.refusals)})"
        faults = _counts(run.faults) or "none"
        faults += (
            f"; {run.unanswered:,} requests without an answer, "
            f"{run.documented_503:,} answered 503 `unavailable`"
        )
        if run.documented_507:
            faults += f", {run.documented_507:,} answered 507 `storage_full`"
        checks = (
            f"{run.checkpoints:,} checkpoints ({run.checkpoints_missed} missed) + the end; "
            f"{run.events_checked:,} events, {run.resyncs} resyncs"
        )
        billing = ", Stripe billing" if run.mode.endswith("Stripe") else ""
        rows.append(
            f"| {DATABASES.get(run.database, run.database)}{billing} | {run.total:,} ({target}) | "
            f"{by_kind} | {faults} | {checks} | {run.wire_5xx} | {run.violations} | "
            f"{run.non_terminal} | {run.duration_s / 60:.1f} min "
            f"({run.rate:.1f} operations/s of chaos) |"
        )
    when = max((run.finished_at for run in runs), default="")
    machine = runs[0].machine if runs else ""
    intro = f"The last soak, {when} UTC, on this machine ({machine}):"
    found = [
        f"- {DATABASES.get(run.database, run.database)}: "
        + "; ".join(f"`{p}`" for p in run.problems)
        for run in runs
        if run.problems
    ]
    if found:
        found.insert(0, "\nThe violations found (the first of each kind):\n")
    return "\n".join([intro, "", head, rule, *rows, *found])


def rewrite(text: str, generated: str) -> str:
    """``text`` with the part between the soak markers replaced (the end
    marker added after the first one if it is missing)."""
    if BEGIN not in text:
        raise ValueError(f"no {BEGIN} marker")
    before, _, rest = text.partition(BEGIN)
    _, found, after = rest.partition(END)
    if not found:
        after = rest
    return f"{before}{BEGIN}\n\n{generated}\n\n{END}{after}"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m tests.support.soak <report dir> [reliability.md]")  # noqa: T201
        return 2
    folder = Path(argv[0])
    doc = Path(argv[1]) if len(argv) > 1 else RELIABILITY_DOC
    order = list(DATABASES)
    runs = sorted(
        (Figures.read(path) for path in folder.glob("*.json")),
        key=lambda run: order.index(run.database) if run.database in order else len(order),
    )
    if not runs:
        print(f"no figures in {folder}: the soak did not run")  # noqa: T201
        return 1
    doc.write_text(rewrite(doc.read_text(), render(runs)))
    for run in runs:
        print(run.line())  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

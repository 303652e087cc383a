"""Rewriting one benchmark's section of docs/performance.md, and its rows of
the summary table at the top, leaving the others' as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PERFORMANCE_DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
DOC_INTRO = """# Performance

Throughput, latency and memory of PlasmaArt measured on one machine, each
figure beside a baseline measured in the same run where there is one, so that
the ratios mean more than the absolute numbers. `make bench` regenerates this
file (in about 15 minutes on 2 CPUs): each benchmark in `benchmarks/` (see
`benchmarks/README.md`) rewrites its own section and its rows of the summary
below, and leaves the others. Each section gives the command, the machine, the
date, every run, the profile and, for each aim not met, what stands in the way.
"""


def write_section(heading: str, section: str, path: Path = PERFORMANCE_DOC) -> None:
    """Replace the section that starts with ``heading`` (a ``## `` line) by
    ``section``, or append it; the rest of the file is kept as it is."""
    existing = path.read_text() if path.exists() else DOC_INTRO
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        updated = existing.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
            len(lines),
        )
        tail = "".join(lines[end:])
        updated = (
            "".join(lines[:start]) + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)


# -- the summary: every aim, one row each, at the top of the file ------------------

SUMMARY_HEADING = "## Aims at a glance"
# The benchmarks in the order `make bench` runs them; their rows keep that order.
SUMMARY_ORDER = (
    "ledger_tps.py",
    "ledger_queries.py",
    "generations.py",
    "api_costs.py",
    "fairness.py",
)
_SUMMARY_HEAD = (
    "| what | PlasmaArt | baseline, same run | ratio or figure | aim | met? | measured by |",
    "|---|---:|---:|---:|---:|---|---|",
)


@dataclass(frozen=True)
class SummaryRow:
    what: str
    plasmaart: str
    baseline: str  # "—" for an absolute aim
    result: str  # the ratio to the baseline, or the figure held to the aim
    aim: str
    met: bool

    def cells(self, source: str, when: str) -> str:
        met = "yes" if self.met else "**no**"
        return (
            f"| {self.what} | {self.plasmaart} | {self.baseline} | {self.result} | {self.aim} "
            f"| {met} | `{source}`, {when} |"
        )


def _summary_section(rows: Sequence[str]) -> str:
    intro = (
        "Each row is the median of several runs of one figure; a ratio is to a\n"
        "baseline measured alternately in the same run. Each benchmark replaces its\n"
        "own rows; its section below has the runs, the machine, the profile and,\n"
        "for every aim not met, what stands in the way.\n"
    )
    return f"{SUMMARY_HEADING}\n\n{intro}\n" + "\n".join([*_SUMMARY_HEAD, *rows]) + "\n"


def write_summary(
    source: str, rows: Sequence[SummaryRow], when: str, path: Path = PERFORMANCE_DOC
) -> None:
    """Replace ``source``'s rows (a script name of ``SUMMARY_ORDER``) in the
    summary table, which sits before every benchmark's section."""
    existing = path.read_text() if path.exists() else DOC_INTRO
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SUMMARY_HEADING), None)
    kept: list[str] = []
    if start is None:
        start = end = next(
            (i for i, line in enumerate(lines) if line.startswith("## ")), len(lines)
        )
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
            len(lines),
        )
        kept = [
            line.rstrip("\n")
            for line in lines[start:end]
            if line.startswith("| ")
            and line.rstrip("\n") not in _SUMMARY_HEAD
            and f"| `{source}`," not in line
        ]
    fresh = [row.cells(source, when) for row in rows]

    def order(line: str) -> int:
        for index, name in enumerate(SUMMARY_ORDER):
            if f"| `{name}`," in line:
                return index
        return len(SUMMARY_ORDER)

    # sorted() is stable: each benchmark's rows keep their own order.
    table = sorted([*kept, *fresh], key=order)
    head = "".join(lines[:start]).rstrip("\n") + "\n\n"
    tail = "".join(lines[end:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + _summary_section(table) + ("\n" + tail if tail else ""))

"""Writing a benchmark's part of docs/performance.md: its own section, and its
rows of the summary table at the top, leaving the others' as they are."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import REPO
from benchmarks.harness.session import Facts, machine_table, progress

PERFORMANCE_DOC = REPO / "docs" / "performance.md"
DOC_INTRO = """# Performance

Throughput, latency and memory of PlasmaArt measured on one machine, each
figure beside a baseline measured in the same run where there is one, so that
the ratios mean more than the absolute numbers. `make bench` regenerates this
file (in about 18 minutes on 2 CPUs): each benchmark in `benchmarks/` (see
`benchmarks/README.md`) rewrites its own section and its rows of the summary
below, and leaves the others. Each section gives the command, the machine, the
date, every run, the profile and, for each aim not met, what stands in the way.
"""


def prose(*sentences: str) -> str:
    """One Markdown paragraph, wrapped so that the file diffs well between runs."""
    return textwrap.fill(
        " ".join(sentence for sentence in sentences if sentence), width=80, break_on_hyphens=False
    )


def paragraphs(*texts: str) -> str:
    """Paragraphs (and tables), a blank line between each."""
    return "\n\n".join(texts)


def markdown_table(head: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the ``head`` row, then ``rows``; ``align`` has one
    character a column, ``>`` for a right-aligned one (figures), else left."""
    rule = "|" + "".join("---:|" if side == ">" else "---|" for side in align)
    body = ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(["| " + " | ".join(head) + " |", rule, *body])


# What a reader of any comparison needs first, and last.
RATIOS = prose(
    "Each ratio is the median of PlasmaArt's runs over the median of the",
    "baseline's, the two measured alternately on the same machine, so that",
    "machine noise (this may be a shared machine) hits both sides alike:",
    "compare ratios between runs and machines, not absolute figures.",
)
DURABILITY = prose(
    "Durability is relaxed alike on both sides of each comparison: SQLite runs",
    "in WAL mode with `synchronous=NORMAL` (no fsync at commit) and the",
    "throwaway PostgreSQL server with `fsync=off` and `synchronous_commit=off`,",
    "so these figures measure CPU and round trips, not disks.",
)


def plural(count: int, word: str) -> str:
    """``1 run``, ``3 runs``."""
    return f"{count} {word}{'s' if count != 1 else ''}"


def now() -> str:
    """When a section was measured, as the sections and the summary say it."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def section(heading: str, script: str, command: str, *parts: str) -> str:
    """A benchmark's section: its heading, when and by which command it was
    measured, then ``parts`` (paragraphs, tables, subsections; empty ones
    left out), a blank line between each."""
    measured = (
        f"Measured {now()} by `benchmarks/{script}`, from the repository root:\n\n"
        f"```sh\n{command}\n```"
    )
    shown = [part.strip("\n") for part in (heading, measured, *parts) if part.strip()]
    return "\n\n".join(shown) + "\n"


def subsection(title: str, body: str) -> str:
    return f"### {title}\n\n{body}"


def runs_block(runs: str, title: str = "All runs:") -> str:
    """Every run's figures, as a block of text."""
    return f"{title}\n\n```text\n{runs}\n```"


def machine_block(facts: Facts) -> str:
    return f"The machine:\n\n{machine_table(facts)}"


def write_section(heading: str, section: str, path: Path = PERFORMANCE_DOC) -> None:
    """Replace the section that starts with ``heading`` (a ``## `` line) by
    ``section``, or append it; the rest of the file is kept as it is."""
    existing = path.read_text() if path.exists() else DOC_INTRO
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        updated = existing.rstrip("\n") + "\n\n" + section
    else:
        end = _next_heading(lines, start)
        tail = "".join(lines[end:])
        updated = (
            "".join(lines[:start]) + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)


def _next_heading(lines: Sequence[str], start: int) -> int:
    """The line of the next ``## `` heading after ``start``, or the end."""
    return next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))


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
        end = _next_heading(lines, start)
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


def publish(
    heading: str,
    section: str,
    source: str | None = None,
    rows: Sequence[SummaryRow] = (),
    path: Path = PERFORMANCE_DOC,
) -> None:
    """Write a benchmark's section and, for a benchmark of ``SUMMARY_ORDER``
    (``source``), its rows of the summary."""
    write_section(heading, section, path)
    if source is not None:
        write_summary(source, rows, now(), path)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    progress(f"wrote {shown}")

"""The capacity benchmark's report (benchmarks/capacity.py): its tables, its
ratios, and that --write-docs rewrites its own section of performance.md and
the deployment guide's Capacity section, on temporary files, leaving the rest."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from benchmarks import capacity
from benchmarks.harness.load import Load

FACTS = [
    ("PlasmaArt", "commit abc1234"),
    ("CPUs", "2"),
    ("CPU model", "Test CPU"),
    ("memory", "1.0 GiB"),
    ("load average (1, 5, 15 min) at start", "1.50, 1.00, 0.50"),
    ("load average (1, 5, 15 min) at end", "2.50, 1.20, 0.60"),
    ("Python", "3.11.2"),
    ("SQLite", "3.40.1"),
    ("PostgreSQL", "15.5"),
]
ARGS = argparse.Namespace(
    runs=3, seconds=2.0, connections=16, jobs=200, concurrency=16, users=16, render_ms=150.0
)


def _load(per_second: float, p50: float = 10.0, p99: float = 40.0) -> Load:
    return Load(requests=round(per_second * 2), seconds=2.0, p50_ms=p50, p99_ms=p99)


def _submissions() -> list[capacity.SubmissionRow]:
    bare = [_load(1000), _load(800), _load(1200)]
    one = capacity.SubmissionRow("SQLite", 1, 16, [_load(400), _load(500), _load(300)], bare)
    two = capacity.SubmissionRow("SQLite", 2, 16, [_load(600), _load(700, 20, 90)], bare)
    pg = capacity.SubmissionRow("PostgreSQL", 1, 16, [_load(250)], [_load(500)])
    return [one, two, pg]


def _workers() -> list[capacity.WorkerRow]:
    rows = [
        capacity.WorkerRow("SQLite", 4, 200),
        capacity.WorkerRow("SQLite", 16, 200),
        capacity.WorkerRow("PostgreSQL", 4, 200),
    ]
    for row, mine, theirs in zip(
        rows, (50.0, 60.0, 80.0), (10_000.0, 10_000.0, 100.0), strict=True
    ):
        row.rates.plasmaart.extend([mine, mine + 10, mine - 10])
        row.rates.baseline.extend([theirs, theirs, theirs])
    return rows


def test_submission_rows_are_medians_and_ratios_to_the_one_bare_process() -> None:
    one, two, _ = _submissions()
    assert one.rps(one.plasmaart) == 400
    assert one.ratio == pytest.approx(0.4)
    # Two runs: the median is their mean; the bare side is shared.
    assert two.rps(two.plasmaart) == 650
    assert two.p99(two.plasmaart) == 65
    assert two.ratio == pytest.approx(0.65)
    table = capacity.submissions_table(_submissions())
    assert "| SQLite | 2 | 16 | 650 | 15.0 ms | 65.0 ms | 1,000 | 10.0 ms | 40.0 ms | 65.0% |" in (
        table
    )


def test_the_capacity_table_has_a_column_per_database_and_a_dash_where_unmeasured() -> None:
    table = capacity.capacity_table(_submissions(), _workers())
    lines = table.splitlines()
    assert lines[0] == "| one … | carries | SQLite | PostgreSQL |"
    assert lines[1] == "|---|---|---:|---:|"
    assert "| 400 /s (p50 10 ms, p99 40 ms) | 250 /s (p50 10 ms, p99 40 ms) |" in lines[2]
    assert lines[3].endswith("| 650 /s (p50 15 ms, p99 65 ms) | — |")
    assert lines[4].startswith("| worker process (4 slots, the default) |")
    assert lines[4].endswith("| 50 jobs/s | 80 jobs/s |")
    assert lines[5].endswith("| 60 jobs/s | — |")


def test_ratios_name_each_baseline() -> None:
    text = capacity.ratios_text(_submissions(), _workers())
    assert text.startswith(
        "Submissions: 40% with 1 API process on SQLite, 65% with 2 API processes on SQLite,"
        " 50% with 1 API process on PostgreSQL of the bare app's requests per second."
    )
    assert "0.5% of raw sqlite3's at 4 slots on SQLite" in text
    assert "80.0% of PgQueuer's at 4 slots on PostgreSQL." in text


def test_write_docs_rewrites_both_sections_and_keeps_the_others(tmp_path: Path) -> None:
    performance = tmp_path / "performance.md"
    performance.write_text("# Performance\n\n## Other benchmark\n\nKept.\n")
    deployment = tmp_path / "deployment.md"
    deployment.write_text(
        "# Deployment\n\n## Monitoring\n\nMetrics.\n\n## Capacity\n\nOld table.\n\n"
        "## After\n\nAlso kept.\n"
    )
    capacity.publish(_submissions(), _workers(), FACTS, ARGS, performance, deployment)
    written = performance.read_text()
    assert "## Other benchmark\n\nKept.\n" in written
    assert written.count(capacity.SECTION_HEADING) == 1
    assert "| SQLite | 4 | 200 | 50.0 | 10,000 (raw sqlite3) | 0.5% |" in written
    assert "| CPUs | 2 |" in written
    guide = deployment.read_text()
    assert "Old table" not in guide
    assert guide.startswith("# Deployment\n\n## Monitoring\n\nMetrics.\n\n## Capacity\n\n")
    assert guide.endswith("\n\n## After\n\nAlso kept.\n")
    assert "| 400 /s (p50 10 ms, p99 40 ms) |" in guide
    # The machine's load is said, and the sandbox's bound follows from its rendering.
    words = " ".join(guide.split())
    assert "was 1.50, 1.00, 0.50 at the start" in words
    assert "at most about 13 jobs a second on 2 CPUs" in words
    assert "Two processes carried 1.62 times one's on SQLite:" in words
    # A second run replaces the section rather than adding one.
    capacity.publish(_submissions(), _workers(), FACTS, ARGS, performance, deployment)
    assert deployment.read_text().count("## Capacity\n") == 1

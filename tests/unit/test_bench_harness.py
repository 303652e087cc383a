"""The benchmarks' shared harness: how it rewrites its part of
docs/performance.md (on a temporary file), and the figures it reports."""

from __future__ import annotations

import argparse
import importlib
import tomllib
from pathlib import Path

import pytest
from benchmarks.harness import cli, docs, fixtures, stats

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
OTHER_SECTION = "## Other benchmark\n\nIts own text, kept as it is.\n"


def _row(what: str, met: bool = True) -> docs.SummaryRow:
    return docs.SummaryRow(what, "10 req/s", "20 req/s", "50.0%", "≥ 50%", met)


def test_a_new_section_is_appended_after_the_intro(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    docs.write_section("## Mine", "## Mine\n\nFirst run.\n", doc)
    text = doc.read_text()
    assert text.startswith(docs.DOC_INTRO.rstrip("\n"))
    assert text.endswith("\n\n## Mine\n\nFirst run.\n")


def test_a_section_is_replaced_and_the_others_kept(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\n## Mine\n\nOld run.\n\n{OTHER_SECTION}")
    docs.write_section("## Mine", "## Mine\n\nNew run.\n\n\n", doc)
    assert doc.read_text() == f"# Performance\n\n## Mine\n\nNew run.\n\n{OTHER_SECTION}"


def test_summary_rows_replace_only_their_own_and_keep_the_run_order(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\n{OTHER_SECTION}")
    docs.write_summary("fairness.py", [_row("fair")], "2026-01-01 00:00 UTC", doc)
    docs.write_summary("ledger_tps.py", [_row("old ledger")], "2026-01-01 00:00 UTC", doc)
    docs.write_summary("ledger_tps.py", [_row("ledger", met=False)], "2026-01-02 00:00 UTC", doc)
    text = doc.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    # ledger_tps.py runs before fairness.py in `make bench`: its rows come first.
    assert rows == [
        "| ledger | 10 req/s | 20 req/s | 50.0% | ≥ 50% | **no** "
        "| `ledger_tps.py`, 2026-01-02 00:00 UTC |",
        "| fair | 10 req/s | 20 req/s | 50.0% | ≥ 50% | yes "
        "| `fairness.py`, 2026-01-01 00:00 UTC |",
    ]
    # The summary sits before every benchmark's section, which is kept.
    assert text.index(docs.SUMMARY_HEADING) < text.index("## Other benchmark")
    assert text.endswith(OTHER_SECTION)


def test_a_section_opens_with_when_and_how_and_leaves_out_empty_parts() -> None:
    text = docs.section("## Mine", "mine.py", "python benchmarks/mine.py --runs 1", "A.", "", "B.")
    heading, measured, command, first, second = text.split("\n\n")
    assert heading == "## Mine"
    assert measured.startswith("Measured ")
    assert measured.endswith("by `benchmarks/mine.py`, from the repository root:")
    assert command == "```sh\npython benchmarks/mine.py --runs 1\n```"
    assert (first, second) == ("A.", "B.\n")


def test_markdown_table_aligns_figures_right() -> None:
    table = docs.markdown_table(["what", "figure"], "<>", [["a", 1], ["b", "2 ms"]])
    assert table == "| what | figure |\n|---|---:|\n| a | 1 |\n| b | 2 ms |"


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.99, 0.0),
        ([5.0], 0.5, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([4.0, 3.0, 2.0, 1.0], 0.75, 3.0),
        ([float(n) for n in range(1, 21)], 0.95, 19.0),
        ([float(n) for n in range(1, 23)], 0.5, 11.0),
        ([float(n) for n in range(1, 101)], 0.99, 99.0),
        ([1.0, 2.0, 3.0], 1.0, 3.0),
    ],
)
def test_nearest_rank_percentile(values: list[float], fraction: float, expected: float) -> None:
    assert stats.percentile(values, fraction) == expected


def test_sides_ratio_is_of_the_medians() -> None:
    sides = stats.Sides(plasmaart=[10.0, 30.0, 20.0], baseline=[40.0, 100.0, 40.0])
    assert (sides.plasmaart_median, sides.baseline_median) == (20.0, 40.0)
    assert sides.ratio == 0.5


def test_counts_and_positive_options_refuse_what_is_not_one() -> None:
    assert cli.counts("1, 8,64") == [1, 8, 64]
    for bad in ("", "0,8", "a"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.counts(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        cli.positive(float)("0")
    parser = cli.parser("A benchmark.\n\nMore.", "## Mine")
    cli.add_timing(parser, 2.0, 3, "run")
    args = parser.parse_args(["--seconds", "0.5"])
    assert (args.seconds, args.runs, args.write_docs) == (0.5, 3, False)


def test_raised_catalog_raises_only_the_bounds_of_the_plans_named(tmp_path: Path) -> None:
    path = fixtures.raised_catalog(tmp_path, ["studio"], {"max_queued_jobs": 123_456})
    plans = {plan["id"]: plan for plan in tomllib.loads(path.read_text())["plans"]}
    assert plans["studio"]["max_queued_jobs"] == 123_456
    assert plans["pro"]["max_queued_jobs"] != 123_456
    with pytest.raises(RuntimeError, match="no no_such_bound line"):
        fixtures.raised_catalog(tmp_path, ["free"], {"no_such_bound": 1})


@pytest.mark.parametrize(
    "name",
    [
        *(f"benchmarks.harness.{path.stem}" for path in sorted(BENCHMARKS.glob("harness/*.py"))),
        *(f"benchmarks.{path.stem}" for path in sorted(BENCHMARKS.glob("*.py"))),
    ],
)
def test_every_benchmark_module_imports(name: str) -> None:
    # Each script's --help imports it the same way; a module that fails to
    # import fails `make bench` only after the benchmarks before it ran.
    assert importlib.import_module(name).__name__ == name

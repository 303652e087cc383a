"""Argument types and the options every benchmark has."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the value, which must be above zero."""

    def parse(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {value}")
        return number

    return parse


def counts(value: str) -> list[int]:
    """An argparse type: a comma-separated list of positive integers."""
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("counts are positive integers")
    return numbers


def parser(doc: str | None, heading: str) -> argparse.ArgumentParser:
    """A benchmark's parser: the first paragraph of its docstring, and
    ``--write-docs``, which rewrites the section that ``heading`` opens."""
    made = argparse.ArgumentParser(
        description=doc.split("\n\n")[0] if doc else None,
        epilog="Run from the repository root (.venv/bin/python benchmarks/NAME.py); "
        "benchmarks/README.md says what each benchmark measures and how long it takes.",
    )
    made.add_argument(
        "--write-docs",
        action="store_true",
        help=f"rewrite the '{heading.removeprefix('## ')}' section of docs/performance.md",
    )
    return made


def option(
    to: argparse.ArgumentParser, name: str, kind: Callable[[str], float], default: float, what: str
) -> None:
    """``name``: a positive ``kind`` (``int`` or ``float``), ``default`` unless given."""
    to.add_argument(
        name, type=positive(kind), default=default, help=f"{what} (default {default:g})"
    )


def counts_option(to: argparse.ArgumentParser, name: str, default: list[int], what: str) -> None:
    """``name``: comma-separated counts, each measured in turn."""
    shown = ",".join(str(count) for count in default)
    to.add_argument(name, type=counts, default=default, help=f"{what} (default {shown})")


def add_timing(to: argparse.ArgumentParser, seconds: float, runs: int, what: str) -> None:
    """``--seconds`` (of one ``what``) and ``--runs`` (how many), with their defaults."""
    option(to, "--seconds", float, seconds, f"seconds of one {what}")
    option(to, "--runs", int, runs, f"how many {what}s; figures are their medians")


def add_workers(to: argparse.ArgumentParser, workers: int, slots: int, slots_help: str) -> None:
    """``--workers`` (processes) and ``--concurrency`` (``slots_help``)."""
    option(to, "--workers", int, workers, "worker processes")
    option(to, "--concurrency", int, slots, slots_help)


def add_measurement_choice(
    to: argparse.ArgumentParser, choices: tuple[str, ...], note: str = ""
) -> None:
    """``--only`` one of ``choices`` and ``--sqlite-only``: shorter runs while
    iterating, which ``--write-docs`` refuses (its section needs them all)."""
    to.add_argument(
        "--only", choices=choices, help=f"one measurement only (not with --write-docs){note}"
    )
    to.add_argument("--sqlite-only", action="store_true", help="SQLite only")


def check_complete(to: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--write-docs`` needs every measurement."""
    if args.write_docs and (args.only or args.sqlite_only):
        to.error("--write-docs needs every measurement: drop --only and --sqlite-only")


def add_load_generator(to: argparse.ArgumentParser) -> None:
    to.add_argument(
        "--load-generator",
        choices=("wrk", "httpx"),
        default="wrk",
        help="wrk (the default), or benchmarks/http_load.py, which on a small machine "
        "cannot keep up with the bare endpoint",
    )

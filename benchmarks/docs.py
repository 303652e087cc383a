"""Rewriting one benchmark's section of docs/performance.md, leaving the others."""

from __future__ import annotations

from pathlib import Path

PERFORMANCE_DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
DOC_INTRO = """# Performance

Throughput of PlasmaArt measured on one machine, each figure beside a baseline
measured in the same run, so that the ratios mean more than the absolute
numbers. `make bench` regenerates this file: each benchmark in `benchmarks/`
(see `benchmarks/README.md`) rewrites its own section and leaves the others.
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

"""One benchmark's run: progress lines, the command that ran it, the machine's
facts for its report, and a temporary folder removed at the end."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import psycopg
import sqlalchemy

from benchmarks.harness import REPO

_STARTED = time.monotonic()
# The rows of a report's machine table: (what, value).
Facts = Sequence[tuple[str, str]]


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def command_line() -> str:
    """The command that ran this benchmark, as one would type it from the
    repository root."""
    python = Path(sys.executable)
    script = Path(sys.argv[0]).resolve()
    shown = [
        str(python.relative_to(REPO)) if python.is_relative_to(REPO) else python.name,
        str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script),
        *sys.argv[1:],
    ]
    return shlex.join(shown)


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def code_version() -> str:
    """The commit measured, and whether the work tree had edits."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    head = subprocess.run(
        [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        [git, "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode:
        return "unknown"
    commit = f"commit {head.stdout.strip()}"
    # Figures from a work tree with edits belong to no commit: say so.
    return f"{commit} with uncommitted changes" if dirty.stdout.strip() else commit


def machine_facts(
    code: str,
    load_start: str,
    pg_version: str,
    *,
    packages: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The rows of a report's machine table: the code, the CPUs, the load
    before and now, and the versions of what was measured."""
    model = "unknown"
    memory = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        found = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.MULTILINE)
        memory = f"{int(found.group(1)) / 1024**2:.1f} GiB" if found else memory
    versions = []
    for package in packages:
        with suppress(Exception):
            versions.append((package, version(package)))
    return [
        ("PlasmaArt", code),
        ("CPUs", str(os.cpu_count())),
        ("CPU model", model),
        ("memory", memory),
        # Other work on a shared machine skews figures; these say whether there was any.
        ("load average (1, 5, 15 min) at start", load_start),
        ("load average (1, 5, 15 min) at end", load_average()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("PostgreSQL", pg_version),
        ("SQLAlchemy", sqlalchemy.__version__),
        ("psycopg", psycopg.__version__),
        *versions,
        *extra,
    ]


def machine_table(facts: Facts) -> str:
    rows = "\n".join(f"| {name} | {value} |" for name, value in facts)
    return f"| | |\n|---|---|\n{rows}"


@dataclass(frozen=True)
class Session:
    """What a run knows before it measures, and its temporary folder."""

    workdir: Path
    code: str
    load_start: str

    def facts(
        self,
        pg_version: str = "not used",
        *,
        packages: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
    ) -> list[tuple[str, str]]:
        """The machine table's rows, the load at the end read now."""
        return machine_facts(self.code, self.load_start, pg_version, packages=packages, extra=extra)


@contextmanager
def measuring(name: str) -> Iterator[Session]:
    """The code's version and the load read before measuring (the work tree
    may move on while the benchmark runs), a temporary folder removed at the
    end, also on errors, and how long the run took."""
    began = time.monotonic()
    code, load_start = code_version(), load_average()
    workdir = Path(tempfile.mkdtemp(prefix=f"plasmaart-bench-{name}-"))
    try:
        yield Session(workdir, code, load_start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    progress(f"done in {time.monotonic() - began:.0f} s")

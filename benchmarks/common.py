"""What every benchmark shares: the machine's facts, the command line, the
throwaway PostgreSQL server and its databases, cProfile's keys and shares,
argument types and the report's prose.

Each benchmark is a script run from the repository root; it imports this
module as ``benchmarks.common`` after putting the repository on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy

REPO = Path(__file__).resolve().parent.parent
# The throwaway PostgreSQL server lives with the tests; they are not a package
# that the virtualenv installs.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.pgserver import PgServer, start_server  # noqa: E402

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


# -- the command and the machine ------------------------------------------------


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


def machine_table(facts: Sequence[tuple[str, str]]) -> str:
    rows = "\n".join(f"| {name} | {value} |" for name, value in facts)
    return f"| | |\n|---|---|\n{rows}"


# -- the throwaway PostgreSQL server ------------------------------------------------


def pg_url(server: PgServer, database: str) -> str:
    """SQLAlchemy's URL of ``database`` on ``server``."""
    return server.url.rsplit("/", 1)[0] + f"/{database}"


def pg_dsn(server: PgServer, database: str) -> str:
    """libpq's URL of ``database`` on ``server``."""
    return pg_url(server, database).replace("postgresql+psycopg://", "postgresql://", 1)


def _admin(server: PgServer, *statements: str) -> None:
    with psycopg.connect(pg_dsn(server, "postgres"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def create_pg_database(server: PgServer, name: str, template: str | None = None) -> str:
    """A new, empty database ``name`` (or a copy of ``template``); its URL."""
    from_template = f' TEMPLATE "{template}"' if template else ""
    _admin(
        server,
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f'CREATE DATABASE "{name}"{from_template}',
    )
    return pg_url(server, name)


def drop_pg_database(server: PgServer, name: str) -> None:
    _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_version(server: PgServer) -> str:
    with psycopg.connect(pg_dsn(server, "postgres")) as conn:
        row = conn.execute(b"SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


@contextmanager
def postgres_server(workdir: Path) -> Iterator[PgServer]:
    server = start_server(workdir / "pg")
    try:
        yield server
    finally:
        server.stop()


# -- cProfile -----------------------------------------------------------------------

# cProfile's key for a function and the values it keeps for it.
FuncKey = tuple[str, int, str]
FuncStats = tuple[int, int, float, float, dict[FuncKey, tuple[int, int, float, float]]]


def short_name(key: FuncKey) -> str:
    """``path:line(function)`` with the path from its package down."""
    path, line, name = key
    if path == "~":
        return name
    for marker in ("/site-packages/", "/src/", "/benchmarks/", "/lib/python3."):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            if marker == "/lib/python3.":
                path = path.split("/", 1)[1]
            break
    else:
        path = Path(path).name
    return f"{path}:{line}({name})"


def self_time_by_bucket(
    raw: Mapping[FuncKey, FuncStats], bucket: Callable[[FuncKey], str], other: str
) -> dict[str, float]:
    """Self time per bucket. A function ``bucket`` gives no name (a builtin
    such as ``isinstance`` or ``dict.get``) is the cost of whoever calls it,
    shared among its callers in proportion to their calls."""
    buckets: dict[str, float] = defaultdict(float)
    for key, (_, _, self_time, _, callers) in raw.items():
        name = bucket(key)
        if name:
            buckets[name] += self_time
            continue
        calls = sum(stats[0] for stats in callers.values()) or 1
        for caller, stats in callers.items():
            buckets[bucket(caller) or other] += self_time * stats[0] / calls
    return dict(buckets)


# -- arguments and prose ------------------------------------------------------------


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


def prose(*sentences: str) -> str:
    """One Markdown paragraph, wrapped so that the file diffs well between runs."""
    return textwrap.fill(
        " ".join(sentence for sentence in sentences if sentence), width=80, break_on_hyphens=False
    )

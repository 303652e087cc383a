"""cProfile: of every thread of a server or worker process (on thread CPU
time, written at its end with the SQL it sent), where its CPU time went, and
the tables of a report."""

from __future__ import annotations

import cProfile
import json
import pstats
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, cast

from sqlalchemy import Engine, event

from benchmarks.harness.docs import markdown_table

# cProfile's key for a function and the values it keeps for it.
FuncKey = tuple[str, int, str]
FuncStats = tuple[int, int, float, float, dict[FuncKey, tuple[int, int, float, float]]]

PROFILE_TOP = 15


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


def calls(raw: Mapping[FuncKey, FuncStats], path_end: str, name: str) -> int:
    """Calls of the functions ``name`` in files ending with ``path_end``."""
    return sum(
        stats[1] for key, stats in raw.items() if key[0].endswith(path_end) and key[2] == name
    )


def calls_from(
    raw: Mapping[FuncKey, FuncStats], name: str, caller_path_end: str, caller: str
) -> int:
    """Calls of the functions named ``name`` made by ``caller``."""
    total = 0
    for key, (_, _, _, _, callers) in raw.items():
        if key[2] != name:
            continue
        for (path, _, function), (count, _, _, _) in callers.items():
            if path.endswith(caller_path_end) and function == caller:
                total += count
    return total


def top_lines(
    rows: list[tuple[FuncKey, FuncStats]], extra: Callable[[float], str] | None = None
) -> list[str]:
    """One line a function: calls, self and cumulative seconds (and ``extra``
    of the cumulative seconds), then the function."""
    lines = []
    for key, (_, count, self_time, cumulative, _) in rows:
        more = f" {extra(cumulative)}" if extra else ""
        lines.append(f"{count:>9} {self_time:>8.3f} {cumulative:>8.3f}{more}  {short_name(key)}")
    return lines


# -- profiling every thread of a process ----------------------------------------------


class _Snapshot:
    """What ``pstats.Stats`` loads: a profile's completed calls so far."""

    def __init__(self, profile: cProfile.Profile) -> None:
        profile.snapshot_stats()
        self.stats = profile.stats

    def create_stats(self) -> None:
        """Taken already."""


class AllThreadsProfile:
    """cProfile on thread CPU time in this thread and every thread started
    after ``start()``; ``stats()`` merges them.

    cProfile follows one thread; ``threading.setprofile`` installs a hook in
    each new thread, and the hook's first call replaces itself with that
    thread's own profiler. Thread CPU time, not wall time: a thread waiting
    for work or for a lock costs nothing, as on the machine.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._own = cProfile.Profile(time.thread_time)
        self._threads: list[cProfile.Profile] = []

    def _hook(self, _frame: FrameType, _event: str, _arg: object) -> None:
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self._threads.append(profile)
        profile.enable()

    def start(self) -> None:
        threading.setprofile(self._hook)
        self._own.enable()

    def stats(self) -> tuple[pstats.Stats, float]:
        """Every thread's completed calls, and the CPU time of the thread that
        started the profile (a server's event loop). The other threads'
        profilers are read, not stopped: stopping one from here would close
        its pending calls on this thread's clock."""
        self._own.disable()
        threading.setprofile(None)
        own = _Snapshot(self._own)
        own_seconds = sum(entry[2] for entry in own.stats.values())
        merged = pstats.Stats(own)  # type: ignore[arg-type]
        with self._lock:
            profiles = list(self._threads)
        for profile in profiles:
            merged.add(_Snapshot(profile))  # type: ignore[arg-type]
        return merged, own_seconds


class Counted(Protocol):
    statements: int
    transactions: int


class SqlCounter:
    """Statements and transactions an engine sent, from any thread."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self.statements = 0
        self.transactions = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)

    def _statement(self, *_: Any) -> None:
        with self._lock:
            self.statements += 1

    def _begin(self, *_: Any) -> None:
        with self._lock:
            self.transactions += 1


def write_profile(path: Path, profile: AllThreadsProfile, counter: Counted, seconds: float) -> None:
    """The merged stats at ``path``, the counts beside it (``path``.json)."""
    stats, main_thread_seconds = profile.stats()
    stats.dump_stats(path)
    counts = {
        "statements": counter.statements,
        "transactions": counter.transactions,
        "seconds": seconds,
        "main_thread_seconds": main_thread_seconds,
    }
    path.with_suffix(".json").write_text(json.dumps(counts))


@contextmanager
def profiling(out: Path | None, counter: Counted | None) -> Iterator[None]:
    """With ``out``: every thread profiled while the body runs (``AllThreadsProfile``),
    the profile written to ``out`` at the end with ``counter``'s counts of
    the SQL sent; without, nothing."""
    if out is None or counter is None:
        yield
        return
    profile = AllThreadsProfile()
    started = time.monotonic()
    profile.start()
    try:
        yield
    finally:
        write_profile(out, profile, counter, time.monotonic() - started)


# -- where a server's or a worker's CPU time went -----------------------------------------

BUCKETS = (
    "HTTP server: uvicorn, h11, asyncio",
    "FastAPI, Starlette, anyio",
    "pydantic",
    "SQLAlchemy: building statements",
    "SQLAlchemy: compiling and cache keys",
    "SQLAlchemy: executing, results, pool, events",
    "database driver (sqlite3 and SQLite, psycopg)",
    "logging (JSON access log)",
    "PlasmaArt: ledger",
    "PlasmaArt: generations, worker",
    "PlasmaArt: other",
    "stdlib and other",
)
_PATH_BUCKETS = (
    (("/uvicorn/", "/h11/", "/asyncio/", "/selectors.py"), BUCKETS[0]),
    (("/fastapi/", "/starlette/", "/anyio/"), BUCKETS[1]),
    (("/pydantic/", "/pydantic_core/"), BUCKETS[2]),
    (("/psycopg/", "/psycopg_binary/", "/psycopg_pool/"), BUCKETS[6]),
    (("/logging/", "/plasmaart/logs.py", "/plasmaart/web/edge.py"), BUCKETS[7]),
    (("/plasmaart/ledger/",), BUCKETS[8]),
    (("/plasmaart/generation/", "/plasmaart/worker.py"), BUCKETS[9]),
    (("/plasmaart/",), BUCKETS[10]),
)


def _bucket(key: FuncKey) -> str:
    path, _, name = key
    if path == "~":
        if "sqlite3" in name or "psycopg" in name:
            return BUCKETS[6]
        if "pydantic_core" in name:
            return BUCKETS[2]
        if "epoll" in name:
            return BUCKETS[0]
        return ""
    if "/sqlalchemy/" in path:
        inner = path.rsplit("/sqlalchemy/", 1)[1]
        if inner in ("sql/compiler.py", "sql/crud.py", "sql/cache_key.py", "sql/traversals.py"):
            return BUCKETS[4]
        if inner.startswith("sql/"):
            return BUCKETS[3]
        return BUCKETS[5]
    for markers, bucket in _PATH_BUCKETS:
        if any(marker in path for marker in markers):
            return bucket
    return BUCKETS[11]


@dataclass
class Profile:
    """CPU time of one profiled process, all its threads, by where it went."""

    what: str  # "requests" or "jobs"
    seconds: float  # wall time the profile covered
    statements: int
    transactions: int
    raw: dict[FuncKey, FuncStats]
    buckets: dict[str, float]
    main_thread: float = 0.0  # CPU time of the main thread (a server's event loop)
    units: int = 0  # requests or jobs served while profiled
    wall_rate: float = 0.0  # their rate under the profiler
    attempts: int = 1  # profiled runs it took to get one that did not stall
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.buckets.values())

    def share(self, bucket: str) -> float:
        return self.buckets.get(bucket, 0.0) / self.total if self.total else 0.0

    def per_unit_ms(self) -> float:
        return 1e3 * self.total / max(self.units, 1)

    def per_unit(self, count: int) -> float:
        """``count`` (statements, transactions) per request or job."""
        return count / max(self.units, 1)

    def top(self, by: int, count: int = PROFILE_TOP) -> list[tuple[FuncKey, FuncStats]]:
        return sorted(self.raw.items(), key=lambda item: cast(float, item[1][by]), reverse=True)[
            :count
        ]

    def table(self, title: str) -> str:
        lines = [f"{title}: {self.units} {self.what}, {self.per_unit_ms():.2f} ms CPU each"]
        for by, heading in ((3, "cumulative"), (2, "self")):
            lines.append(f"  by {heading} CPU time")
            lines.append(f"  {'calls':>9} {'self s':>8} {'cum s':>8}  function")
            lines.extend(f"  {line}" for line in top_lines(self.top(by)))
        return "\n".join(lines)


def load_profile(path: Path, what: str) -> Profile:
    """The profile ``write_profile`` wrote at ``path``."""
    counts = json.loads(path.with_suffix(".json").read_text())
    raw = cast(dict[FuncKey, FuncStats], pstats.Stats(str(path)).stats)  # type: ignore[attr-defined]
    buckets = self_time_by_bucket(raw, _bucket, BUCKETS[11])
    return Profile(
        what=what,
        seconds=float(counts["seconds"]),
        statements=int(counts["statements"]),
        transactions=int(counts["transactions"]),
        main_thread=float(counts["main_thread_seconds"]),
        raw=raw,
        buckets=buckets,
    )


def shares_table(profiles: Mapping[str, Profile]) -> str:
    """Each bucket's share of each profile's CPU time, and the CPU per unit."""
    shown = list(profiles.values())
    rows: list[list[str]] = [
        [bucket, *(f"{profile.share(bucket):.0%}" for profile in shown)]
        for bucket in BUCKETS
        if any(profile.share(bucket) >= 0.005 for profile in shown)
    ]
    rows.append(
        ["**CPU per request or job**", *(f"{profile.per_unit_ms():.2f} ms" for profile in shown)]
    )
    return markdown_table(["where", *profiles], "<" + ">" * len(shown), rows)


def _is_middleware(key: FuncKey) -> bool:
    # The edge (an ASGI callable) and its wrappers: their time is the whole
    # event loop's work below them.
    return "/plasmaart/web/" in key[0] and key[2] in ("__call__", "wrapped")


def own_functions(profile: Profile, count: int = 8) -> list[tuple[FuncKey, float, float]]:
    """PlasmaArt's functions by cumulative CPU time: (function, share of all
    CPU time, calls per request or job). A function that spends nearly all its
    time in one PlasmaArt callee (a wrapper: the endpoint around the service,
    the worker's loops) is left out for that callee."""
    own = {
        key: stats
        for key, stats in profile.raw.items()
        if "/plasmaart/" in key[0] and not _is_middleware(key)
    }

    def wrapper(key: FuncKey) -> bool:
        cumulative = own[key][3]
        return any(
            other != key and key in stats[4] and stats[3] >= 0.85 * cumulative
            for other, stats in own.items()
        )

    rows = [
        (key, stats[3] / profile.total, stats[1] / max(profile.units, 1))
        for key, stats in own.items()
        if profile.total and not wrapper(key)
    ]
    rows.sort(key=lambda row: row[1], reverse=True)
    return rows[:count]


def own_functions_table(profile: Profile) -> str:
    head = ["function", "share of CPU (cumulative)", f"calls per {profile.what[:-1]}"]
    rows = [
        [f"`{short_name(key)}`", f"{share:.0%}", f"{per_unit:.1f}"]
        for key, share, per_unit in own_functions(profile)
    ]
    return markdown_table(head, "<>>", rows)


def own_functions_text(profile: Profile, count: int = 5) -> str:
    """PlasmaArt's heaviest functions in a sentence: cumulative share, calls per unit."""
    return ", ".join(
        f"`{short_name(key).removeprefix('plasmaart/')}` {share:.0%} ({per_unit:.1f} calls)"
        for key, share, per_unit in own_functions(profile, count)
    )

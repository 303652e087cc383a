"""PlasmaArt's server beside the bare app (``generation_servers.py``), run
after run: each side in its own process on a fresh copy of a prepared
database, warmed up, then loaded at each connection count in turn; and both
servers profiled (cProfile in every thread) or sampled (py-spy) under load."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import sqlalchemy

from benchmarks.harness.docs import SummaryRow, markdown_table
from benchmarks.harness.fixtures import Context, PreparedDatabase
from benchmarks.harness.load import Load, LoadGenerator
from benchmarks.harness.profiles import Profile, calls, load_profile
from benchmarks.harness.pyspy import PySpyProfile, parse_py_spy_raw, py_spy_recording
from benchmarks.harness.servers import serve
from benchmarks.harness.session import progress
from benchmarks.harness.stats import median

SIDES = ("plasmaart", "bare")
WARMUP_SECONDS = 1
# The profiled servers' connections: CPU per request does not need 64, and
# under the profiler PlasmaArt on SQLite stalls at 64 (its writers starve in
# SQLite's busy handler).
PROFILE_CONNECTIONS = 8
# A profiled server that stalls (answers nothing in the run) says nothing about
# the cost of a request: try again, so many times at most.
PROFILE_ATTEMPTS = 3


@dataclass(frozen=True)
class Endpoint:
    """What a run loads on one of the servers."""

    path: str
    # The table each answered request adds a row to (checked after the run), if any.
    table: str | None


SUBMIT = {
    "plasmaart": Endpoint("/v1/generations", "generations"),
    "bare": Endpoint("/generations", "generations"),
}
# Where each server's submission function is: its calls are the requests served.
SUBMIT_FUNCTIONS = {
    "plasmaart": ("plasmaart/web/api/generations.py", "create_generation"),
    "bare": ("benchmarks/generation_servers.py", "submit"),
}


def _rows(url: str, table: str) -> int:
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _check_stored(app: str, answered: int, url: str, table: str | None) -> None:
    """Every answered request was a 2xx with its row committed."""
    if table is not None and _rows(url, table) < answered:
        raise RuntimeError(f"{app}: {answered} requests answered, fewer rows stored")


def measure_once(
    context: Context,
    database: PreparedDatabase,
    load: LoadGenerator,
    app: str,
    name: str,
    seconds: float,
    profile_out: Path | None = None,
    endpoints: Mapping[str, Endpoint] = SUBMIT,
    py_spy_out: Path | None = None,
) -> Load:
    """One run of ``app`` on a fresh copy; with ``py_spy_out``, py-spy samples
    the server during the measured load (after the warm-up)."""
    path, table = endpoints[app].path, endpoints[app].table
    with database.copy(name) as url:
        with serve(context, app, url, profile_out) as server:
            load.run(server.base + path, WARMUP_SECONDS)
            if py_spy_out is None:
                measured = load.run(server.base + path, seconds)
            else:
                with py_spy_recording(server.process.pid, py_spy_out, seconds):
                    measured = load.run(server.base + path, seconds)
            if measured.requests == 0:
                measured = replace(measured, stuck_in=server.stuck_in())
        _check_stored(app, measured.requests, url, table)
    return measured


class LoadMedians:
    """The medians of a row's runs, PlasmaArt's beside the bare app's."""

    plasmaart: list[Load]
    bare: list[Load]

    def rps(self, side: Sequence[Load]) -> float:
        return median(side, lambda load: load.per_second)

    def p50(self, side: Sequence[Load]) -> float:
        return median(side, lambda load: load.p50_ms)

    def p99(self, side: Sequence[Load]) -> float:
        return median(side, lambda load: load.p99_ms)

    @property
    def ratio(self) -> float:
        return self.rps(self.plasmaart) / self.rps(self.bare)


@dataclass
class HttpComparison(LoadMedians):
    """The runs of both sides at one connection count, on one database."""

    backend: str  # "SQLite" or "PostgreSQL"
    connections: int
    plasmaart: list[Load] = field(default_factory=list)
    bare: list[Load] = field(default_factory=list)
    aim: float | None = None
    # PlasmaArt's median p99 must be under this too, when set.
    p99_aim_ms: float | None = None

    @property
    def met(self) -> bool:
        fast_enough = self.p99_aim_ms is None or self.p99(self.plasmaart) < self.p99_aim_ms
        return (self.aim is None or self.ratio >= self.aim) and fast_enough

    @property
    def aim_text(self) -> str:
        ratio = "" if self.aim is None else f"≥ {self.aim:.0%}"
        p99 = "" if self.p99_aim_ms is None else f"p99 < {self.p99_aim_ms:.0f} ms"
        return ", ".join(part for part in (ratio, p99) if part)


def measure_comparisons(
    context: Context,
    database: PreparedDatabase,
    load: LoadGenerator,
    comparisons: Sequence[HttpComparison],
    runs: int,
    seconds: float,
    endpoints: Mapping[str, Endpoint],
    what: str,
) -> None:
    """``runs`` rounds; in each, PlasmaArt then the bare app, each in one
    server on a fresh copy of ``database``, warmed up once, then loaded at each
    comparison's connection count in turn (one server start per side and
    round keeps ``make bench`` short; on the submission route the queue grows
    across the counts alike on both sides)."""
    for run in range(runs):
        for app in SIDES:
            path, table = endpoints[app].path, endpoints[app].table
            loads: list[Load] = []
            with database.copy(f"{what}_{run}_{app}") as url:
                with serve(context, app, url) as server:
                    load.run(server.base + path, WARMUP_SECONDS)
                    for comparison in comparisons:
                        measured = load.at(comparison.connections).run(server.base + path, seconds)
                        if measured.requests == 0:
                            measured = replace(measured, stuck_in=server.stuck_in())
                        loads.append(measured)
                _check_stored(app, sum(measured.requests for measured in loads), url, table)
            for comparison, measured in zip(comparisons, loads, strict=True):
                (comparison.plasmaart if app == "plasmaart" else comparison.bare).append(measured)
        for comparison in comparisons:
            plasma, bare = comparison.plasmaart[-1], comparison.bare[-1]
            progress(
                f"  {database.backend} {what} run {run + 1}, {comparison.connections} connections:"
                f" PlasmaArt {plasma.per_second:7.1f} req/s "
                f"(p50 {plasma.p50_ms:.1f} ms, p99 {plasma.p99_ms:.1f} ms), "
                f"bare {bare.per_second:7.1f} req/s "
                f"(p50 {bare.p50_ms:.1f} ms, p99 {bare.p99_ms:.1f} ms), "
                f"ratio {plasma.per_second / max(bare.per_second, 1e-9):.1%}"
            )


def comparison_table(comparisons: Sequence[HttpComparison]) -> str:
    """Requests per second and latencies of both sides, their ratio, and the
    aim where the comparisons have one."""
    aimed = any(c.aim is not None or c.p99_aim_ms is not None for c in comparisons)
    head = ["database", "connections", "PlasmaArt req/s", "p50", "p99", "bare req/s", "p50", "p99"]
    rows = []
    for c in comparisons:
        figures = [
            f"{c.rps(side):,.0f}|{c.p50(side):.1f} ms|{c.p99(side):.1f} ms".split("|")
            for side in (c.plasmaart, c.bare)
        ]
        verdict = [c.aim_text, "yes" if c.met else "no"] if aimed else []
        rows.append(
            [c.backend, c.connections, *figures[0], *figures[1], f"{c.ratio:.1%}", *verdict]
        )
    if aimed:
        return markdown_table([*head, "ratio", "aim", "met?"], "<>>>>>>>><<", rows)
    return markdown_table([*head, "ratio"], "<>>>>>>>>", rows)


def summary_row(c: HttpComparison, what: str, bare: str) -> SummaryRow:
    """``c``'s row of the summary: ``what`` was measured, ``bare`` says
    what the bare app does."""
    return SummaryRow(
        f"{what}, {c.backend}, {c.connections} connections",
        f"{c.rps(c.plasmaart):,.0f} req/s, p99 {c.p99(c.plasmaart):.1f} ms",
        f"{c.rps(c.bare):,.0f} req/s, p99 {c.p99(c.bare):.1f} ms ({bare})",
        f"{c.ratio:.1%}",
        c.aim_text,
        c.met,
    )


def runs_lines(comparisons: Sequence[HttpComparison], prefix: str = "") -> list[str]:
    """Every run of both sides, a line per side and connection count."""
    lines = []
    for c in comparisons:
        for side, loads in (("PlasmaArt", c.plasmaart), ("bare", c.bare)):
            runs = ", ".join(load.detail() for load in loads)
            lines.append(
                f"{prefix}{c.backend}, {c.connections} connections, {side} req/s"
                f" (p50/p99 ms): {runs}"
            )
    return lines


def profile_servers(
    context: Context,
    database: PreparedDatabase,
    load: LoadGenerator,
    seconds: float,
    endpoints: Mapping[str, Endpoint] = SUBMIT,
    functions: Mapping[str, tuple[str, str]] = SUBMIT_FUNCTIONS,
) -> dict[str, Profile]:
    """Both servers, each profiled under ``load`` for ``seconds``;
    ``functions``: where each server's endpoint function is."""
    profiles = {}
    for app in SIDES:
        for attempt in range(PROFILE_ATTEMPTS):
            out = context.workdir / f"{app}-{attempt}.prof"
            name = f"profile_{app}_{attempt}"
            measured = measure_once(
                context, database, load, app, name, seconds, out, endpoints=endpoints
            )
            profile = load_profile(out, "requests")
            # Every request the server answered, the warm-up's included.
            profile.units = calls(profile.raw, *functions[app])
            profile.wall_rate = measured.per_second
            profile.attempts = attempt + 1
            profiles[app] = profile
            if measured.requests:
                break
            progress(f"  the profiled {app} server answered nothing (attempt {attempt + 1})")
    return profiles


def py_spy_servers(
    context: Context,
    database: PreparedDatabase,
    load: LoadGenerator,
    seconds: float,
    endpoints: Mapping[str, Endpoint] = SUBMIT,
) -> dict[str, PySpyProfile]:
    """PlasmaArt and the bare app, each sampled by py-spy under ``load``."""
    found = {}
    for app, label in (("plasmaart", "PlasmaArt"), ("bare", "bare app")):
        out = context.workdir / f"py-spy-{app}-{secrets.token_hex(3)}.txt"
        measured = measure_once(
            context,
            database,
            load,
            app,
            f"py_spy_{app}",
            seconds,
            endpoints=endpoints,
            py_spy_out=out,
        )
        what = f"{label}, {database.backend}, {load.connections} connections"
        found[app] = parse_py_spy_raw(out.read_text(), what, measured.per_second)
    return found

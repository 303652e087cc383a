"""Generations: submissions through the HTTP API and jobs through the queue, beside baselines.

Two measurements, each PlasmaArt and its baseline alternately, several times:

* Submission. The real app (``create_app(bootstrap(settings),
  embedded_worker=False)``, as ``plasmaart serve --no-worker`` runs it) under
  uvicorn in its own process, on a copy of a prepared database (``--users``
  Studio users with plenty of credits and an API key each; Studio's bounds on
  queued jobs and requests per minute raised by a catalog file so that they
  never refuse). A load
  generator in another process (``wrk``; ``--load-generator httpx`` uses
  ``benchmarks/http_load.py`` instead) keeps the connections
  busy for ``--seconds`` with ``POST /v1/generations`` (flux-schnell, the
  sandbox provider at zero delay), the API keys taken in turn, ``--runs``
  times, at each of ``--connections`` (16 and 64). Baseline: a bare FastAPI
  app on the database driver itself (``benchmarks/generation_servers.py``):
  the API key looked up by its hash, then in one transaction (``BEGIN
  IMMEDIATE`` on SQLite) a guarded ``UPDATE wallets SET available = available
  - 1 ... WHERE available >= 1`` and the INSERT of the job into
  ``generations``, on a copy of the same migrated database, under the same
  uvicorn options, driven the same way. On SQLite, then on PostgreSQL.
  Requests per second and latency p50/p99 (wrk, 1 thread, ``--latency``);
  aim: PlasmaArt at least half the bare app's requests per second, and its
  p99 under 50 ms at 16 connections.
* Queue. On a throwaway PostgreSQL server (``tests/support/pgserver.py``),
  ``--jobs`` jobs queued through ``GenerationService.submit`` (spread over
  the users), then ``--workers`` worker processes, each a ``Worker(platform,
  --concurrency)`` (its job slots are threads) driving a no-op provider that
  answers at once with one 1x1 PNG, and a storage that discards what it is
  given (Studio users with watermark removal on: no watermarking). Jobs per
  second from the first claim to the last job finished, from the jobs' own
  timestamps. Baseline: PgQueuer (the ``bench`` extra) on the same server,
  the same number of worker processes, ``--jobs`` jobs enqueued, a no-op
  async entrypoint, dequeuing ``--concurrency`` jobs at a time; from the first
  pick to the last completion logged; ``--queue-runs`` times. Aim: at least
  PgQueuer's jobs per second.

Before measuring, one PlasmaArt server and one bare server are profiled with
cProfile on thread CPU time across all their threads, and during an extra
queue run one PlasmaArt worker process is; ``--profile`` prints the top
functions. Every server, worker and database is removed at the end, also on
errors.

Run from the repository root: ``.venv/bin/python benchmarks/generations.py``;
``--write-docs`` rewrites this benchmark's section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import pstats
import queue
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import sqlalchemy

from plasmaart.bootstrap import bootstrap
from plasmaart.catalog import load_catalog
from plasmaart.catalog.loader import DEFAULT_CATALOG_PATH
from plasmaart.config import load_settings
from plasmaart.db.tables import wallets
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from plasmaart.worker import CLAIM_IDLE_S, Worker

REPO = Path(__file__).resolve().parent.parent
# The throwaway PostgreSQL server lives with the tests; they are not a package
# that the virtualenv installs.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.pgserver import PgServer, free_port  # noqa: E402

from benchmarks.common import (  # noqa: E402
    FuncKey,
    FuncStats,
    code_version,
    command_line,
    counts,
    create_pg_database,
    drop_pg_database,
    load_average,
    machine_facts,
    machine_table,
    pg_dsn,
    positive,
    postgres_server,
    postgres_version,
    progress,
    prose,
    self_time_by_bucket,
    short_name,
)
from benchmarks.docs import PERFORMANCE_DOC as DOC_PATH  # noqa: E402
from benchmarks.docs import SummaryRow, write_section, write_summary  # noqa: E402
from benchmarks.generation_servers import (  # noqa: E402
    AllThreadsProfile,
    DiscardStorage,
    NoopProvider,
    SqlCounter,
    write_profile,
)

SECTION_HEADING = "## Generations: submission and queue"
SERVERS = REPO / "benchmarks" / "generation_servers.py"
HTTP_LOAD = REPO / "benchmarks" / "http_load.py"

SUBMISSION_AIM = 0.5
# And at this many connections, PlasmaArt's p99 under this.
SUBMISSION_P99_AIM_MS = 50.0
P99_AIM_CONNECTIONS = 16
QUEUE_AIM = 1.0
# Their versions go in the machine table.
PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "pgqueuer")

MODEL = "flux-schnell"
# Every prompt is different, as real ones are (and fair use counts a user's
# copies of one prompt): the load generators put a number for PROMPT_SLOT.
PROMPT_SLOT = "#N#"
SUBMISSION = {
    "model": MODEL,
    "prompt": f"bench {PROMPT_SLOT}",
    "params": {"sandbox": {"delay_s": 0}},
}
PLAN = "studio"
# Studio queues at most 100 jobs per wallet and takes 120 requests a minute
# from each user; a run queues thousands and sends hundreds a second.
QUEUED_JOBS_CAP = 10_000_000
LIMITS_RAISED = {"max_queued_jobs": QUEUED_JOBS_CAP, "requests_per_minute": 10_000_000}
FUNDS = 10**12
# Users log in with API keys here; the password only has to be valid.
PASSWORD = secrets.token_urlsafe(16)
# Jobs queued per transaction while preparing the queue's database.
SUBMIT_BATCH = 200
PGQUEUER_ENTRYPOINT = "noop"

WARMUP_SECONDS = 1
SERVER_START_TIMEOUT = 60.0
# uvicorn's graceful shutdown takes up to 5 s, then the profile is written.
SERVER_STOP_TIMEOUT = 15.0
SETUP_TIMEOUT = 120.0
# A queue run gives up when the jobs are not done after this plus 0.1 s a job.
QUEUE_GRACE = 60.0
POLL_INTERVAL = 0.02
PROFILE_TOP = 15
# The profiled servers' connections: CPU per request does not need 64, and
# under the profiler PlasmaArt on SQLite stalls at 64 (its writers starve in
# SQLite's busy handler).
PROFILE_CONNECTIONS = 8
# A profiled server that stalls (answers nothing in the run) says nothing about
# the cost of a request: try again, so many times at most.
PROFILE_ATTEMPTS = 3

# -- the catalog and the users ---------------------------------------------------


def bench_catalog(workdir: Path) -> Path:
    """The shipped catalog, with Studio's bounds on queued jobs and on requests
    per minute raised so that a run's backlog and pace never refuse a request:
    the limits are still checked (their cost is measured), they never bind."""
    text = DEFAULT_CATALOG_PATH.read_text()
    start = text.index(f'id = "{PLAN}"')
    tail = text[start:]
    for name, value in LIMITS_RAISED.items():
        tail, replaced = re.subn(
            rf"^{name} = \d+$", f"{name} = {value}", tail, count=1, flags=re.MULTILINE
        )
        if replaced != 1:
            raise RuntimeError(f"no {name} line for the {PLAN} plan in the catalog")
    path = workdir / "catalog.toml"
    path.write_text(text[:start] + tail)
    plan = load_catalog(path).plan(PLAN)
    if any(getattr(plan, name) != value for name, value in LIMITS_RAISED.items()):
        raise RuntimeError("the benchmark catalog did not take")
    return path


@dataclass(frozen=True)
class Context:
    workdir: Path
    catalog: Path

    def settings(self, url: str, **overrides: Any) -> dict[str, Any]:
        return {
            "database_url": url,
            "var_dir": self.workdir / "var",
            "catalog_file": self.catalog,
            "embedded_worker": False,
            "auto_migrate": False,
            **overrides,
        }

    def platform(self, url: str, *, migrate: bool = False) -> Platform:
        return bootstrap(load_settings(**self.settings(url)), migrate=migrate)


def make_users(platform: Platform, count: int) -> list[str]:
    """``count`` Studio users with plenty of credits and watermark removal on;
    the API key of each."""
    keys = []
    with platform.db.write() as conn:
        for index in range(count):
            user = platform.accounts.create_user(conn, f"bench{index}@example.com", PASSWORD)
            wallet = platform.ledger.wallet_of(conn, "user", user.id)
            platform.billing.subscriptions.subscribe_paid(
                conn, user_id=user.id, wallet_id=wallet, plan_id=PLAN, backend="sandbox"
            )
            platform.ledger.grant(
                conn, wallet, FUNDS, source="purchase", idempotency_key=f"bench:funds:{user.id}"
            )
            platform.accounts.set_remove_watermark(conn, user, True)
            keys.append(platform.credentials.create_api_key(conn, user.id, "bench").secret)
    return keys


# -- PostgreSQL databases ------------------------------------------------------------


# -- submission: servers and load -------------------------------------------------


@dataclass(frozen=True)
class Load:
    requests: int  # answered (201) within the run
    seconds: float
    p50_ms: float
    p99_ms: float
    # Transport errors and timeouts (10 s): a server that stalls, not one that refuses.
    lost: int = 0
    # Where the server's threads were after a run that answered nothing.
    stuck_in: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Database:
    """A prepared database that each run copies, with its backend's helpers."""

    backend: str  # "SQLite" or "PostgreSQL"
    template: str  # a file path (SQLite) or a database name (PostgreSQL)
    server: PgServer | None

    @contextmanager
    def copy(self, name: str) -> Iterator[str]:
        if self.server is None:
            path = Path(self.template).with_name(f"{name}.db")
            shutil.copyfile(self.template, path)
            try:
                yield f"sqlite:///{path}"
            finally:
                for suffix in ("", "-wal", "-shm"):
                    with suppress(FileNotFoundError):
                        Path(f"{path}{suffix}").unlink()
        else:
            url = create_pg_database(self.server, name, self.template)
            try:
                yield url
            finally:
                drop_pg_database(self.server, name)


def hold_for_the_bare_app(platform: Platform) -> None:
    """One hold of one credit: the bare app's job rows must name a hold (a
    foreign key of ``generations``), and it keeps none of its own."""
    with platform.db.write() as conn:
        wallet = conn.execute(
            sqlalchemy.select(wallets.c.id).order_by(wallets.c.id).limit(1)
        ).scalar_one()
        platform.ledger.hold(conn, wallet, 1, idempotency_key="bench:bare-app-hold")


def prepare_submission_database(
    context: Context, backend: str, server: PgServer | None, users: int
) -> tuple[Database, list[str]]:
    """Migrated, with ``users`` users (and a hold for the bare app); each run copies it."""
    if server is None:
        path = context.workdir / "submission-template.db"
        url = f"sqlite:///{path}"
        template = str(path)
    else:
        template = "submission_template"
        url = create_pg_database(server, template)
    made = context.platform(url, migrate=True)
    try:
        keys = make_users(made, users)
        hold_for_the_bare_app(made)
    finally:
        made.close()
    if server is None:
        # The copies take the main file only: fold the write-ahead log into it.
        with sqlite3.connect(template) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    return Database(backend, template, server), keys


@dataclass(frozen=True)
class Server:
    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stuck_in(self) -> Counter[str]:
        """Where the server's threads are, by the innermost PlasmaArt frame of
        each: the server dumps its threads' stacks on SIGUSR1 (faulthandler)."""
        start = self.log_path.stat().st_size
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        with self.log_path.open("rb") as log:
            log.seek(start)
            dump = log.read().decode(errors="replace")
        places: Counter[str] = Counter()
        for thread in re.split(r"^(?:Current thread|Thread) 0x", dump, flags=re.MULTILINE)[1:]:
            # Most recent call first: the innermost PlasmaArt frames come first.
            frames = [
                f"{path.removeprefix('plasmaart/')}:{line} ({function})"
                for path, line, function in re.findall(
                    r'File ".*?/src/(plasmaart/[^"]+)", line (\d+) in (\w+)', thread
                )
            ]
            if not frames:
                continue
            # The database layer's frame says what it waits for (a connection,
            # the write lock), its caller who waits.
            caller = next((f for f in frames if not f.startswith("db/")), None)
            if frames[0].startswith("db/") and caller is not None:
                places[f"{caller} → {frames[0]}"] += 1
            else:
                places[frames[0]] += 1
        return places


@contextmanager
def serve(
    context: Context, app: str, url: str, profile_out: Path | None = None
) -> Iterator[Server]:
    """Run ``app`` in its own process on a free port."""
    port = free_port()
    log_path = context.workdir / f"server-{app}-{port}.log"
    command = [
        sys.executable,
        str(SERVERS),
        app,
        "--database-url",
        url,
        "--port",
        str(port),
        "--var-dir",
        str(context.workdir / "var"),
        "--catalog-file",
        str(context.catalog),
    ]
    if profile_out is not None:
        command += ["--profile-out", str(profile_out)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process, log_path)
        yield Server(base, process, log_path)
    finally:
        killed = stop_server(process)
    if killed:
        progress(f"  the {app} server did not stop within {SERVER_STOP_TIMEOUT:g} s: killed")
    elif process.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"the {app} server exited with {process.returncode}:\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until_ready(base: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    give_up = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode} at start:\n{tail(log_path)}"
            )
        with suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {SERVER_START_TIMEOUT:.0f} s")


def stop_server(process: subprocess.Popen[bytes]) -> bool:
    """Stop the server; whether it had to be killed."""
    if process.poll() is not None:
        return False
    # SIGINT: uvicorn's graceful shutdown, after which a profile is written.
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True
    return False


WRK_SCRIPT = """\
local keys = KEYS
local body = [==[BODY]==]
local turn = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function request()
  turn = turn + 1
  local headers = {}
  headers["Authorization"] = "Bearer " .. keys[turn % #keys + 1]
  if METHOD == "GET" then
    return wrk.format("GET", nil, headers, nil)
  end
  headers["Content-Type"] = "application/json"
  local numbered = body:gsub("SLOT", id .. "-" .. turn)
  return wrk.format(METHOD, nil, headers, numbered)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, '
      .. '"status_errors": %d, "transport_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class LoadGenerator:
    kind: str  # "wrk" or "httpx"
    workdir: Path
    keys: Sequence[str]
    connections: int
    # What each request is: a submission unless told otherwise.
    method: str = "POST"
    body: str = json.dumps(SUBMISSION)
    expect: int = 201

    @property
    def description(self) -> str:
        if self.kind == "wrk":
            return f"wrk {_wrk_version()} (1 thread, {self.connections} connections)"
        return f"benchmarks/http_load.py on httpx {httpx.__version__} ({self.connections} tasks)"

    def run(self, url: str, seconds: float) -> Load:
        body = self.body
        if self.kind == "wrk":
            script = self.workdir / f"load-{self.method.lower()}.lua"
            lua_keys = "{" + ", ".join(f'"{key}"' for key in self.keys) + "}"
            script.write_text(
                WRK_SCRIPT.replace("KEYS", lua_keys)
                .replace("SLOT", PROMPT_SLOT)
                .replace("METHOD", f'"{self.method}"')
                .replace("BODY", body)
            )
            command = [
                _wrk(),
                "-t",
                "1",
                "-c",
                str(self.connections),
                "-d",
                f"{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(script),
                url,
            ]
        else:
            keys_file = self.workdir / "keys.txt"
            keys_file.write_text("\n".join(self.keys) + "\n")
            command = [
                sys.executable,
                str(HTTP_LOAD),
                "--url",
                url,
                "--keys-file",
                str(keys_file),
                "--method",
                self.method,
                "--body",
                body,
                "--expect",
                str(self.expect),
                "--slot",
                PROMPT_SLOT,
                "--connections",
                str(self.connections),
                "--seconds",
                str(seconds),
            ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        found = re.search(r"^BENCH_RESULT (.+)$", done.stdout, re.MULTILINE)
        if done.returncode or found is None:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}{done.stderr}")
        result = json.loads(found.group(1))
        if self.kind == "wrk":
            # wrk's own latency distribution (--latency), where it printed one.
            result.update(wrk_percentiles(done.stdout))
        refused = int(result["status_errors"])
        if refused:
            # A refusal means the benchmark is set up wrong (a plan limit, a
            # bad key), not that the server is slow: stop rather than report.
            raise RuntimeError(f"{refused} of {result['requests']} requests to {url} refused")
        return Load(
            requests=int(result["requests"]),
            seconds=float(result["seconds"]),
            p50_ms=float(result["p50_us"]) / 1e3,
            p99_ms=float(result["p99_us"]) / 1e3,
            lost=int(result["transport_errors"]),
        )


_WRK_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def wrk_percentiles(output: str) -> dict[str, float]:
    """p50 and p99 (``p50_us``, ``p99_us``) from the "Latency Distribution"
    that ``wrk --latency`` prints (lines such as ``99%   12.34ms``)."""
    found = {}
    section = output.partition("Latency Distribution")[2]
    for percent, value, unit in re.findall(
        r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", section, re.MULTILINE
    ):
        if percent in ("50", "99"):
            found[f"p{percent}_us"] = float(value) * _WRK_UNITS_US[unit]
    return found


def _wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found")
    return found


def _wrk_version() -> str:
    done = subprocess.run([_wrk(), "-v"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk (\S+)", done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def _rows(url: str, table: str) -> int:
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


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


def measure_once(
    context: Context,
    database: Database,
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
        # Every answered request was a 201 with its row committed.
        stored = measured.requests if table is None else _rows(url, table)
    if stored < measured.requests:
        raise RuntimeError(f"{app}: {measured.requests} requests answered, {stored} rows stored")
    return measured


@dataclass
class SubmissionComparison:
    backend: str  # "SQLite" or "PostgreSQL"
    connections: int
    plasmaart: list[Load] = field(default_factory=list)
    bare: list[Load] = field(default_factory=list)
    aim: float = SUBMISSION_AIM
    # PlasmaArt's median p99 must be under this too, when set.
    p99_aim_ms: float | None = None

    @staticmethod
    def _median(loads: Sequence[Load], value: Callable[[Load], float]) -> float:
        return statistics.median(value(load) for load in loads)

    def rps(self, side: Sequence[Load]) -> float:
        return self._median(side, lambda load: load.per_second)

    def p50(self, side: Sequence[Load]) -> float:
        return self._median(side, lambda load: load.p50_ms)

    def p99(self, side: Sequence[Load]) -> float:
        return self._median(side, lambda load: load.p99_ms)

    @property
    def ratio(self) -> float:
        return self.rps(self.plasmaart) / self.rps(self.bare)

    @property
    def met(self) -> bool:
        fast_enough = self.p99_aim_ms is None or self.p99(self.plasmaart) < self.p99_aim_ms
        return self.ratio >= self.aim and fast_enough

    @property
    def aim_text(self) -> str:
        p99 = "" if self.p99_aim_ms is None else f", p99 < {self.p99_aim_ms:.0f} ms"
        return f"≥ {self.aim:.0%}{p99}"


def measure_comparisons(
    context: Context,
    database: Database,
    load: LoadGenerator,
    comparisons: Sequence[SubmissionComparison],
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
        for app in ("plasmaart", "bare"):
            path, table = endpoints[app].path, endpoints[app].table
            loads: list[Load] = []
            with database.copy(f"{what}_{run}_{app}") as url:
                with serve(context, app, url) as server:
                    load.run(server.base + path, WARMUP_SECONDS)
                    for comparison in comparisons:
                        sized = replace(load, connections=comparison.connections)
                        measured = sized.run(server.base + path, seconds)
                        if measured.requests == 0:
                            measured = replace(measured, stuck_in=server.stuck_in())
                        loads.append(measured)
                # Every answered request was a 2xx with its row committed.
                answered = sum(measured.requests for measured in loads)
                if table is not None and _rows(url, table) < answered:
                    raise RuntimeError(f"{app}: {answered} requests answered, fewer rows stored")
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


def measure_submission(
    context: Context, database: Database, load: LoadGenerator, args: argparse.Namespace
) -> list[SubmissionComparison]:
    """At each of ``args.connections``: PlasmaArt against the bare app."""
    comparisons = [
        SubmissionComparison(
            database.backend,
            count,
            p99_aim_ms=SUBMISSION_P99_AIM_MS if count == P99_AIM_CONNECTIONS else None,
        )
        for count in args.connections
    ]
    measure_comparisons(
        context, database, load, comparisons, args.runs, args.seconds, SUBMIT, "submission"
    )
    return comparisons


# -- queue: the no-op provider and storage -------------------------------------------


# -- queue: preparing the databases ---------------------------------------------------

PLASMAART_QUEUE_TEMPLATE = "queue_plasmaart_template"
PGQUEUER_TEMPLATE = "queue_pgqueuer_template"


def prepare_plasmaart_queue(context: Context, server: PgServer, users: int, jobs: int) -> None:
    """Users, and ``jobs`` jobs queued through the service, round-robin over them."""
    url = create_pg_database(server, PLASMAART_QUEUE_TEMPLATE)
    made = context.platform(url, migrate=True)
    try:
        make_users(made, users)
        with made.db.read() as conn:
            people = [
                made.accounts.get_by_email(conn, f"bench{index}@example.com")
                for index in range(users)
            ]
        for start in range(0, jobs, SUBMIT_BATCH):
            with made.db.write() as conn:
                for number in range(start, min(start + SUBMIT_BATCH, jobs)):
                    request = GenerationRequest(MODEL, f"bench {number}")
                    made.generations.submit(conn, people[number % users], request)
    finally:
        made.close()


def prepare_pgqueuer(server: PgServer, jobs: int) -> None:
    create_pg_database(server, PGQUEUER_TEMPLATE)

    async def install_and_enqueue() -> None:
        from pgqueuer import PsycopgDriver, Queries

        conn = await psycopg.AsyncConnection.connect(
            pg_dsn(server, PGQUEUER_TEMPLATE), autocommit=True
        )
        try:
            queries = Queries(PsycopgDriver(conn))
            await queries.install()
            await queries.enqueue([PGQUEUER_ENTRYPOINT] * jobs, [b"bench"] * jobs, [0] * jobs)
        finally:
            await conn.close()

    asyncio.run(install_and_enqueue())


# -- queue: worker processes -----------------------------------------------------------


def _plasmaart_worker(
    index: int,
    settings: dict[str, Any],
    concurrency: int,
    channel: Queue[tuple[Any, ...]],
    go: Event,
    stop: Event,
    profile_out: Path | None,
) -> None:
    try:
        made = bootstrap(load_settings(**settings), migrate=False)
        made.provider = NoopProvider()
        made.storage = DiscardStorage()
        worker = Worker(made, concurrency)
        counter = SqlCounter(made.db.engine) if profile_out else None
        profile = AllThreadsProfile() if profile_out else None
        channel.put(("ready", index))
        if not go.wait(SETUP_TIMEOUT):
            raise RuntimeError("no start signal")
        started = time.monotonic()
        if profile is not None:
            profile.start()
        thread = worker.start_thread()
        stop.wait()
        worker.stop()
        thread.join(timeout=60)
        if profile_out is not None and profile is not None and counter is not None:
            write_profile(profile_out, profile, counter, time.monotonic() - started)
        made.close()
        channel.put(("done", index))
    except BaseException:
        channel.put(("error", index, traceback.format_exc()))


def _pgqueuer_worker(
    index: int,
    dsn: str,
    batch_size: int,
    channel: Queue[tuple[Any, ...]],
    go: Event,
    stop: Event,
) -> None:
    async def main() -> None:
        from pgqueuer import PsycopgDriver, Queries, QueueManager
        from pgqueuer.models import Job

        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            manager = QueueManager(Queries(PsycopgDriver(conn)))

            @manager.entrypoint(PGQUEUER_ENTRYPOINT)
            async def noop(job: Job) -> None:
                """Nothing: the queue alone is measured."""

            loop = asyncio.get_running_loop()
            channel.put(("ready", index))
            if not await loop.run_in_executor(None, go.wait, SETUP_TIMEOUT):
                raise RuntimeError("no start signal")
            running = asyncio.create_task(manager.run(batch_size=batch_size))
            await loop.run_in_executor(None, stop.wait)
            manager.shutdown.set()
            await asyncio.wait_for(running, timeout=60)
        finally:
            await conn.close()

    try:
        asyncio.run(main())
        channel.put(("done", index))
    except BaseException:
        channel.put(("error", index, traceback.format_exc()))


def _collect(
    channel: Queue[tuple[Any, ...]],
    processes: Sequence[BaseProcess],
    kind: str,
    timeout: float,
) -> None:
    """Wait for one ``kind`` message per process; any failure raises."""
    got = 0
    give_up = time.monotonic() + timeout
    while got < len(processes):
        try:
            message = channel.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(
                    f"a worker process died (exit code {dead[0].exitcode})"
                ) from None
            if time.monotonic() > give_up:
                raise RuntimeError(f"workers not {kind} after {timeout:.0f} s") from None
            continue
        if message[0] == "error":
            raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
        if message[0] != kind:
            raise RuntimeError(f"unexpected message from a worker: {message!r}")
        got += 1


def _end(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


@dataclass(frozen=True)
class QueueRun:
    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds


def _wait_until(
    dsn: str, remaining_sql: bytes, processes: Sequence[BaseProcess], timeout: float
) -> None:
    """Poll until ``remaining_sql`` counts nothing left; raise if a worker dies."""
    give_up = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(remaining_sql).fetchone()
            if row is not None and int(row[0]) == 0:
                return
            dead = [p for p in processes if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"a worker process ended early (exit code {dead[0].exitcode})")
            if time.monotonic() > give_up:
                raise RuntimeError(f"{row[0] if row else '?'} jobs not done after {timeout:.0f} s")
            time.sleep(POLL_INTERVAL)


def run_workers(
    ctx: ForkContext,
    targets: Sequence[Callable[[Event, Event, Queue[tuple[Any, ...]]], BaseProcess]],
    dsn: str,
    remaining_sql: bytes,
    jobs: int,
) -> None:
    """Start the worker processes, let them go together, wait for the queue to empty."""
    channel: Queue[tuple[Any, ...]] = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    processes: list[BaseProcess] = []
    try:
        for target in targets:
            process = target(go, stop, channel)
            process.start()
            processes.append(process)
        _collect(channel, processes, "ready", SETUP_TIMEOUT)
        go.set()
        _wait_until(dsn, remaining_sql, processes, QUEUE_GRACE + jobs / 10)
        stop.set()
        _collect(channel, processes, "done", SETUP_TIMEOUT)
    finally:
        go.set()
        stop.set()
        _end(processes)
        channel.close()


def run_plasmaart_queue(
    ctx: ForkContext,
    context: Context,
    server: PgServer,
    args: argparse.Namespace,
    name: str,
    profile_out: Path | None = None,
) -> QueueRun:
    url = create_pg_database(server, name, PLASMAART_QUEUE_TEMPLATE)
    try:
        settings = context.settings(url, worker_concurrency=args.concurrency)

        def target(
            index: int,
        ) -> Callable[[Event, Event, Queue[tuple[Any, ...]]], BaseProcess]:
            return lambda go, stop, channel: ctx.Process(
                target=_plasmaart_worker,
                args=(
                    index,
                    settings,
                    args.concurrency,
                    channel,
                    go,
                    stop,
                    profile_out if index == 0 else None,
                ),
                daemon=True,
            )

        dsn = pg_dsn(server, name)
        run_workers(
            ctx,
            [target(index) for index in range(args.workers)],
            dsn,
            b"SELECT count(*) FROM generations WHERE status IN ('queued', 'running')",
            args.jobs,
        )
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                b"SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*),"
                b" min(started_at), max(finished_at) FROM generations"
            ).fetchone()
    finally:
        drop_pg_database(server, name)
    if row is None or row[0] != args.jobs or row[1] != args.jobs:
        raise RuntimeError(f"PlasmaArt: {row and row[0]} of {args.jobs} jobs succeeded")
    return QueueRun(args.jobs, (row[3] - row[2]).total_seconds())


def run_pgqueuer(
    ctx: ForkContext, server: PgServer, args: argparse.Namespace, name: str
) -> QueueRun:
    create_pg_database(server, name, PGQUEUER_TEMPLATE)
    dsn = pg_dsn(server, name)
    try:

        def target(index: int) -> Callable[[Event, Event, Queue[tuple[Any, ...]]], BaseProcess]:
            return lambda go, stop, channel: ctx.Process(
                target=_pgqueuer_worker,
                args=(index, dsn, args.concurrency, channel, go, stop),
                daemon=True,
            )

        run_workers(
            ctx,
            [target(index) for index in range(args.workers)],
            dsn,
            b"SELECT count(*) FROM pgqueuer",
            args.jobs,
        )
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                b"SELECT count(*) FILTER (WHERE status = 'successful'),"
                b" min(created) FILTER (WHERE status = 'picked'),"
                b" max(created) FILTER (WHERE status = 'successful') FROM pgqueuer_log"
            ).fetchone()
    finally:
        drop_pg_database(server, name)
    if row is None or row[0] != args.jobs:
        raise RuntimeError(f"PgQueuer: {row and row[0]} of {args.jobs} jobs logged successful")
    return QueueRun(args.jobs, (row[2] - row[1]).total_seconds())


@dataclass
class QueueComparison:
    workers: int
    concurrency: int
    jobs: int
    plasmaart: list[QueueRun] = field(default_factory=list)
    pgqueuer: list[QueueRun] = field(default_factory=list)

    @property
    def plasmaart_jps(self) -> float:
        return statistics.median(run.per_second for run in self.plasmaart)

    @property
    def pgqueuer_jps(self) -> float:
        return statistics.median(run.per_second for run in self.pgqueuer)

    @property
    def ratio(self) -> float:
        return self.plasmaart_jps / self.pgqueuer_jps

    @property
    def met(self) -> bool:
        return self.ratio >= QUEUE_AIM


def measure_queue(
    ctx: ForkContext, context: Context, server: PgServer, args: argparse.Namespace
) -> tuple[QueueComparison, Profile]:
    progress(f"queue: queuing {args.jobs} jobs for each side")
    prepare_plasmaart_queue(context, server, args.users, args.jobs)
    prepare_pgqueuer(server, args.jobs)
    comparison = QueueComparison(args.workers, args.concurrency, args.jobs)
    profile_out = context.workdir / "worker.prof"
    progress("queue: profiling PlasmaArt's worker 0 during an extra run")
    profiled = run_plasmaart_queue(ctx, context, server, args, "queue_profiled", profile_out)
    profile = load_profile(profile_out, "jobs")
    profile.units = _calls(profile.raw, "generation/runner.py", "run")
    profile.wall_rate = profiled.per_second
    for run in range(args.queue_runs):
        comparison.plasmaart.append(
            run_plasmaart_queue(ctx, context, server, args, f"queue_run_{run}_plasmaart")
        )
        comparison.pgqueuer.append(run_pgqueuer(ctx, server, args, f"queue_run_{run}_pgqueuer"))
        progress(
            f"  queue run {run + 1}: PlasmaArt {comparison.plasmaart[-1].per_second:7.1f} jobs/s, "
            f"PgQueuer {comparison.pgqueuer[-1].per_second:7.1f} jobs/s"
        )
    return comparison, profile


# -- profiles --------------------------------------------------------------------------

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


def _calls(raw: Mapping[FuncKey, FuncStats], path_end: str, name: str) -> int:
    return sum(
        stats[1] for key, stats in raw.items() if key[0].endswith(path_end) and key[2] == name
    )


def _calls_from(
    raw: Mapping[FuncKey, FuncStats], name: str, caller_path_end: str, caller: str
) -> int:
    """Calls of the functions named ``name`` made by ``caller``."""
    total = 0
    for key, (_, _, _, _, callers) in raw.items():
        if key[2] != name:
            continue
        for (path, _, function), (calls, _, _, _) in callers.items():
            if path.endswith(caller_path_end) and function == caller:
                total += calls
    return total


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

    def top(self, by: int, count: int = PROFILE_TOP) -> list[tuple[FuncKey, FuncStats]]:
        return sorted(self.raw.items(), key=lambda item: item[1][by], reverse=True)[:count]

    def table(self, title: str) -> str:
        lines = [f"{title}: {self.units} {self.what}, {self.per_unit_ms():.2f} ms CPU each"]
        for by, heading in ((3, "cumulative"), (2, "self")):
            lines.append(f"  by {heading} CPU time")
            lines.append(f"  {'calls':>9} {'self s':>8} {'cum s':>8}  function")
            for key, (_, calls, self_time, cumulative, _) in self.top(by):
                lines.append(
                    f"  {calls:>9} {self_time:>8.3f} {cumulative:>8.3f}  {short_name(key)}"
                )
        return "\n".join(lines)


def load_profile(path: Path, what: str) -> Profile:
    counts = json.loads(path.with_suffix(".json").read_text())
    raw = cast(dict[FuncKey, FuncStats], pstats.Stats(str(path)).stats)
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


# Where each server's endpoint function is: its calls are the requests served.
ENDPOINTS = {
    "plasmaart": ("plasmaart/web/api/generations.py", "create_generation"),
    "bare": ("benchmarks/generation_servers.py", "submit"),
}


def profile_servers(
    context: Context,
    database: Database,
    load: LoadGenerator,
    seconds: float,
    endpoints: Mapping[str, Endpoint] = SUBMIT,
    functions: Mapping[str, tuple[str, str]] = ENDPOINTS,
) -> dict[str, Profile]:
    """Both servers, each profiled under ``load`` for ``seconds``;
    ``functions``: where each server's endpoint function is."""
    profiles = {}
    for app in ("plasmaart", "bare"):
        for attempt in range(PROFILE_ATTEMPTS):
            out = context.workdir / f"{app}-{attempt}.prof"
            name = f"profile_{app}_{attempt}"
            measured = measure_once(
                context, database, load, app, name, seconds, out, endpoints=endpoints
            )
            profile = load_profile(out, "requests")
            # Every request the server answered, the warm-up's included.
            endpoint = functions[app]
            profile.units = _calls(profile.raw, endpoint[0], endpoint[1])
            profile.wall_rate = measured.per_second
            profile.attempts = attempt + 1
            profiles[app] = profile
            if measured.requests:
                break
            progress(f"  the profiled {app} server answered nothing (attempt {attempt + 1})")
    return profiles


# -- py-spy: sampling the live server ---------------------------------------------------

PY_SPY_RATE = 200  # samples a second
PY_SPY_TOP = 12
PY_SPY_COMMAND = f"py-spy record --format raw --rate {PY_SPY_RATE} --nonblocking --gil --pid PID"


def py_spy_binary() -> str | None:
    """py-spy (the ``bench`` extra) on the PATH or beside this Python."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


@contextmanager
def py_spy_recording(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """``py-spy record --format raw --gil`` of process ``pid`` for ``seconds``
    (without pausing it) while the body runs; the collapsed stacks in ``out``."""
    binary = py_spy_binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(out),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(PY_SPY_RATE),
        "--nonblocking",
        "--gil",
    ]
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield
    finally:
        try:
            output, _ = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            output, _ = spy.communicate()
    if spy.returncode or not out.exists():
        raise RuntimeError(f"{shlex.join(command)} failed:\n{output}")


@dataclass
class PySpyProfile:
    """What py-spy saw of one server under load, by function (``name (file)``)."""

    what: str
    rate: float  # the run's requests per second
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)  # the innermost frame
    total: Counter[str] = field(default_factory=Counter)  # anywhere in the stack

    def top(self, counter: Counter[str], count: int = PY_SPY_TOP) -> list[tuple[str, float]]:
        shares = [(name, n / max(self.samples, 1)) for name, n in counter.most_common()]
        if counter is self.total:
            # The app's own functions (PlasmaArt's, or the bare app's): the
            # frames above them (threads, the event loop) are alike on both.
            shares = [(name, share) for name, share in shares if _own_code(name)]
        return shares[:count]

    def table(self) -> str:
        lines = [
            f"{self.what}: {self.samples:,} samples at {PY_SPY_RATE}/s of the thread"
            f" holding the GIL ({self.rate:,.0f} req/s during the recording)",
            "",
            "| own time (innermost frame) | share | the app's functions, inclusive | share |",
            "|---|---:|---|---:|",
        ]
        own, total = self.top(self.own), self.top(self.total)
        for index in range(max(len(own), len(total))):
            left = own[index] if index < len(own) else ("", 0.0)
            right = total[index] if index < len(total) else ("", 0.0)
            lines.append(
                f"| {_code(left[0])} | {_share(left)} | {_code(right[0])} | {_share(right)} |"
            )
        return "\n".join(lines)


def _own_code(name: str) -> bool:
    """A function of PlasmaArt or of the bare app, not the server's entry point."""
    if name.startswith(("<module> (", "main (")):
        return False
    return "(plasmaart/" in name or "(benchmarks/generation_servers.py)" in name


def _code(name: str) -> str:
    return f"`{name}`" if name else ""


def _share(row: tuple[str, float]) -> str:
    return f"{row[1]:.0%}" if row[0] else ""


def parse_py_spy_raw(text: str, what: str, rate: float) -> PySpyProfile:
    """py-spy's raw format: one collapsed stack a line, outermost frame first,
    ``function (file:line);... count``."""
    profile = PySpyProfile(what, rate)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [re.sub(r":\d+\)$", ")", frame.strip()) for frame in stack.split(";")]
        profile.samples += samples
        profile.own[frames[-1]] += samples
        for frame in set(frames):
            profile.total[frame] += samples
    return profile


def py_spy_servers(
    context: Context,
    database: Database,
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


def py_spy_text(profiles: Mapping[str, PySpyProfile], command: str) -> str:
    """The section's py-spy subsection: how, then one table per server."""
    how = prose(
        f"`{command}` sampled each server process ({PY_SPY_RATE} samples a second,",
        "without pausing it) during one extra run of the same load, after its",
        "warm-up, keeping the thread that held the GIL: one server process runs",
        "its Python on one core at a time, so these samples are what bounds its",
        "requests per second (SQLite's own work and waiting for its write lock",
        "release the GIL and are not in them). A sample counts for its innermost",
        "function (own time) and for every function of the app on its stack",
        "(inclusive). Unlike cProfile, py-spy barely slows the server, so these",
        "shares are those of the real server.",
    )
    return "\n\n".join([how, *(profile.table() for profile in profiles.values())]) + "\n"


# -- report ----------------------------------------------------------------------------


def submission_table(comparisons: Sequence[SubmissionComparison]) -> str:
    lines = [
        "| database | connections | PlasmaArt req/s | p50 | p99 | bare req/s | p50 | p99 "
        "| ratio | aim | met? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.backend} | {c.connections} | {c.rps(c.plasmaart):,.0f} "
            f"| {c.p50(c.plasmaart):.1f} ms | {c.p99(c.plasmaart):.1f} ms "
            f"| {c.rps(c.bare):,.0f} | {c.p50(c.bare):.1f} ms | {c.p99(c.bare):.1f} ms "
            f"| {c.ratio:.1%} | {c.aim_text} | {'yes' if c.met else 'no'} |"
        )
    return "\n".join(lines)


def queue_table(c: QueueComparison) -> str:
    return "\n".join(
        [
            "| database | workers x slots | jobs | PlasmaArt jobs/s | PgQueuer jobs/s | ratio "
            "| aim | met? |",
            "|---|---|---:|---:|---:|---:|---:|---|",
            f"| PostgreSQL | {c.workers} x {c.concurrency} | {c.jobs:,} "
            f"| {c.plasmaart_jps:,.0f} | {c.pgqueuer_jps:,.0f} | {c.ratio:.1%} "
            f"| ≥ {QUEUE_AIM:.0%} | {'yes' if c.met else 'no'} |",
        ]
    )


def runs_detail(
    submissions: Sequence[SubmissionComparison], queue_comparison: QueueComparison | None
) -> str:
    lines = []
    for c in submissions:
        for side, loads in (("PlasmaArt", c.plasmaart), ("bare", c.bare)):
            runs = ", ".join(_load_detail(load) for load in loads)
            lines.append(
                f"{c.backend}, {c.connections} connections, {side} req/s (p50/p99 ms): {runs}"
            )
    if queue_comparison is not None:
        for side, queue_runs in (
            ("PlasmaArt", queue_comparison.plasmaart),
            ("PgQueuer", queue_comparison.pgqueuer),
        ):
            runs = ", ".join(f"{run.per_second:.0f}" for run in queue_runs)
            lines.append(f"queue, {side} jobs/s: {runs}")
    return "\n".join(lines)


def _load_detail(load: Load) -> str:
    lost = f", {load.lost} lost" if load.lost else ""
    return f"{load.per_second:.0f} ({load.p50_ms:.1f}/{load.p99_ms:.1f}{lost})"


def profile_shares(profiles: Mapping[str, Profile]) -> str:
    names = list(profiles)
    lines = [
        "| where | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for bucket in BUCKETS:
        if all(profile.share(bucket) < 0.005 for profile in profiles.values()):
            continue
        cells = " | ".join(f"{profiles[name].share(bucket):.0%}" for name in names)
        lines.append(f"| {bucket} | {cells} |")
    cells = " | ".join(f"{profiles[name].per_unit_ms():.2f} ms" for name in names)
    lines.append(f"| **CPU per request or job** | {cells} |")
    return "\n".join(lines)


def _top_self(profile: Profile, count: int = 5) -> str:
    return ", ".join(f"`{short_name(key)}`" for key, _ in profile.top(2, count))


def _statement_line(profile: Profile) -> str:
    units = max(profile.units, 1)
    return (
        f"{profile.statements / units:.1f} SQL statements in "
        f"{profile.transactions / units:.1f} transactions"
    )


def _stall_note(profile: Profile) -> str:
    if profile.wall_rate == 0:
        return (
            f"The PlasmaArt server stalled in all {profile.attempts} profiled runs, so"
            " there is no profile of a submission below;"
        )
    if profile.attempts > 1:
        return f"The PlasmaArt server stalled in {profile.attempts - 1} profiled run(s) first."
    return ""


def _loop_share(profile: Profile) -> float:
    return profile.main_thread / profile.total if profile.total else 0.0


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
    lines = [
        f"| function | share of CPU (cumulative) | calls per {profile.what[:-1]} |",
        "|---|---:|---:|",
    ]
    for key, share, per_unit in own_functions(profile):
        lines.append(f"| `{short_name(key)}` | {share:.0%} | {per_unit:.1f} |")
    return "\n".join(lines)


def profile_text(servers: Mapping[str, Profile], worker: Profile | None) -> str:
    parts = []
    profiles: dict[str, Profile] = {}
    if servers:
        plasma, bare = servers["plasmaart"], servers["bare"]
        # A stalled server's profile is of its stall, not of a submission.
        if plasma.wall_rate:
            profiles["PlasmaArt server"] = plasma
        profiles["bare server"] = bare
        if plasma.wall_rate:
            plasma_figures = [
                f"PlasmaArt served {plasma.units:,} submissions ({plasma.wall_rate:,.0f} req/s",
                f"under the profiler), each {plasma.per_unit_ms():.2f} ms of CPU and",
                f"{_statement_line(plasma)};",
            ]
            loop = [
                "The event loop's thread (HTTP, the edge, routing, validation,",
                f"serialisation) took {_loop_share(plasma):.0%} of PlasmaArt's CPU time",
                f"and {_loop_share(bare):.0%} of the bare server's; the threads running",
                "the sync endpoints the rest.",
            ]
        else:
            plasma_figures, loop = [], []
        parts.append(
            prose(
                "One PlasmaArt server and one bare server on SQLite, each under the same",
                f"load as in the measurements but at {PROFILE_CONNECTIONS} connections (at",
                "64, the slower profiled PlasmaArt server stalls on the SQLite write lock),",
                "profiled with cProfile in every thread (the",
                "event loop and the threads that run sync endpoints) on thread CPU time,",
                "so waiting costs nothing: a thread waiting for the SQLite write lock or",
                "for work is not counted.",
                _stall_note(plasma),
                *plasma_figures,
                f"the bare endpoint served {bare.units:,} requests ({bare.wall_rate:,.0f}",
                f"req/s), each {bare.per_unit_ms():.2f} ms of CPU and",
                f"{_statement_line(bare)} (on SQLite, `BEGIN` counts as a statement).",
                "The profiler slows Python code more than C code, so the Python shares",
                "are inflated, the ratios between the two servers less so. One server",
                "process runs its Python on one core at a time (the GIL), so CPU per",
                "request bounds its requests per second.",
                *loop,
            )
        )
    if worker is not None:
        profiles["PlasmaArt worker"] = worker
        waits = _calls_from(worker.raw, "wait", "plasmaart/worker.py", "run")
        claims = _calls(worker.raw, "plasmaart/worker.py", "claim")
        parts.append(
            prose(
                "Worker 0 of an extra queue run (not one of the measured runs), profiled",
                f"the same way: it ran {worker.units:,} jobs, each {worker.per_unit_ms():.2f}",
                f"ms of CPU and {_statement_line(worker)} (the claim, the runner's",
                "steps, the capture, the events), and used",
                f"{worker.total:.1f} s of CPU in {worker.seconds:.1f} s; the run went at",
                f"{worker.wall_rate:,.0f} jobs/s. Its claim loop called `Worker.claim`",
                f"{claims:,} times and waited {waits:,} times, each up to",
                f"{CLAIM_IDLE_S:g} s (`CLAIM_IDLE_S`) or until a job was queued or a slot",
                "freed, when every slot was busy or no job could be claimed.",
            )
        )
    parts.append("Where the CPU time went (self time; a builtin counts for its callers):")
    parts.append(profile_shares(profiles))
    tops = [f"{name}: {_top_self(profile)}." for name, profile in profiles.items()]
    parts.append(prose("The functions with the most self time.", *tops))
    for name, profile in profiles.items():
        if name.startswith("PlasmaArt"):
            parts.append(f"PlasmaArt's own functions in the {name}:")
            parts.append(own_functions_table(profile))
    parts.append(f"`--profile` prints the top {PROFILE_TOP} functions of each profile.")
    return "\n\n".join(parts) + "\n"


HOW_TO_READ = "\n\n".join(
    [
        prose(
            "Each ratio is the median of PlasmaArt's runs over the median of the",
            "baseline's, the two measured alternately on the same machine, so that",
            "machine noise (this may be a shared machine) hits both sides alike:",
            "compare ratios between runs and machines, not absolute figures.",
        ),
        prose(
            "The sides do not do the same work. A PlasmaArt submission passes the",
            "edge (one ASGI callable: a request id, the body limit, the idempotency",
            "check, an access log line and metrics), authenticates the API key",
            "(cached), and then makes one read transaction (the model, the plan in",
            "force, the team and the wallet's queue, validated) and one short write",
            "function handed to `Database.run_write` (group commit on SQLite): the",
            "credits held with a guarded update in the ledger and the job inserted",
            "with one guarded `INSERT` under the wallet's queued-jobs cap; fair use",
            "counts it after the commit, off the transaction. It answers with the",
            "generation, serialised with orjson. The bare app (FastAPI on the driver",
            "itself: `sqlite3`, psycopg) validates the same body, looks the API key up",
            "by its hash, and in one transaction (`BEGIN IMMEDIATE` on SQLite) takes",
            "one credit from the wallet with a guarded `UPDATE ... WHERE available >=",
            "1` and inserts the job into `generations`: issue 14's baseline.",
            "A PlasmaArt job is claimed with others in one transaction under the",
            "scheduling rules (wallet caps, reserved slots), as many as the worker has",
            "free slots, then run and ended in one more transaction: the provider",
            "asked for its status, the output stamped with its license and stored, the",
            "credits captured and the job finished, each change announced (on",
            "PostgreSQL the events go out in batches); a lease keeper renews the leases",
            "of running jobs together. A PgQueuer job is a row picked and, once its",
            "coroutine returns, moved to the log.",
        ),
        prose(
            "Latencies are measured by the load generator from send to answer, with",
            "every connection always busy (a closed loop), so they are mostly",
            "queueing: at saturation p50 is close to connections ÷ requests per second.",
            "On SQLite, writers wait for the one write lock in SQLite's busy handler,",
            "which sleeps and retries rather than queueing them in order, so p99 is",
            "many times p50 on both sides.",
            "Submissions queue up (no worker runs), so the queue grows during a run",
            "and each run starts from a fresh copy of the prepared database.",
        ),
        prose(
            "Durability is relaxed alike on both sides of each comparison: SQLite runs",
            "in WAL mode with `synchronous=NORMAL` and the throwaway PostgreSQL server",
            "with `fsync=off` and `synchronous_commit=off`, so these figures measure",
            "CPU and round trips, not disks. The load generator, the servers, the",
            "workers and PostgreSQL share the machine's CPUs.",
        ),
    ]
)


def render_section(
    submissions: Sequence[SubmissionComparison],
    queue_comparison: QueueComparison,
    servers: Mapping[str, Profile],
    worker: Profile,
    facts: Sequence[tuple[str, str]],
    command: str,
    args: argparse.Namespace,
    spies: Mapping[str, PySpyProfile] | None = None,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    py_spy = (
        f"### py-spy: the live servers\n\n{py_spy_text(spies, PY_SPY_COMMAND)}\n" if spies else ""
    )
    submission_method = prose(
        f"**Submission.** {args.runs} runs of {args.seconds:g} s on each side at each",
        f"connection count, after a {WARMUP_SECONDS} s warm-up, each run's server on a",
        "fresh copy of a database prepared with",
        f"{args.users} Studio users (credits enough for any run; Studio's bounds on",
        "queued jobs and requests per minute raised by a catalog file, checked but",
        "never binding); PlasmaArt and the bare app",
        "alternately, each in its own uvicorn process (asyncio loop, h11), the load",
        "generator (wrk, 1 thread, or the load generator named below) in another,",
        f"{' and '.join(str(n) for n in args.connections)} connections in turn on each",
        "server, the API keys in turn; p50 and p99 from wrk's latency distribution",
        "(`--latency`).",
        "PlasmaArt runs with its default settings: INFO logs, so a JSON access",
        "line per request.",
    )
    queue_method = prose(
        f"**Queue.** {args.queue_runs} runs on each side of {args.jobs:,} jobs queued",
        f"before the workers start, spread over {args.users} Studio users (the",
        "plan's cap of 8 running jobs per wallet never binds), and",
        f"{args.workers} worker processes of {args.concurrency} slots, let go",
        "together. PlasmaArt: `Worker(platform, concurrency)`, a no-op provider",
        "that answers at once with one 1x1 PNG, a storage that discards it, no",
        "watermark; jobs per second from the first claim to the last finish",
        "(the jobs' `started_at` and `finished_at`). PgQueuer: a no-op async",
        f"entrypoint, `QueueManager.run(batch_size={args.concurrency})` over",
        "psycopg; from the first pick to the last completion in `pgqueuer_log`.",
    )
    return f"""{SECTION_HEADING}

Measured {when} by `benchmarks/generations.py`, from the repository root:

```sh
{command}
```

{submission_method}

{submission_table(submissions)}

{queue_method}

{queue_table(queue_comparison)}

All runs:

```text
{runs_detail(submissions, queue_comparison)}
```

The machine:

{machine_table(facts)}

### Profiles

{profile_text(servers, worker)}
{py_spy}### What stands in the way

{obstacles(submissions, queue_comparison, servers, worker, args)}
### How to read the figures

{HOW_TO_READ}
"""


def _heaviest(profile: Profile, count: int = 4) -> str:
    """The heaviest functions below the top-level ones (the service call, the
    claim, the runner), where a change would show."""
    rows = [row for row in own_functions(profile, 16) if row[1] < 0.35][:count]
    return ", ".join(
        f"`{short_name(key).split(':')[0].removeprefix('plasmaart/')}:{key[2]}` {share:.0%}"
        f" ({per_unit:.1f} calls)"
        for key, share, per_unit in rows
    )


def obstacles(
    submissions: Sequence[SubmissionComparison],
    queue_comparison: QueueComparison,
    servers: Mapping[str, Profile],
    worker: Profile,
    args: argparse.Namespace,
) -> str:
    parts = []
    for c in submissions:
        stalled = [load for load in c.plasmaart if load.requests == 0]
        if stalled:
            places: Counter[str] = Counter()
            for load in stalled:
                places.update(load.stuck_in)
            where = ", ".join(
                f"`{place}` {round(count / len(stalled), 1):g}"
                for place, count in places.most_common(8)
            )
            parts.append(
                prose(
                    f"**Stalls.** On {c.backend}, {len(stalled)} of PlasmaArt's",
                    f"{len(c.plasmaart)} runs answered no request at all: the server",
                    "stalled, its requests waiting on each other, not on the CPU. At",
                    "the end of such a run its threads were, by their innermost",
                    f"PlasmaArt frame (threads per run): {where or 'unknown'}.",
                )
            )
    missed = [c for c in submissions if not c.met]
    if missed and servers and servers["plasmaart"].wall_rate == 0:
        parts.append(
            prose(
                "**Submission** is below its aim on",
                " and ".join(f"{c.backend} at {c.connections} connections" for c in missed) + ";",
                f"the profiled PlasmaArt server stalled {PROFILE_ATTEMPTS} times in a",
                "row, so there is no profile of a submission's cost to show.",
            )
        )
    elif missed and servers:
        plasma, bare = servers["plasmaart"], servers["bare"]
        largest = sorted(BUCKETS, key=plasma.share, reverse=True)[:3]
        shares = ", ".join(f"{name} {plasma.share(name):.0%}" for name in largest)
        parts.append(
            prose(
                "**Submission** is below its aim on",
                " and ".join(f"{c.backend} at {c.connections} connections" for c in missed) + ".",
                f"A submission costs {plasma.per_unit_ms():.1f} ms of CPU in the server",
                f"against {bare.per_unit_ms():.1f} ms for the bare app's submission",
                f"({plasma.per_unit_ms() / max(bare.per_unit_ms(), 1e-9):.1f} times as much,",
                "under the profiler), and",
                f"{plasma.statements / max(plasma.units, 1):.0f} statements in",
                f"{plasma.transactions / max(plasma.units, 1):.1f} transactions against",
                f"{bare.statements / max(bare.units, 1):.0f} in",
                f"{bare.transactions / max(bare.units, 1):.0f}; on PostgreSQL each",
                "statement is also a round trip. The largest shares of its CPU time:",
                f"{shares}. PlasmaArt's heaviest functions (cumulative share, calls",
                f"per request): {_heaviest(plasma)}.",
                "The write step is already one short function under group commit on",
                "SQLite and fair use counts off the transaction: what would move the",
                "figure further is the CPU each request still spends above the",
                "database, in FastAPI's routing and dependencies, pydantic's",
                "validation and SQLAlchemy's read step (building, compiling and",
                "running the read transaction's statements), as the profile shows.",
            )
        )
    elif not missed:
        parts.append(prose("Submission meets its aim on every database measured."))
    if not queue_comparison.met:
        waits = _calls_from(worker.raw, "wait", "plasmaart/worker.py", "run")
        largest = sorted(BUCKETS, key=worker.share, reverse=True)[:3]
        shares = ", ".join(f"{name} {worker.share(name):.0%}" for name in largest)
        parts.append(
            prose(
                f"**The queue** is below its aim: {queue_comparison.plasmaart_jps:,.0f} jobs/s",
                f"against PgQueuer's {queue_comparison.pgqueuer_jps:,.0f}. A job costs",
                f"{worker.per_unit_ms():.1f} ms of CPU in the worker (under the profiler)",
                f"and {worker.statements / max(worker.units, 1):.0f} statements in",
                f"{worker.transactions / max(worker.units, 1):.0f} transactions, where",
                "PgQueuer spends one statement per batch of picks and one per batch of",
                f"completions. The largest shares of its CPU time: {shares}.",
                "PlasmaArt's heaviest functions (cumulative share, calls per job):",
                f"{_heaviest(worker)}.",
            )
        )
        parts.append(
            prose(
                "The figure is bound by CPU per job, not by waiting: with",
                f"{args.workers} workers of {args.concurrency} slots on",
                f"{os.cpu_count()} CPUs, at {worker.per_unit_ms():.0f} ms of worker CPU",
                "a job (less without the profiler) and PostgreSQL's own work per",
                "statement, the CPUs run out near the measured rate (the claim loop",
                "wakes when a job is queued or a slot frees, so it does not wait idle",
                f"while jobs are there; it waited {waits:,} times in the profiled worker).",
                "A worker already claims as many jobs as it has free slots in one",
                "transaction, reading the plans of all their wallets at once, and a job",
                "ends in one transaction (its status, outputs and capture). What would",
                "move it further: finishing many jobs in one transaction, with their",
                "captures made in one batch in the ledger, as PgQueuer completes its",
                "jobs in batches; and the queue's statements sent through psycopg",
                "directly as prepared statements rather than through SQLAlchemy, whose",
                "share of the CPU time is in the profile above. Both are",
                "`plasmaart/worker.py`, `plasmaart/generation/runner.py` and the ledger,",
                "not this benchmark's to change.",
            )
        )
    else:
        parts.append(prose("The queue meets its aim."))
    return "\n\n".join(parts) + "\n"


def summary_rows(
    submissions: Sequence[SubmissionComparison], c: QueueComparison
) -> list[SummaryRow]:
    rows = [
        SummaryRow(
            f"`POST /v1/generations`, {s.backend}, {s.connections} connections",
            f"{s.rps(s.plasmaart):,.0f} req/s, p99 {s.p99(s.plasmaart):.1f} ms",
            f"{s.rps(s.bare):,.0f} req/s, p99 {s.p99(s.bare):.1f} ms"
            " (bare: key lookup, guarded update, insert)",
            f"{s.ratio:.1%}",
            s.aim_text,
            s.met,
        )
        for s in submissions
    ]
    rows.append(
        SummaryRow(
            f"queue, PostgreSQL, {c.workers} workers x {c.concurrency}, no-op provider",
            f"{c.plasmaart_jps:,.0f} jobs/s",
            f"{c.pgqueuer_jps:,.0f} jobs/s (PgQueuer)",
            f"{c.ratio:.1%}",
            f"≥ {QUEUE_AIM:.0%}",
            c.met,
        )
    )
    return rows


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=positive(float), default=5.0, help="one submission run (default 5)"
    )
    parser.add_argument(
        "--runs", type=positive(int), default=5, help="submission runs per side (default 5)"
    )
    parser.add_argument(
        "--queue-runs", type=positive(int), default=3, help="queue runs per side (default 3)"
    )
    parser.add_argument(
        "--jobs", type=positive(int), default=1000, help="jobs per queue run (default 1000)"
    )
    parser.add_argument(
        "--workers", type=positive(int), default=4, help="worker processes (default 4)"
    )
    parser.add_argument(
        "--concurrency",
        type=positive(int),
        default=4,
        help="job slots per PlasmaArt worker, jobs per PgQueuer dequeue (default 4)",
    )
    parser.add_argument(
        "--users", type=positive(int), default=16, help="users the work is spread over (16)"
    )
    parser.add_argument(
        "--connections",
        type=counts,
        default=[16, 64],
        help="HTTP connection counts, each measured (default 16,64)",
    )
    parser.add_argument(
        "--load-generator",
        choices=("wrk", "httpx"),
        default="wrk",
        help="wrk (the default), or benchmarks/http_load.py, which on a small machine "
        "cannot keep up with the bare endpoint",
    )
    parser.add_argument(
        "--only",
        choices=("submission", "queue"),
        help="one measurement only (not with --write-docs)",
    )
    parser.add_argument("--sqlite-only", action="store_true", help="submission on SQLite only")
    parser.add_argument(
        "--profile", action="store_true", help=f"print the top {PROFILE_TOP} functions"
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="sample both live servers with py-spy during an extra SQLite submission run "
        "(the bench extra) and summarise the top functions",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"rewrite the '{SECTION_HEADING[3:]}' section of docs/performance.md",
    )
    args = parser.parse_args(argv)
    if args.write_docs and (args.only or args.sqlite_only):
        parser.error("--write-docs needs every measurement: drop --only and --sqlite-only")
    args.load_kind = args.load_generator
    if args.load_kind == "wrk" and args.only != "queue" and not shutil.which("wrk"):
        parser.error(
            "wrk is not installed (apt-get install wrk); --load-generator httpx works "
            "without it, but one Python process cannot keep up with the bare endpoint"
        )
    if args.py_spy and (args.only == "queue" or py_spy_binary() is None):
        parser.error(
            "--py-spy samples the submission servers: it needs the submission measured "
            "and py-spy installed (.venv/bin/pip install -e '.[bench]')"
        )
    if args.only != "submission" and importlib.util.find_spec("pgqueuer") is None:
        parser.error("PgQueuer is not installed: .venv/bin/pip install -e '.[bench]'")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    # Read before measuring: the work tree may move on while the benchmark runs.
    code = code_version()
    load_start = load_average()
    # fork starts workers in milliseconds, with the modules already imported.
    ctx = multiprocessing.get_context("fork")
    workdir = Path(tempfile.mkdtemp(prefix="plasmaart-bench-generations-"))
    context = Context(workdir, bench_catalog(workdir))
    submissions: list[SubmissionComparison] = []
    queue_comparison: QueueComparison | None = None
    servers: dict[str, Profile] = {}
    worker: Profile | None = None
    spies: dict[str, PySpyProfile] = {}
    load_description = "none"
    pg_version = "not used"
    try:
        if args.only != "queue":
            progress("submission on SQLite: profiling both servers")
            database, keys = prepare_submission_database(context, "SQLite", None, args.users)
            load = LoadGenerator(args.load_kind, workdir, keys, args.connections[0])
            load_description = load.description
            servers = profile_servers(
                context, database, replace(load, connections=PROFILE_CONNECTIONS), args.seconds
            )
            progress("submission on SQLite")
            submissions.extend(measure_submission(context, database, load, args))
            if args.py_spy:
                progress("submission on SQLite: py-spy on both live servers")
                spies = py_spy_servers(context, database, load, args.seconds)
        postgres_submission = args.only != "queue" and not args.sqlite_only
        if postgres_submission or args.only != "submission":
            with postgres_server(workdir) as server:
                pg_version = postgres_version(server)
                if postgres_submission:
                    progress("submission on PostgreSQL")
                    database, keys = prepare_submission_database(
                        context, "PostgreSQL", server, args.users
                    )
                    load = LoadGenerator(args.load_kind, workdir, keys, args.connections[0])
                    submissions.extend(measure_submission(context, database, load, args))
                if args.only != "submission":
                    queue_comparison, worker = measure_queue(ctx, context, server, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.profile:
        for name, profile in servers.items():
            print(profile.table(f"{name} server"))
            print()
        if worker is not None:
            print(worker.table("PlasmaArt worker 0"))
            print()
    for spy in spies.values():
        print(spy.table())
        print()
    if submissions:
        print(submission_table(submissions))
        print()
    if queue_comparison is not None:
        print(queue_table(queue_comparison))
        print()
    print(runs_detail(submissions, queue_comparison))
    if args.write_docs and queue_comparison is not None and worker is not None:
        section = render_section(
            submissions,
            queue_comparison,
            servers,
            worker,
            machine_facts(
                code,
                load_start,
                pg_version,
                packages=PACKAGES,
                extra=[("load generator", load_description)],
            ),
            command_line(),
            args,
            spies,
        )
        write_section(SECTION_HEADING, section, DOC_PATH)
        write_summary(
            "generations.py",
            summary_rows(submissions, queue_comparison),
            datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
        progress(f"wrote {DOC_PATH.relative_to(REPO)}")
    progress(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

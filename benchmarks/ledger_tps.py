"""Ledger throughput: hold + capture transactions per second, beside a baseline.

What it measures, for each client count (default 1 and 8), each ``--runs`` times,
PlasmaArt and its baseline interleaved so that both see the same machine noise:

* PlasmaArt on SQLite: client processes, each with its own ``Database`` and
  ``LedgerService`` on one migrated SQLite file and its own funded wallet, loop
  for ``--seconds``: one write transaction doing ``LedgerService.hold`` (8
  credits), then one doing ``LedgerService.capture`` of that hold. Both are
  full ledger operations: wallet lock, idempotency lookup, lots, hold rows,
  journal entries and the recorded result.
* Baseline, raw sqlite3: the same number of processes on another file with the
  same settings (WAL, ``synchronous=NORMAL``, ``busy_timeout``, explicit
  ``BEGIN IMMEDIATE``), each transaction one conditional ``UPDATE`` of a
  balance and one ``INSERT`` into a journal table.
* PlasmaArt on PostgreSQL: the same client loop against a throwaway server
  (``tests/support/pgserver.py``).
* Baseline, pgbench: the built-in ``tpcb-like`` script against another
  database of the same server.

The result is the median transactions per second of each side and the ratio of
the medians, checked against an aim (SQLite >= 25 % of raw sqlite3, PostgreSQL
>= 50 % of pgbench). Before measuring, one short single-client PlasmaArt run
on SQLite is profiled with cProfile; ``--profile`` prints its top functions.

Run from the repository root: ``.venv/bin/python benchmarks/ledger_tps.py``;
``--write-docs`` rewrites this benchmark's section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import itertools
import multiprocessing
import queue
import re
import secrets
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import event

from plasmaart.clock import SystemClock
from plasmaart.db.engine import create_database
from plasmaart.db.migrate import upgrade
from plasmaart.ledger.service import LedgerService

REPO = Path(__file__).resolve().parent.parent
# The throwaway PostgreSQL server lives with the tests; they are not a package
# that the virtualenv installs.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.pgserver import PgServer, pg_bindir  # noqa: E402

from benchmarks.common import (  # noqa: E402
    FuncKey,
    FuncStats,
    code_version,
    command_line,
    counts,
    create_pg_database,
    load_average,
    machine_facts,
    machine_table,
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

SECTION_HEADING = "## Ledger: hold + capture"

HOLD_CREDITS = 8
# Enough for any run: never the reason a hold is refused.
PURCHASE_CREDITS = 10**12
# A second, expiring lot that holds draw from first (burn order), so a hold
# reads two open lots as a real subscriber's does.
SUBSCRIPTION_CREDITS = 1_000_000
RAW_BALANCE = 10**15

SQLITE_AIM = 0.25
POSTGRES_AIM = 0.50

# Warm-up fills SQLAlchemy's statement cache and the connection pool before
# the clock starts, so the first compiles are not counted.
WARMUP_SECONDS = 0.5
SETUP_TIMEOUT = 180.0
FINISH_GRACE = 120.0
PROFILE_SECONDS = 3.0
PROFILE_TOP = 15


# -- clients ---------------------------------------------------------------


class Client(Protocol):
    """One benchmark client: runs in its own process, one step at a time."""

    # Transactions that one step commits.
    transactions_per_step: int

    def step(self) -> None: ...

    def close(self) -> None: ...


class PlasmaArtClient:
    """One hold and one capture of it, each in its own write transaction."""

    transactions_per_step = 2

    def __init__(self, url: str, wallet_id: str) -> None:
        self.db = create_database(url)
        self.ledger = LedgerService(SystemClock())
        self.wallet_id = wallet_id
        # Keys are unique across processes and runs: ledger_operations keeps them all.
        self.prefix = f"bench:{secrets.token_hex(6)}"
        self.counter = itertools.count()

    def hold(self) -> str:
        with self.db.write() as conn:
            result = self.ledger.hold(
                conn,
                self.wallet_id,
                HOLD_CREDITS,
                idempotency_key=f"{self.prefix}:hold:{next(self.counter)}",
            )
        return result.hold_id

    def capture(self, hold_id: str) -> None:
        with self.db.write() as conn:
            self.ledger.capture(
                conn,
                hold_id,
                HOLD_CREDITS,
                idempotency_key=f"{self.prefix}:capture:{next(self.counter)}",
            )

    def step(self) -> None:
        self.capture(self.hold())

    def close(self) -> None:
        self.db.dispose()


class RawSqliteClient:
    """The least a ledger write can be: a guarded debit and a journal row."""

    transactions_per_step = 1

    def __init__(self, path: str, account_id: int) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        sqlite_pragmas(self.conn)
        self.account_id = account_id

    def step(self) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            debited = conn.execute(
                "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
                (HOLD_CREDITS, self.account_id, HOLD_CREDITS),
            ).rowcount
            if debited != 1:
                raise RuntimeError(f"account {self.account_id} could not be debited")
            conn.execute(
                "INSERT INTO journal (account_id, amount) VALUES (?, ?)",
                (self.account_id, -HOLD_CREDITS),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()


def sqlite_pragmas(conn: sqlite3.Connection) -> None:
    # The settings of plasmaart.db.engine, so that both sides pay the same I/O.
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


# -- running clients in processes ------------------------------------------


@dataclass(frozen=True)
class Measurement:
    steps: int
    transactions: int
    seconds: float

    @property
    def tps(self) -> float:
        return self.transactions / self.seconds

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds


def _client_process(
    factory: Callable[[], Client],
    index: int,
    warmup: float,
    channel: Queue[tuple[Any, ...]],
    go: Queue[float],
) -> None:
    try:
        client = factory()
        try:
            warm_until = time.monotonic() + warmup
            while time.monotonic() < warm_until:
                client.step()
            channel.put(("ready", index))
            # CLOCK_MONOTONIC is system-wide on Linux: every client stops at
            # the parent's deadline.
            deadline = go.get(timeout=SETUP_TIMEOUT)
            steps = 0
            last = time.monotonic()
            while last < deadline:
                client.step()
                steps += 1
                last = time.monotonic()
            channel.put(("done", index, steps, steps * client.transactions_per_step, last))
        finally:
            client.close()
    except BaseException:
        channel.put(("error", index, traceback.format_exc()))


def _collect(
    channel: Queue[tuple[Any, ...]],
    processes: Sequence[BaseProcess],
    kind: str,
    timeout: float,
) -> list[tuple[Any, ...]]:
    """Wait for one ``kind`` message per process; any failure raises."""
    messages: list[tuple[Any, ...]] = []
    give_up = time.monotonic() + timeout
    while len(messages) < len(processes):
        try:
            message = channel.get(timeout=1.0)
        except queue.Empty:
            message = None
        if message is None:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process died (exit code {dead[0].exitcode})")
            if time.monotonic() > give_up:
                raise RuntimeError(f"clients not {kind} after {timeout:.0f} s")
            continue
        if message[0] == "error":
            raise RuntimeError(f"client {message[1]} failed:\n{message[2]}")
        if message[0] != kind:
            raise RuntimeError(f"unexpected message from a client: {message!r}")
        messages.append(message)
    return messages


def _stop(processes: Sequence[BaseProcess], *, finished: bool) -> None:
    # Clients that reported are exiting on their own; after a failure the
    # others would run on until their deadline or their setup timeout.
    for process in processes:
        process.join(timeout=10 if finished else 0)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


def run_clients(
    ctx: ForkContext, factories: Sequence[Callable[[], Client]], seconds: float
) -> Measurement:
    """Start one process per factory, warm up, then run them all for ``seconds``."""
    channel: Queue[tuple[Any, ...]] = ctx.Queue()
    go: Queue[float] = ctx.Queue()
    processes: list[BaseProcess] = []
    finished = False
    try:
        for index, factory in enumerate(factories):
            process = ctx.Process(
                target=_client_process,
                args=(factory, index, WARMUP_SECONDS, channel, go),
                daemon=True,
            )
            process.start()
            processes.append(process)
        _collect(channel, processes, "ready", SETUP_TIMEOUT)
        start = time.monotonic()
        for _ in processes:
            go.put(start + seconds)
        done = _collect(channel, processes, "done", seconds + FINISH_GRACE)
        finished = True
    finally:
        _stop(processes, finished=finished)
        channel.close()
        go.close()
    steps = sum(int(message[2]) for message in done)
    transactions = sum(int(message[3]) for message in done)
    elapsed = max(float(message[4]) for message in done) - start
    return Measurement(steps, transactions, elapsed)


# -- databases -------------------------------------------------------------


def prepare_plasmaart(url: str, clients: int) -> list[str]:
    """Migrate the database and fund one wallet per client."""
    db = create_database(url)
    try:
        upgrade(db)
        ledger = LedgerService(SystemClock())
        expires = SystemClock().now() + timedelta(days=365)
        wallets = []
        with db.write() as conn:
            for index in range(clients):
                wallet = ledger.open_wallet(conn, "user", f"usr_bench_{secrets.token_hex(4)}")
                ledger.grant(
                    conn,
                    wallet,
                    PURCHASE_CREDITS,
                    source="purchase",
                    idempotency_key=f"bench:fund:{wallet}:purchase:{index}",
                )
                ledger.grant(
                    conn,
                    wallet,
                    SUBSCRIPTION_CREDITS,
                    source="subscription",
                    expires_at=expires,
                    idempotency_key=f"bench:fund:{wallet}:subscription:{index}",
                )
                wallets.append(wallet)
        return wallets
    finally:
        # Nothing may stay open across the fork of the clients.
        db.dispose()


def prepare_raw_sqlite(path: Path, clients: int) -> list[int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        sqlite_pragmas(conn)
        conn.execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL"
            " CHECK (balance >= 0))"
        )
        conn.execute(
            "CREATE TABLE journal (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL"
            " REFERENCES accounts (id), amount INTEGER NOT NULL)"
        )
        accounts = list(range(1, clients + 1))
        conn.executemany(
            "INSERT INTO accounts (id, balance) VALUES (?, ?)",
            [(account, RAW_BALANCE) for account in accounts],
        )
        return accounts
    finally:
        conn.close()


def pgbench_binary() -> str:
    beside_initdb = pg_bindir() / "pgbench"
    if beside_initdb.exists():
        return str(beside_initdb)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench not found next to initdb nor on PATH")
    return found


def _pgbench(server: PgServer, database: str, *args: str, timeout: float) -> str:
    command = [
        pgbench_binary(),
        "-h",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-U",
        "postgres",
        *args,
        database,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def pgbench_init(server: PgServer, database: str, scale: int) -> None:
    create_pg_database(server, database)
    _pgbench(server, database, "-i", "-q", "-s", str(scale), timeout=600)


def pgbench_run(server: PgServer, database: str, clients: int, seconds: float) -> float:
    output = _pgbench(
        server,
        database,
        "-b",
        "tpcb-like",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(max(1, round(seconds))),
        "-n",
        timeout=seconds + FINISH_GRACE,
    )
    found = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no tps line in pgbench's output:\n{output}")
    return float(found.group(1))


# -- profile ---------------------------------------------------------------

BUCKETS = (
    "sqlite3 driver and SQLite itself",
    "SQLAlchemy: building statements",
    "SQLAlchemy: cache keys",
    "SQLAlchemy: compiling",
    "SQLAlchemy: executing, events, results, pool",
    "PlasmaArt code",
    "stdlib (json, hashlib, datetime, ...) and other",
)


def _bucket(key: FuncKey) -> str:
    path, _, name = key
    if path == "~":
        return BUCKETS[0] if "sqlite3" in name else ""
    if "/sqlalchemy/" in path:
        inner = path.rsplit("/sqlalchemy/", 1)[1]
        if inner in ("sql/compiler.py", "sql/crud.py"):
            return BUCKETS[3]
        if inner in ("sql/cache_key.py", "sql/traversals.py"):
            return BUCKETS[2]
        if inner.startswith("sql/"):
            return BUCKETS[1]
        return BUCKETS[4]
    if "/plasmaart/" in path:
        return BUCKETS[5]
    return BUCKETS[6]


@dataclass
class Profile:
    seconds: float
    pairs: int
    hold_statements: int
    capture_statements: int
    # Self time per bucket; builtins count for the bucket of their caller.
    buckets: dict[str, float]
    top_cumulative: list[tuple[FuncKey, FuncStats]]
    top_self: list[tuple[FuncKey, FuncStats]]
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.buckets.values())

    def share(self, bucket: str) -> float:
        return self.buckets.get(bucket, 0.0) / self.total if self.total else 0.0

    def table(self, rows: list[tuple[FuncKey, FuncStats]], title: str) -> str:
        per_pair = 1e6 / max(self.pairs, 1)
        lines = [
            f"{title} ({self.pairs} pairs in {self.seconds:.1f} s under cProfile)",
            f"{'calls':>9} {'self s':>8} {'cum s':>8} {'cum us/pair':>11}  function",
        ]
        for key, (_, calls, self_time, cumulative, _) in rows:
            lines.append(
                f"{calls:>9} {self_time:>8.3f} {cumulative:>8.3f}"
                f" {cumulative * per_pair:>11.0f}  {short_name(key)}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {self.share(name):.0%}" for name in BUCKETS)
        return (
            f"{self.pairs} hold + capture pairs in {self.seconds:.1f} s "
            f"({1e3 * self.seconds / max(self.pairs, 1):.2f} ms per pair under the profiler); "
            f"a hold sends {self.hold_statements} statements and a capture "
            f"{self.capture_statements} (BEGIN included, COMMIT apart); self time: {parts}"
        )


def _statements_of(client: PlasmaArtClient, action: Callable[[], Any]) -> tuple[int, Any]:
    sent = 0

    def count(*_: Any) -> None:
        nonlocal sent
        sent += 1

    event.listen(client.db.engine, "before_cursor_execute", count)
    try:
        result = action()
    finally:
        event.remove(client.db.engine, "before_cursor_execute", count)
    return sent, result


def profile_sqlite(workdir: Path, seconds: float) -> Profile:
    url = f"sqlite:///{workdir / 'profile.db'}"
    (wallet,) = prepare_plasmaart(url, 1)
    client = PlasmaArtClient(url, wallet)
    try:
        warm_until = time.monotonic() + WARMUP_SECONDS
        while time.monotonic() < warm_until:
            client.step()
        hold_statements, hold_id = _statements_of(client, client.hold)
        capture_statements, _ = _statements_of(client, lambda: client.capture(hold_id))
        profiler = cProfile.Profile()
        pairs = 0
        started = time.monotonic()
        deadline = started + seconds
        profiler.enable()
        while time.monotonic() < deadline:
            client.step()
            pairs += 1
        profiler.disable()
        elapsed = time.monotonic() - started
    finally:
        client.close()
    profiler.create_stats()
    raw = cast(dict[FuncKey, FuncStats], profiler.stats)
    buckets = self_time_by_bucket(raw, _bucket, BUCKETS[6])
    ordered = sorted(raw.items(), key=lambda item: item[1][3], reverse=True)
    by_self = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)
    return Profile(
        seconds=elapsed,
        pairs=pairs,
        hold_statements=hold_statements,
        capture_statements=capture_statements,
        buckets=buckets,
        top_cumulative=ordered[:PROFILE_TOP],
        top_self=by_self[:PROFILE_TOP],
    )


# -- measurements ----------------------------------------------------------


@dataclass
class Comparison:
    backend: str
    baseline_name: str
    clients: int
    aim: float
    plasmaart: list[Measurement] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    @property
    def plasmaart_tps(self) -> float:
        return statistics.median(m.tps for m in self.plasmaart)

    @property
    def plasmaart_pairs(self) -> float:
        return statistics.median(m.steps_per_second for m in self.plasmaart)

    @property
    def baseline_tps(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        return self.plasmaart_tps / self.baseline_tps

    @property
    def met(self) -> bool:
        return self.ratio >= self.aim


def _log_run(comparison: Comparison, run: int) -> None:
    plasma = comparison.plasmaart[-1]
    progress(
        f"  {comparison.backend} c={comparison.clients} run {run + 1}: "
        f"PlasmaArt {plasma.tps:8.1f} tx/s ({plasma.steps_per_second:.1f} pairs/s), "
        f"{comparison.baseline_name} {comparison.baseline[-1]:8.1f} tx/s"
    )


def measure_sqlite(
    ctx: ForkContext, workdir: Path, clients: int, runs: int, seconds: float
) -> Comparison:
    url = f"sqlite:///{workdir / f'plasmaart-c{clients}.db'}"
    wallets = prepare_plasmaart(url, clients)
    raw_path = workdir / f"raw-c{clients}.db"
    accounts = prepare_raw_sqlite(raw_path, clients)
    plasmaart = [functools.partial(PlasmaArtClient, url, wallet) for wallet in wallets]
    raw = [functools.partial(RawSqliteClient, str(raw_path), account) for account in accounts]
    comparison = Comparison("SQLite", "raw sqlite3", clients, SQLITE_AIM)
    for run in range(runs):
        comparison.plasmaart.append(run_clients(ctx, plasmaart, seconds))
        comparison.baseline.append(run_clients(ctx, raw, seconds).tps)
        _log_run(comparison, run)
    return comparison


def measure_postgres(
    ctx: ForkContext, server: PgServer, clients: int, runs: int, seconds: float
) -> Comparison:
    url = create_pg_database(server, f"plasmaart_bench_c{clients}")
    wallets = prepare_plasmaart(url, clients)
    scale = max(10, clients)
    pgbench_db = f"pgbench_s{scale}"
    pgbench_init(server, pgbench_db, scale)
    plasmaart = [functools.partial(PlasmaArtClient, url, wallet) for wallet in wallets]
    comparison = Comparison("PostgreSQL", "pgbench tpcb-like", clients, POSTGRES_AIM)
    for run in range(runs):
        comparison.plasmaart.append(run_clients(ctx, plasmaart, seconds))
        comparison.baseline.append(pgbench_run(server, pgbench_db, clients, seconds))
        _log_run(comparison, run)
    return comparison


# -- report ----------------------------------------------------------------


def results_table(comparisons: Sequence[Comparison]) -> str:
    lines = [
        "| measurement | clients | PlasmaArt (tx/s) | baseline (tx/s) | ratio | aim | met? |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.backend}: PlasmaArt hold/capture vs {c.baseline_name} | {c.clients} "
            f"| {c.plasmaart_tps:,.0f} | {c.baseline_tps:,.0f} | {c.ratio:.1%} "
            f"| ≥ {c.aim:.0%} | {'yes' if c.met else 'no'} |"
        )
    return "\n".join(lines)


def runs_detail(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        plasma = ", ".join(f"{m.tps:.0f}" for m in c.plasmaart)
        base = ", ".join(f"{tps:.0f}" for tps in c.baseline)
        lines.append(
            f"{c.backend}, {c.clients} client(s): PlasmaArt tx/s [{plasma}] "
            f"(median {c.plasmaart_pairs:.0f} pairs/s); {c.baseline_name} tx/s [{base}]"
        )
    return "\n".join(lines)


def profile_text(profile: Profile) -> str:
    per_pair = 1e3 * profile.seconds / max(profile.pairs, 1)
    largest = max(BUCKETS, key=profile.share)
    sqlalchemy_share = sum(profile.share(name) for name in BUCKETS if "SQLAlchemy" in name)
    top = ", ".join(f"`{short_name(key)}`" for key, _ in profile.top_self[:4])
    shares = "\n".join(f"| {name} | {profile.share(name):.0%} |" for name in BUCKETS)
    intro = prose(
        f"One PlasmaArt client on SQLite, profiled with cProfile for {profile.seconds:.1f} s",
        f"just before the measurements: {profile.pairs} hold + capture pairs,",
        f"{per_pair:.2f} ms per pair under the profiler (which slows Python code more",
        "than C code, so the Python shares below are somewhat inflated).",
        f"A hold sends {profile.hold_statements} SQL statements and a capture",
        f"{profile.capture_statements} (`BEGIN IMMEDIATE` included, the commit apart);",
        "a baseline transaction sends 4 (`BEGIN IMMEDIATE`, `UPDATE`, `INSERT`, `COMMIT`).",
        "Where the time went (self time; a builtin such as `isinstance` counts for",
        "the code that calls it):",
    )
    outro = prose(
        f"The largest share is {largest} ({profile.share(largest):.0%});",
        f"SQLAlchemy as a whole took {sqlalchemy_share:.0%} and SQLite itself",
        f"{profile.share(BUCKETS[0]):.0%}.",
        f"The functions with the most self time: {top}.",
        f"`--profile` prints the top {PROFILE_TOP} functions by cumulative and by self time.",
    )
    return f"{intro}\n\n| where | share |\n|---|---:|\n{shares}\n\n{outro}\n"


def obstacles(comparisons: Sequence[Comparison], profile: Profile) -> str:
    missed = [c for c in comparisons if not c.met]
    if not missed:
        return prose("Every ledger figure meets its aim.") + "\n"
    sqlalchemy_share = sum(profile.share(name) for name in BUCKETS if "SQLAlchemy" in name)
    per_pair = profile.hold_statements + profile.capture_statements
    growth = "; ".join(
        f"{backend}: "
        + ", ".join(
            f"{c.plasmaart_tps:,.0f} tx/s at {c.clients}"
            for c in comparisons
            if c.backend == backend
        )
        for backend in dict.fromkeys(c.backend for c in comparisons)
    )
    own = ", ".join(
        f"`{short_name(key).removeprefix('plasmaart/')}`"
        for key, _ in profile.top_cumulative
        if "/plasmaart/" in key[0]
    )
    return (
        prose(
            "**Hold + capture** is below its aim on",
            ", ".join(
                f"{c.backend} at {c.clients} client{'s' if c.clients != 1 else ''} ({c.ratio:.1%})"
                for c in missed
            )
            + ".",
            f"A pair sends {per_pair} statements where two baseline transactions send 8",
            "(raw sqlite3). The ledger's hot statements already go straight to the",
            "DBAPI cursor, written once per dialect (`Driver` in",
            "`plasmaart/ledger/repository.py`), their writes queued and sent together",
            "at the end of the operation (on PostgreSQL in one pipeline): in the",
            "profile SQLAlchemy (the transaction, the pool, events) took",
            f"{sqlalchemy_share:.0%} of the CPU time, SQLite itself",
            f"{profile.share(BUCKETS[0]):.0%} and PlasmaArt's own code",
            f"{profile.share(BUCKETS[5]):.0%}. What would move it further on SQLite:",
            "fewer pages written per transaction (each journal entry updates its",
            "table and its 3 indexes, and the holds, lots and idempotency records are",
            "keyed by text ids, wider in every B-tree page than integers), or",
            "committing several clients' holds and captures in one transaction, as",
            "group commit (`Database.run_write`) already does for submissions; on",
            "PostgreSQL, fewer round trips per transaction (the reads before the",
            "pipelined writes, the `BEGIN` and the `COMMIT`).",
            "PlasmaArt's functions among the heaviest by cumulative time:",
            f"{own or 'none in the top functions'}.",
        )
        + "\n\n"
        + prose(
            "More clients add little: on SQLite every writer waits for the one write",
            "lock, held from `BEGIN IMMEDIATE` to the commit with the Python work",
            "inside it; on PostgreSQL each transaction still makes several round",
            "trips (its reads, then its writes in one pipeline), and with more",
            "client processes than CPUs the clients, the server and pgbench share",
            f"the cores. PlasmaArt by client count: {growth}.",
        )
        + "\n"
    )


HOW_TO_READ = "\n\n".join(
    [
        prose(
            "Each ratio is the median of PlasmaArt's runs over the median of the",
            "baseline's runs, the two measured alternately in the same run on the same",
            "machine, so that machine noise (this may be a shared machine) hits both",
            "sides alike: compare ratios between runs and machines, not absolute figures.",
        ),
        prose(
            "The two sides do not do the same work, so 100 % is not the goal.",
            "One PlasmaArt transaction is one hold or one capture, each a full ledger",
            "operation, its hot statements sent through the DBAPI driver: it locks",
            "the wallet, looks its idempotency key up, reads the",
            "wallet's lots (hold) or the hold and its allocations (capture), updates",
            "lots and hold rows, writes a journal entry, stores the wallet's balances",
            "and records its result under its key; a capture also adds to the wallet's",
            "daily usage roll-up. A raw sqlite3 transaction is 2",
            "statements (a guarded `UPDATE` and an `INSERT`); a pgbench tpcb-like one is",
            "5 (3 `UPDATE`s, a `SELECT`, an `INSERT`). The aims (SQLite ≥ 25 % of raw",
            "sqlite3, PostgreSQL ≥ 50 % of pgbench) say how much the ledger's",
            "bookkeeping and the Python above the driver may cost.",
        ),
        prose(
            "Each client is a process with its own wallet, so clients never wait for",
            "each other's rows. On SQLite all writers still queue for the one database",
            "write lock, which a PlasmaArt transaction holds from `BEGIN IMMEDIATE` to",
            "its commit, Python work included. With more clients than cores, the",
            "clients, the PostgreSQL server and pgbench share the CPUs, so those rows",
            "measure the machine under contention, not parallel speed-up.",
        ),
        prose(
            "Durability is relaxed alike on both sides of each comparison: SQLite runs",
            "in WAL mode with `synchronous=NORMAL` (no fsync at commit) and the",
            "throwaway PostgreSQL server with `fsync=off` and `synchronous_commit=off`,",
            "so these figures measure CPU and round trips, not disks.",
        ),
    ]
)


def render_section(
    comparisons: Sequence[Comparison],
    profile: Profile,
    facts: Sequence[tuple[str, str]],
    command: str,
    seconds: float,
    runs: int,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    method = prose(
        f"Each measurement ran {runs} time{'s' if runs != 1 else ''} for {seconds:g} s,",
        "PlasmaArt and its",
        "baseline alternately; the table shows the medians in transactions per",
        "second (a hold and its capture are two transactions) and their ratio.",
    )
    return f"""{SECTION_HEADING}

Measured {when} by `benchmarks/ledger_tps.py`, from the repository root:

```sh
{command}
```

{method}

{results_table(comparisons)}

All runs:

```text
{runs_detail(comparisons)}
```

The machine:

{machine_table(facts)}

### Profile

{profile_text(profile)}
### What stands in the way

{obstacles(comparisons, profile)}
### How to read the ratios

{HOW_TO_READ}
"""


def summary_rows(comparisons: Sequence[Comparison]) -> list[SummaryRow]:
    return [
        SummaryRow(
            f"hold + capture, {c.backend}, {c.clients} client{'s' if c.clients != 1 else ''}",
            f"{c.plasmaart_tps:,.0f} tx/s",
            f"{c.baseline_tps:,.0f} tx/s ({c.baseline_name})",
            f"{c.ratio:.1%}",
            f"≥ {c.aim:.0%}",
            c.met,
        )
        for c in comparisons
    ]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- main ------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds",
        type=positive(float),
        default=5.0,
        help="length of one measurement; pgbench rounds it to whole seconds (default 5)",
    )
    parser.add_argument(
        "--runs",
        type=positive(int),
        default=5,
        help="measurements of each side per client count; the median is reported (default 5)",
    )
    parser.add_argument(
        "--clients",
        type=counts,
        default=[1, 8],
        help="comma-separated client process counts (default 1,8)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"print the top {PROFILE_TOP} functions of the SQLite profile",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"rewrite the '{SECTION_HEADING[3:]}' section of docs/performance.md",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    # Read before measuring: the work tree may move on while the benchmark runs.
    code = code_version()
    load_start = load_average()
    # fork starts clients in milliseconds, with the modules already imported.
    ctx = multiprocessing.get_context("fork")
    workdir = Path(tempfile.mkdtemp(prefix="plasmaart-bench-"))
    comparisons: list[Comparison] = []
    try:
        progress(f"profiling one SQLite client for {PROFILE_SECONDS:g} s")
        profile = profile_sqlite(workdir, PROFILE_SECONDS)
        if args.profile:
            print(profile.table(profile.top_cumulative, "Top functions by cumulative time"))
            print()
            print(profile.table(profile.top_self, "Top functions by self time"))
            print()
        progress(profile.summary())
        for clients in args.clients:
            progress(f"SQLite, {clients} client(s)")
            comparisons.append(measure_sqlite(ctx, workdir, clients, args.runs, args.seconds))
        with postgres_server(workdir) as server:
            pg_version = postgres_version(server)
            for clients in args.clients:
                progress(f"PostgreSQL, {clients} client(s)")
                comparisons.append(measure_postgres(ctx, server, clients, args.runs, args.seconds))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(results_table(comparisons))
    print()
    print(runs_detail(comparisons))
    if args.write_docs:
        section = render_section(
            comparisons,
            profile,
            machine_facts(code, load_start, pg_version),
            command_line(),
            args.seconds,
            args.runs,
        )
        write_section(SECTION_HEADING, section, DOC_PATH)
        write_summary("ledger_tps.py", summary_rows(comparisons), _now())
        progress(f"wrote {DOC_PATH.relative_to(REPO)}")
    progress(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

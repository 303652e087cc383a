"""The baselines PlasmaArt is measured beside: raw ``sqlite3`` (the least a
ledger write can be), ``pgbench`` and PgQueuer (the ``bench`` extra)."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import psycopg
from tests.support.pgserver import PgServer, pg_bindir

from benchmarks.harness import postgres
from benchmarks.harness.ledger import HOLD_CREDITS
from benchmarks.harness.processes import Channel, Go, Stop, reporting, wait_for_go

RAW_BALANCE = 10**15
# pgbench and a PgQueuer run give up after this long beyond their own.
GRACE = 120.0
SETUP_TIMEOUT = 120.0

# -- raw sqlite3 ------------------------------------------------------------------------


def sqlite_pragmas(conn: sqlite3.Connection) -> None:
    # The settings of plasmaart.db.engine, so that both sides pay the same I/O.
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


def raw_sqlite(path: Path | str, *, threads: bool = False) -> sqlite3.Connection:
    """A connection with PlasmaArt's settings, transactions opened explicitly."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=not threads)
    sqlite_pragmas(conn)
    return conn


def prepare_raw_sqlite(path: Path, accounts: int) -> list[int]:
    """A balances table with ``accounts`` funded rows and a journal; their ids."""
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
        ids = list(range(1, accounts + 1))
        conn.executemany(
            "INSERT INTO accounts (id, balance) VALUES (?, ?)",
            [(account, RAW_BALANCE) for account in ids],
        )
        return ids
    finally:
        conn.close()


class RawWriter:
    """Raw debits of one account on a connection of its own; a ledger
    benchmark's client (one transaction a step)."""

    transactions_per_step = 1

    def __init__(self, path: Path | str, account_id: int, *, threads: bool = False) -> None:
        self.conn = raw_sqlite(path, threads=threads)
        self.account_id = account_id

    def step(self) -> None:
        raw_debit(self.conn, self.account_id)

    def close(self) -> None:
        self.conn.close()


def raw_debit(conn: sqlite3.Connection, account_id: int) -> None:
    """One ``BEGIN IMMEDIATE`` transaction: a guarded ``UPDATE`` of the
    balance and an ``INSERT`` into the journal, then ``COMMIT``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        debited = conn.execute(
            "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
            (HOLD_CREDITS, account_id, HOLD_CREDITS),
        ).rowcount
        if debited != 1:
            raise RuntimeError(f"account {account_id} could not be debited")
        conn.execute(
            "INSERT INTO journal (account_id, amount) VALUES (?, ?)",
            (account_id, -HOLD_CREDITS),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- pgbench ----------------------------------------------------------------------------


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
    postgres.create(server, database)
    _pgbench(server, database, "-i", "-q", "-s", str(scale), timeout=600)


def pgbench_run(server: PgServer, database: str, clients: int, seconds: float) -> float:
    """``pgbench -b tpcb-like`` with ``clients`` for ``seconds``: its tps."""
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
        timeout=seconds + GRACE,
    )
    found = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no tps line in pgbench's output:\n{output}")
    return float(found.group(1))


# -- PgQueuer ---------------------------------------------------------------------------

PGQUEUER_ENTRYPOINT = "noop"


def pgqueuer_enqueue(dsn: str, jobs: int) -> None:
    """PgQueuer's tables in the database, and ``jobs`` jobs queued."""

    async def install_and_enqueue() -> None:
        from pgqueuer import PsycopgDriver, Queries

        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            queries = Queries(PsycopgDriver(conn))
            await queries.install()
            await queries.enqueue([PGQUEUER_ENTRYPOINT] * jobs, [b"bench"] * jobs, [0] * jobs)
        finally:
            await conn.close()

    asyncio.run(install_and_enqueue())


def pgqueuer_worker(
    index: int,
    channel: Channel,
    go: Go,
    stop: Stop,
    dsn: str,
    batch_size: int,
) -> None:
    """A worker process (``processes.crew``): PgQueuer's ``QueueManager``
    with a no-op async entrypoint, dequeuing ``batch_size`` jobs at a time."""

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
            await loop.run_in_executor(None, wait_for_go, go, SETUP_TIMEOUT)
            running = asyncio.create_task(manager.run(batch_size=batch_size))
            await loop.run_in_executor(None, stop.wait)
            manager.shutdown.set()
            await asyncio.wait_for(running, timeout=60)
        finally:
            await conn.close()

    with reporting(channel, index):
        asyncio.run(main())
        channel.put(("done", index))

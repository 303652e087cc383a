"""The two HTTP servers of ``benchmarks/generations.py``, each run in its own process.

* ``plasmaart``: the real app, as ``plasmaart serve --no-worker`` builds it
  (``create_app(bootstrap(settings), embedded_worker=False)``), with the
  default settings but the database, folder and catalog it is given.
* ``bare``: the least each measured route can be (issue 14's baseline), a
  FastAPI app on the database driver itself (``sqlite3``, or psycopg for
  PostgreSQL; one connection per thread), on the same migrated database. Each
  request looks its API key up by its hash (``api_keys`` joined to the
  owner's ``wallets`` row), then ``GET /balance`` (for ``GET /v1/balance``)
  reads the wallet's two balances, and ``POST /generations`` (for
  ``POST /v1/generations``) validates a pydantic body and, in one
  ``BEGIN IMMEDIATE`` transaction on SQLite (one transaction on PostgreSQL),
  does a guarded ``UPDATE wallets SET available = available - 1, held = held +
  1 ... WHERE available >= 1`` and the ``INSERT`` of the job into
  ``generations``, answering 201 with JSON.

Both run under uvicorn in one process with the same options. ``worker`` runs
a ``Worker`` as ``plasmaart worker`` does. ``--noop-provider`` gives the real
app and the worker a provider that answers at once with a 1x1 PNG and a storage
that discards (the platform's own cost of a job, without the sandbox's
rendering); ``--embedded-worker`` runs the worker inside the real app, as
``plasmaart serve`` does; ``--store-outputs`` keeps the media folder's storage
with the no-op provider, and ``--concurrency`` sets the worker's job slots. ``--profile-out``
profiles every thread of the server (the event loop and the threads that run
sync endpoints) with cProfile on thread CPU time, and writes the merged stats
there at shutdown, with the SQL statements and transactions the server sent.

Run by ``benchmarks/generations.py``:
``python benchmarks/generation_servers.py {plasmaart,bare} --database-url URL --port N ...``
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

# Run as a script: the repository goes on the path for `benchmarks.harness`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness.fakes import DiscardStorage, NoopProvider
from benchmarks.harness.profiles import Counted, SqlCounter, profiling
from plasmaart import logs
from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings, load_settings
from plasmaart.ids import new_id
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from plasmaart.worker import Worker

# The same for both servers: what a plain install of PlasmaArt runs on
# (uvicorn without uvloop and httptools), whatever else is installed here.
UVICORN_OPTIONS: dict[str, Any] = {
    "host": "127.0.0.1",
    "loop": "asyncio",
    "http": "h11",
    "log_config": None,
    "timeout_graceful_shutdown": 5,
}

# -- the bare app: FastAPI and the database driver, nothing else ----------------

# The API key's owner and wallet, by the key's hash (the key's own index).
KEY_LOOKUP = (
    "SELECT api_keys.user_id, wallets.id FROM api_keys"
    " JOIN wallets ON wallets.owner_kind = 'user' AND wallets.owner_id = api_keys.user_id"
    " WHERE api_keys.secret_hash = ? AND api_keys.revoked_at IS NULL"
)
WALLET_READ = "SELECT available, held FROM wallets WHERE id = ?"
# One credit from available to held, only if there is one: the guarded update.
DEBIT = (
    "UPDATE wallets SET available = available - 1, held = held + 1"
    " WHERE id = ? AND available >= 1 RETURNING available"
)
JOB_INSERT = (
    "INSERT INTO generations (id, user_id, wallet_id, model, kind, prompt, num_outputs,"
    " params, sandbox, credits_per_output, credits_held, credits_charged, hold_id,"
    " balance_after, status, queue_class, video, license, watermark, enqueued_at,"
    " virtual_start, provider, fencing_token, attempts, cancel_requested, created_at)"
    " VALUES (?, ?, ?, ?, 'text-to-image', ?, 1, ?, ?, 1, 1, 0, ?, ?, 'queued', 'priority',"
    " ?, 'commercial', ?, ?, ?, 'sandbox', 0, 0, ?, ?)"
)
# Any hold of the database: the job row's hold_id must name one (a foreign
# key); the bare app keeps no holds of its own.
ANY_HOLD = "SELECT id FROM holds ORDER BY id LIMIT 1"


class RawCounts:
    """Statements and transactions the bare app sent (the profile's counts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statements = 0
        self.transactions = 0

    def add(self, statements: int, transactions: int) -> None:
        with self._lock:
            self.statements += statements
            self.transactions += transactions


class RawDatabase:
    """One connection of the driver itself (``sqlite3`` or psycopg) per thread
    that asks: FastAPI runs sync endpoints in a pool of threads.

    SQLite with PlasmaArt's settings (WAL, ``synchronous = NORMAL``, its busy
    timeout, foreign keys on), transactions opened with ``BEGIN IMMEDIATE``;
    PostgreSQL at READ COMMITTED, one transaction per write."""

    def __init__(self, url: str, busy_timeout_ms: int, counts: RawCounts | None) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.is_sqlite = self.url.startswith("sqlite")
        self.busy_timeout_ms = busy_timeout_ms
        self.counts = counts
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        conn: Any
        if self.is_sqlite:
            path = self.url.split(":///", 1)[1]
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        else:
            conn = psycopg.connect(self.url, autocommit=True)
        with self._lock:
            self._all.append(conn)
        return conn

    def connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def sql(self, statement: str) -> str:
        return statement if self.is_sqlite else statement.replace("?", "%s")

    def fetch_one(self, statement: str, params: Sequence[Any]) -> Any:
        """One row of a statement outside any explicit transaction."""
        row = self.connection().execute(self.sql(statement), params).fetchone()
        if self.counts is not None:
            self.counts.add(1, 0)
        return row

    def timestamp(self, moment: datetime) -> Any:
        """As SQLAlchemy stores a ``DateTime(timezone=True)``: text on SQLite."""
        if self.is_sqlite:
            return moment.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        return moment

    def debit_and_insert(self, wallet_id: str, job: Sequence[Any]) -> int | None:
        """The guarded update and the job's INSERT in one transaction; the
        balance after it, or None (and nothing written) when none was left."""
        conn = self.connection()
        if self.is_sqlite:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(DEBIT, (wallet_id,)).fetchone()
                if row is not None:
                    conn.execute(JOB_INSERT, (*job[:8], row[0], *job[8:]))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT" if row is not None else "ROLLBACK")
        else:
            with conn.transaction():
                row = conn.execute(self.sql(DEBIT), (wallet_id,)).fetchone()
                if row is not None:
                    conn.execute(self.sql(JOB_INSERT), (*job[:8], row[0], *job[8:]))
        if self.counts is not None:
            # As in the real app's counts: on SQLite, `BEGIN IMMEDIATE` is a statement.
            self.counts.add(1 + (row is not None) + self.is_sqlite, 1)
        return None if row is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            with suppress(Exception):
                conn.close()


class SubmissionIn(BaseModel):
    model: str = Field(min_length=1, max_length=100)
    prompt: str = Field(max_length=20_000)
    params: dict[str, Any] = Field(default_factory=dict)


def _bearer(authorization: str | None) -> str:
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise HTTPException(401, "an API key is needed")
    return hashlib.sha256(secret.encode()).hexdigest()


def create_bare_app(db: RawDatabase) -> FastAPI:
    """The least each measured route can be (issue 14's baseline): the API key
    looked up by its hash, then either the wallet read (``GET /balance``) or,
    in one write transaction, a guarded ``UPDATE`` of the wallet and the
    ``INSERT`` of the job (``POST /generations``)."""
    app = FastAPI(title="bare")
    hold_id = db.fetch_one(ANY_HOLD, ())
    if hold_id is None:
        raise RuntimeError("the bare app needs one hold in the database (a job's foreign key)")

    def owner(authorization: str | None) -> tuple[str, str]:
        found = db.fetch_one(KEY_LOOKUP, (_bearer(authorization),))
        if found is None:
            raise HTTPException(401, "unknown API key")
        return str(found[0]), str(found[1])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/generations", status_code=201)
    def submit(
        body: SubmissionIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        user_id, wallet_id = owner(authorization)
        generation_id = new_id("gen")
        now = datetime.now(UTC)
        at = db.timestamp(now)
        sandbox = body.params.get("sandbox", {})
        job = (
            generation_id,
            user_id,
            wallet_id,
            body.model,
            body.prompt,
            json.dumps(body.params, sort_keys=True),
            json.dumps(sandbox, sort_keys=True),
            hold_id[0],
            # the balance after the debit goes here
            False,
            False,
            at,
            at,
            False,
            at,
        )
        balance_after = db.debit_and_insert(wallet_id, job)
        if balance_after is None:
            raise HTTPException(402, "not enough credits")
        return {
            "id": generation_id,
            "model": body.model,
            "status": "queued",
            "credits_held": 1,
            "balance_after": balance_after,
            "created_at": now.isoformat(),
        }

    @app.get("/balance")
    def read_balance(authorization: Annotated[str | None, Header()] = None) -> dict[str, int]:
        _user_id, wallet_id = owner(authorization)
        row = db.fetch_one(WALLET_READ, (wallet_id,))
        return {"available": int(row[0]), "held": int(row[1])}

    return app


# -- serving ------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        database_url=args.database_url,
        var_dir=args.var_dir,
        catalog_file=args.catalog_file,
        embedded_worker=False,
        auto_migrate=False,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("app", choices=("plasmaart", "bare", "worker"))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--var-dir", type=Path, required=True)
    parser.add_argument("--catalog-file", type=Path)
    parser.add_argument("--profile-out", type=Path)
    parser.add_argument(
        "--noop-provider",
        action="store_true",
        help="plasmaart and worker: a provider that answers at once, a storage that discards",
    )
    parser.add_argument(
        "--embedded-worker", action="store_true", help="plasmaart: run the worker in the server"
    )
    parser.add_argument(
        "--store-outputs",
        action="store_true",
        help="with --noop-provider: outputs stored in the media folder, not discarded",
    )
    parser.add_argument(
        "--concurrency", type=int, help="worker: its job slots (default: the setting's)"
    )
    return parser.parse_args(argv)


def _platform(settings: Settings, noop: bool, store_outputs: bool = False) -> Platform:
    platform = bootstrap(settings, migrate=False)
    if noop:
        platform.provider = NoopProvider()
        if not store_outputs:
            platform.storage = DiscardStorage()
    return platform


def run_worker(
    settings: Settings, noop: bool, store_outputs: bool = False, concurrency: int | None = None
) -> int:
    """``plasmaart worker`` with this provider and storage, until SIGINT or SIGTERM."""
    logs.configure(settings.log_level, json_lines=settings.log_format, buffered=True)
    platform = _platform(settings, noop, store_outputs)
    try:
        Worker(platform, concurrency).run_until_signalled()
    finally:
        platform.close()
        logs.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The benchmark asks where the threads are when a run answered nothing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    settings = _settings(args)
    if args.app == "worker":
        return run_worker(settings, args.noop_provider, args.store_outputs, args.concurrency)
    counter: Counted | None = None
    if args.app == "plasmaart":
        # As `plasmaart serve` does: its JSON log lines (one access line per
        # request at the default INFO level, through the log queue) are part
        # of what it costs.
        logs.configure(settings.log_level, json_lines=settings.log_format, buffered=True)
        platform: Platform | None = _platform(settings, args.noop_provider)
        assert platform is not None
        app = create_app(platform, embedded_worker=args.embedded_worker)
        if args.profile_out:
            counter = SqlCounter(platform.db.engine)
        log_level = settings.log_level.lower()
        raw = None
    else:
        platform = None
        raw_counts = RawCounts() if args.profile_out else None
        raw = RawDatabase(settings.database_url, settings.sqlite_busy_timeout_ms, raw_counts)
        counter = raw_counts
        app = create_bare_app(raw)
        log_level = "warning"
    try:
        with profiling(args.profile_out, counter):
            uvicorn.run(app, port=args.port, log_level=log_level, **UVICORN_OPTIONS)
    finally:
        if platform is not None:
            platform.close()
        if raw is not None:
            raw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

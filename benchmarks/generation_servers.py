"""The two HTTP servers of ``benchmarks/generations.py``, each run in its own process.

* ``plasmaart``: the real app, as ``plasmaart serve --no-worker`` builds it
  (``create_app(bootstrap(settings), embedded_worker=False)``), with the
  default settings but the database, folder and catalog it is given.
* ``bare``: the least each measured endpoint can be, on FastAPI with a
  ``plasmaart.db.engine.Database`` on the same database with the same engine
  settings: ``POST /insert`` (for submissions) validates a pydantic body and
  does one INSERT in one write transaction, answering 201 with JSON;
  ``GET /balance`` (for ``GET /v1/balance``) does one primary-key read of a
  wallet row in one read transaction, the wallets taken in turn, answering 200
  with its two balances.

Both run under uvicorn in one process with the same options. ``worker`` runs
a ``Worker`` as ``plasmaart worker`` does. ``--noop-provider`` gives the real
app and the worker a provider that answers at once with a 1x1 PNG and a storage
that discards (the platform's own cost of a job, without the sandbox's
rendering); ``--embedded-worker`` runs the worker inside the real app, as
``plasmaart serve`` does. ``--profile-out``
profiles every thread of the server (the event loop and the threads that run
sync endpoints) with cProfile on thread CPU time, and writes the merged stats
there at shutdown, with the SQL statements and transactions the server sent.

Run by ``benchmarks/generations.py``:
``python benchmarks/generation_servers.py {plasmaart,bare} --database-url URL --port N ...``
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import hashlib
import io
import itertools
import json
import pstats
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel, Field
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    event,
    insert,
    select,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from plasmaart import logs  # noqa: E402
from plasmaart.bootstrap import Platform, bootstrap  # noqa: E402
from plasmaart.catalog import ModelSpec  # noqa: E402
from plasmaart.config import Settings, load_settings  # noqa: E402
from plasmaart.db.engine import Database, create_database  # noqa: E402
from plasmaart.db.tables import wallets  # noqa: E402
from plasmaart.generation.providers.base import (  # noqa: E402
    ProviderOutput,
    ProviderRequest,
    ProviderStatus,
)
from plasmaart.ids import new_id  # noqa: E402
from plasmaart.media.storage import (  # noqa: E402
    NO_METADATA,
    ByteStream,
    StorageNotFound,
    StoredObject,
)
from plasmaart.web.app import create_app  # noqa: E402
from plasmaart.worker import Worker  # noqa: E402

# The bare endpoint's one table, in the same database as PlasmaArt's.
bare_metadata = MetaData()
bench_inserts = Table(
    "bench_inserts",
    bare_metadata,
    Column("id", String(40), primary_key=True),
    Column("model", String(100), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# The same for both servers: what a plain install of PlasmaArt runs on
# (uvicorn without uvloop and httptools), whatever else is installed here.
UVICORN_OPTIONS: dict[str, Any] = {
    "host": "127.0.0.1",
    "loop": "asyncio",
    "http": "h11",
    "log_config": None,
    "timeout_graceful_shutdown": 5,
}


def create_bare_table(url: str) -> None:
    db = create_database(url)
    try:
        bare_metadata.create_all(db.engine)
    finally:
        db.dispose()


class SubmissionIn(BaseModel):
    model: str = Field(min_length=1, max_length=100)
    prompt: str = Field(max_length=20_000)
    params: dict[str, Any] = Field(default_factory=dict)


def create_bare_app(db: Database) -> FastAPI:
    app = FastAPI(title="bare")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/insert", status_code=201)
    def insert_row(body: SubmissionIn) -> dict[str, Any]:
        row = {
            "id": new_id("gen"),
            "model": body.model,
            "prompt": body.prompt,
            "params": json.dumps(body.params, sort_keys=True),
            "created_at": datetime.now(UTC),
        }
        with db.write() as conn:
            conn.execute(insert(bench_inserts).values(**row))
        return {**row, "status": "queued"}

    # The wallets are read once here, not per request: each request is the
    # one primary-key read a balance needs at the least.
    with db.read() as conn:
        wallet_ids = list(conn.execute(select(wallets.c.id).order_by(wallets.c.id)).scalars())
    turns = itertools.cycle(wallet_ids or [""])

    @app.get("/balance")
    def read_balance() -> dict[str, int]:
        with db.read() as conn:
            row = conn.execute(
                select(wallets.c.available, wallets.c.held).where(wallets.c.id == next(turns))
            ).one()
        return {"available": int(row.available), "held": int(row.held)}

    return app


# -- a provider and a storage that cost nothing -------------------------------


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_PNG = _tiny_png()


class NoopProvider:
    """Answers at once: every request has succeeded with one 1x1 PNG."""

    name = "noop"

    def submit(self, request: ProviderRequest) -> str:
        return f"noop-{request.generation_id}"

    def status(self, model: ModelSpec, request_id: str) -> ProviderStatus:  # noqa: ARG002
        output = ProviderOutput("image/png", data=TINY_PNG, width=1, height=1)
        return ProviderStatus("succeeded", outputs=(output,))

    def cancel(self, model: ModelSpec, request_id: str) -> bool:  # noqa: ARG002
        return False

    def download(self, output: ProviderOutput) -> bytes:
        return output.data or b""


class DiscardStorage:
    """Takes every object and keeps none: the queue, not media I/O, is measured."""

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] = NO_METADATA,
    ) -> StoredObject:
        return StoredObject(
            key, len(data), content_type, hashlib.sha256(data).hexdigest(), dict(metadata)
        )

    def get(self, key: str) -> bytes:
        raise StorageNotFound(key)

    def open_stream(self, key: str, chunk_size: int = 0) -> ByteStream:  # noqa: ARG002
        raise StorageNotFound(key)

    def stat(self, key: str) -> StoredObject:
        raise StorageNotFound(key)

    def size(self, key: str) -> int:
        raise StorageNotFound(key)

    def exists(self, key: str) -> bool:  # noqa: ARG002
        return False

    def delete(self, key: str) -> None:
        """Nothing is kept, so nothing to delete."""


# -- profiling every thread ---------------------------------------------------


class _Snapshot:
    """What ``pstats.Stats`` loads: a profile's completed calls so far."""

    def __init__(self, profile: cProfile.Profile) -> None:
        profile.snapshot_stats()
        self.stats = profile.stats  # type: ignore[attr-defined]

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
        threading.setprofile(None)  # type: ignore[arg-type]
        own = _Snapshot(self._own)
        own_seconds = sum(entry[2] for entry in own.stats.values())
        merged = pstats.Stats(own)  # type: ignore[arg-type]
        with self._lock:
            profiles = list(self._threads)
        for profile in profiles:
            merged.add(_Snapshot(profile))  # type: ignore[arg-type]
        return merged, own_seconds


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


def write_profile(
    path: Path, profile: AllThreadsProfile, counter: SqlCounter, seconds: float
) -> None:
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
    return parser.parse_args(argv)


def _platform(settings: Settings, noop: bool) -> Platform:
    platform = bootstrap(settings, migrate=False)
    if noop:
        platform.provider = NoopProvider()
        platform.storage = DiscardStorage()
    return platform


def run_worker(settings: Settings, noop: bool) -> int:
    """``plasmaart worker`` with this provider and storage, until SIGINT or SIGTERM."""
    logs.configure(settings.log_level, json_lines=settings.log_format, buffered=True)
    platform = _platform(settings, noop)
    try:
        Worker(platform).run_until_signalled()
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
        return run_worker(settings, args.noop_provider)
    if args.app == "plasmaart":
        # As `plasmaart serve` does: its JSON log lines (one access line per
        # request at the default INFO level, through the log queue) are part
        # of what it costs.
        logs.configure(settings.log_level, json_lines=settings.log_format, buffered=True)
        platform = _platform(settings, args.noop_provider)
        db = platform.db
        app = create_app(platform, embedded_worker=args.embedded_worker)
        log_level = settings.log_level.lower()
    else:
        platform = None
        db = create_database(
            settings.database_url,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pool_size=settings.db_pool_size,
        )
        app = create_bare_app(db)
        log_level = "warning"
    counter = SqlCounter(db.engine) if args.profile_out else None
    profile = AllThreadsProfile() if args.profile_out else None
    started = time.monotonic()
    if profile is not None:
        profile.start()
    try:
        uvicorn.run(app, port=args.port, log_level=log_level, **UVICORN_OPTIONS)
    finally:
        if profile is not None and counter is not None:
            write_profile(args.profile_out, profile, counter, time.monotonic() - started)
        if platform is not None:
            platform.close()
        else:
            db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine creation and the two kinds of transaction: read and write.

SQLite runs in WAL mode with a busy timeout, and every write transaction
starts with ``BEGIN IMMEDIATE`` so that two writers queue for the lock at the
start instead of failing half-way with "database is locked". PostgreSQL runs
through psycopg 3 at READ COMMITTED; writers serialise on row locks taken in
one order (wallet, then its lots).

Services never commit: whoever opens ``Database.write()`` owns the transaction.
``Database.run_write(fn)`` runs ``fn(conn)`` in a write transaction; on SQLite
with group commit (``PLASMAART_GROUP_COMMIT``, on by default) one writer thread
runs the functions of concurrent callers in one transaction, each in its own
savepoint (``plasmaart.db.group_commit``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from plasmaart.db.disk_full import WATCH as STORAGE_WATCH
from plasmaart.db.group_commit import DEFAULT_BATCH_LIMIT, GroupCommitWriter
from plasmaart.db.peers import PeerChannel, peers_folder

T = TypeVar("T")

_BEGIN_OPTION = "plasmaart_begin"
_AFTER_COMMIT = "plasmaart_after_commit"
_INVALIDATE = "plasmaart_invalidate"
# The NOTIFY channel of cache invalidations (caches.py), on PostgreSQL.
CACHE_CHANNEL = "plasmaart_cache"
log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here, not SQLAlchemy's default psycopg2."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that the
        # "begin" hook below decides how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` after the transaction of ``conn`` commits (never if it rolls back)."""
    conn.info.setdefault(_AFTER_COMMIT, []).append(callback)


def invalidate(conn: Connection, *scopes: str) -> None:
    """Say that the transaction of ``conn`` changes what the per-process
    caches keep under ``scopes`` (``user:<id>``, ``wallet:<id>``, ``catalog``,
    ``*``...; see caches.py). Once it commits, this process drops those entries;
    on PostgreSQL a NOTIFY sent in the transaction tells every other process."""
    conn.info.setdefault(_INVALIDATE, set()).update(scopes)


def _invalidation_payload(origin: str, scopes: set[str]) -> str:
    payload = json.dumps({"o": origin, "s": sorted(scopes)}, separators=(",", ":"))
    if len(payload.encode()) > 7900:  # PostgreSQL refuses a NOTIFY of 8000 bytes
        payload = json.dumps({"o": origin, "s": ["*"]}, separators=(",", ":"))
    return payload


def pending_invalidations(conn: Connection) -> frozenset[str]:
    """The scopes the transaction of ``conn`` has invalidated so far: a cache
    must not answer for them inside it (it still holds what the transaction
    is changing)."""
    return frozenset(conn.info.get(_INVALIDATE, ()))


def _take_after_commit(conn: Connection) -> list[Callable[[], None]]:
    """The callbacks registered on ``conn`` so far, taken out of it."""
    callbacks: list[Callable[[], None]] = conn.info.pop(_AFTER_COMMIT, [])
    return callbacks


def _run_after_commit(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            # The transaction is committed; a failed side effect must not
            # turn it into an error for the caller.
            log.exception("after-commit callback failed")


class Database:
    """One engine and the transactions the rest of the code runs in.

    ``group_commit`` (SQLite only): ``run_write`` goes through one writer
    thread that commits up to ``group_commit_batch`` concurrent writes at
    once; a caller waits at most ``write_timeout_s`` for its answer.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        group_commit: bool = True,
        group_commit_batch: int = DEFAULT_BATCH_LIMIT,
        write_timeout_s: float = 90.0,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        # Called after a commit with the scopes its transaction invalidated
        # (the process's CacheHub), before the after-commit callbacks.
        self.invalidation_listeners: list[Callable[[frozenset[str]], None]] = []
        # Names this process in its invalidation NOTIFYs (set by CacheHub).
        self.cache_origin = ""
        # SQLite: the other processes of the file, for events and cache
        # invalidations (db/peers.py); PostgreSQL uses LISTEN/NOTIFY.
        database = engine.url.database if self.is_sqlite else None
        self.peers: PeerChannel | None = (
            PeerChannel(peers_folder(database)) if database and database != ":memory:" else None
        )
        if database and database != ":memory:":
            STORAGE_WATCH.watch_folder("database", Path(database).parent)
        self._group: GroupCommitWriter | None = None
        if group_commit and self.is_sqlite:
            self._group = GroupCommitWriter(
                self._writer,
                take_callbacks=self._take_after_commit,
                run_callbacks=_run_after_commit,
                batch_limit=group_commit_batch,
                timeout_s=write_timeout_s,
            )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def group_commit(self) -> GroupCommitWriter | None:
        """The group-commit writer, when ``run_write`` goes through one."""
        return self._group

    def _take_after_commit(self, conn: Connection) -> list[Callable[[], None]]:
        """What must run once the transaction (or, with group commit, the
        write) of ``conn`` commits, taken out of it: first the eviction of the
        cache scopes it invalidated, then its ``after_commit`` callbacks."""
        callbacks = _take_after_commit(conn)
        invalidated = frozenset(conn.info.pop(_INVALIDATE, ()))
        if invalidated:
            callbacks.insert(0, partial(self._evict, invalidated))
        return callbacks

    def _evict(self, scopes: frozenset[str]) -> None:
        for listener in self.invalidation_listeners:
            try:
                listener(scopes)
            except Exception:
                log.exception("cache invalidation failed")

    def run_write(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` in a write transaction, committed before this returns.

        With group commit, ``fn`` runs in the writer thread inside a savepoint
        of a transaction shared with other callers' functions: it must do its
        database work through ``conn`` only, and not wait on other threads.
        Its ``after_commit`` callbacks run once, after the commit, and never if
        ``fn`` raised; its exception is raised here. Without group commit
        (the setting off, or PostgreSQL) it is ``with write() as conn: fn(conn)``.
        """
        if self._group is None:
            with self.write() as conn:
                return fn(conn)
        # A full disk: StorageFull (db/disk_full.py), nothing written.
        with STORAGE_WATCH.translated("database"):
            return self._group.run(fn)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any error.

        Callbacks registered with ``after_commit(conn, fn)`` run once the commit
        succeeded, and are dropped on rollback (events, notifications). Scopes
        named with ``invalidate(conn, ...)`` are evicted from the caches first.
        """
        # A full disk: StorageFull (db/disk_full.py), nothing written.
        with STORAGE_WATCH.translated("database"), self._writer.connect() as conn:
            # conn.info outlives this checkout (it belongs to the pooled
            # connection), so the callbacks are always taken out of it.
            try:
                with conn.begin():
                    yield conn
                    scopes = conn.info.get(_INVALIDATE)
                    if scopes and not self.is_sqlite:
                        payload = _invalidation_payload(self.cache_origin, scopes)
                        conn.execute(select(func.pg_notify(CACHE_CHANNEL, payload)))
            finally:
                callbacks = self._take_after_commit(conn)
        _run_after_commit(callbacks)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot on both databases)."""
        with self.engine.connect() as conn, conn.begin() as tx:
            yield conn
            tx.rollback()

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction whose statements all see one snapshot.

        ``read()`` is one on SQLite (WAL), but on PostgreSQL at READ
        COMMITTED each statement sees the commits made before it; readers
        that compare several statements' results (``ledger verify``, the
        journal's running sums of /metrics) need REPEATABLE READ there."""
        if self.is_sqlite:
            with self.read() as conn:
                yield conn
            return
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with self.engine.connect().execution_options(**options) as conn, conn.begin() as tx:
            yield conn
            tx.rollback()

    @contextmanager
    def deadline(self, seconds: float | None) -> Iterator[None]:
        """Round trips of this thread wait at most ``seconds`` for PostgreSQL
        in the block (None: as long as they take; db/deadline.py)."""
        if self.is_sqlite:
            yield
            return
        from plasmaart.db.deadline import deadline

        with deadline(seconds):
            yield

    def dispose(self) -> None:
        if self._group is not None:
            self._group.close()
        if self.peers is not None:
            self.peers.close()
        self.engine.dispose()


def create_database(
    url: str,
    *,
    busy_timeout_ms: int = 30_000,
    pool_size: int = 10,
    group_commit: bool = True,
    group_commit_batch: int = DEFAULT_BATCH_LIMIT,
    timeout_s: float = 10.0,
) -> Database:
    """``timeout_s`` (PostgreSQL): the longest a connection attempt, a
    statement or a commit waits for the server, and a request for a free
    connection of the pool (``PLASMAART_DB_TIMEOUT_S``)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(url, database, pool_size)
        _configure_sqlite(engine, busy_timeout_ms)
        return Database(
            engine,
            group_commit=group_commit,
            group_commit_batch=group_commit_batch,
            # A batch may wait for the lock as long as any writer, behind
            # the batch before it: past that, something is wrong.
            write_timeout_s=2 * busy_timeout_ms / 1000 + 30,
        )
    return Database(_postgres_engine(url, pool_size, timeout_s))


def postgres_connect_args(timeout_s: float) -> dict[str, Any]:
    """libpq's bounds on a connection (``timeout_s``: ``PLASMAART_DB_TIMEOUT_S``):
    a connection attempt gives up after it, and the kernel gives up on a peer
    that stops acknowledging (``tcp_user_timeout``, keepalives on an idle one)."""
    whole = max(2, math.ceil(timeout_s))
    return {
        "connect_timeout": whole,
        "keepalives": 1,
        "keepalives_idle": max(1, whole // 2),
        "keepalives_interval": 1,
        "keepalives_count": max(1, whole // 2),
        "tcp_user_timeout": int(timeout_s * 1000),
    }


def _postgres_engine(url: str, pool_size: int, timeout_s: float) -> Engine:
    from plasmaart.db.deadline import watched_connect

    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A request waits at most this long for a free connection (all of
        # them stuck on a stalled server, say), then answers 503.
        pool_timeout=timeout_s,
        # Connections are recycled hourly; one that died with its server
        # fails its transaction (a 503; SQLAlchemy then drops every older
        # connection of the pool), and one left idle is pinged first.
        pool_recycle=3600,
        isolation_level="READ COMMITTED",
        # What DATABASE_URL says itself (?connect_timeout=5) wins.
        connect_args={
            name: value
            for name, value in postgres_connect_args(timeout_s).items()
            if name not in make_url(url).query
        },
    )

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        # Every round trip has a deadline (db/deadline.py).
        return watched_connect(timeout_s, *cargs, **cparams)

    _ping_when_idle(engine)
    return engine


# A pooled connection idle longer than this is pinged when checked out: one
# that died while idle (a restart of the server) is replaced, not handed to
# a request. A busy pool's connections are never that idle: no round trip
# on the hot path.
PING_IDLE_S = 1.0
_CHECKED_IN_AT = "plasmaart_checked_in_at"


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_CHECKED_IN_AT)
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"idle connection is gone: {exc}") from exc
        if not alive:
            raise DisconnectionError("idle connection is gone")


def _sqlite_engine(url: str, database: str | None, pool_size: int) -> Engine:
    if database in (None, "", ":memory:"):
        raise ValueError("PlasmaArt needs a SQLite file, not an in-memory database")
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False},
    )

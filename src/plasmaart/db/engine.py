"""Engine creation and the two kinds of transaction: read and write.

SQLite runs in WAL mode with a busy timeout, and every write transaction
starts with ``BEGIN IMMEDIATE`` so that two writers queue for the lock at the
start instead of failing half-way with "database is locked". PostgreSQL runs
through psycopg 3 at READ COMMITTED; writers serialise on row locks taken in
one order (wallet, then its lots).

Services never commit: whoever opens ``Database.write()`` owns the transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url

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


class Database:
    """One engine and the transactions the rest of the code runs in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        # Called after a commit with the scopes its transaction invalidated
        # (the process's CacheHub), before the after-commit callbacks.
        self.invalidation_listeners: list[Callable[[frozenset[str]], None]] = []
        # Names this process in its invalidation NOTIFYs (set by CacheHub).
        self.cache_origin = ""

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any error.

        Callbacks registered with ``after_commit(conn, fn)`` run once the commit
        succeeded, and are dropped on rollback (events, notifications). Scopes
        named with ``invalidate(conn, ...)`` are evicted from the caches first.
        """
        with self._writer.connect() as conn:
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
                callbacks = conn.info.pop(_AFTER_COMMIT, [])
                invalidated = frozenset(conn.info.pop(_INVALIDATE, ()))
        if invalidated:
            for listener in self.invalidation_listeners:
                try:
                    listener(invalidated)
                except Exception:
                    log.exception("cache invalidation failed")
        for callback in callbacks:
            try:
                callback()
            except Exception:
                # The transaction is committed; a failed side effect must not
                # turn it into an error for the caller.
                log.exception("after-commit callback failed")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot on both databases)."""
        with self.engine.connect() as conn, conn.begin() as tx:
            yield conn
            tx.rollback()

    def dispose(self) -> None:
        self.engine.dispose()


def create_database(url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 10) -> Database:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(url, database, pool_size)
        _configure_sqlite(engine, busy_timeout_ms)
        return Database(engine)
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per checkout on the hot path.
        # Connections are recycled hourly instead, and a connection that died
        # with its server fails its transaction, which the caller retries.
        pool_recycle=3600,
        isolation_level="READ COMMITTED",
    )
    return Database(engine)


def _sqlite_engine(url: str, database: str | None, pool_size: int) -> Engine:
    if database in (None, "", ":memory:"):
        raise ValueError("PlasmaArt needs a SQLite file, not an in-memory database")
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False},
    )

"""Engine creation and the two kinds of transaction: read and write.

SQLite runs in WAL mode with a busy timeout, and every write transaction
starts with ``BEGIN IMMEDIATE`` so that two writers queue for the lock at the
start instead of failing half-way with "database is locked". PostgreSQL runs
through psycopg 3 at READ COMMITTED; writers serialise on row locks taken in
one order (wallet, then its lots).

Services never commit: whoever opens ``Database.write()`` owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

_BEGIN_OPTION = "plasmaart_begin"
_AFTER_COMMIT = "plasmaart_after_commit"
log = logging.getLogger(__name__)
T = TypeVar("T")


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


class Database:
    """One engine and the transactions the rest of the code runs in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any error.

        Callbacks registered with ``after_commit(conn, fn)`` run once the commit
        succeeded, and are dropped on rollback (events, notifications).
        """
        with self._writer.connect() as conn:
            # conn.info outlives this checkout (it belongs to the pooled
            # connection), so the callbacks are always taken out of it.
            try:
                with conn.begin():
                    yield conn
            finally:
                callbacks = conn.info.pop(_AFTER_COMMIT, [])
        for callback in callbacks:
            try:
                callback()
            except Exception:
                # The transaction is committed; a failed side effect must not
                # turn it into an error for the caller.
                log.exception("after-commit callback failed")

    def run_write(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` in a write transaction, and its result.

        The unit a request's write is written as: ``fn`` does only its
        writes and the statements that decide them, never commits, does not
        rely on being alone in its transaction, and registers every effect
        outside the database with ``after_commit`` (a writer may run several
        such functions in one transaction, each in its own savepoint). An
        exception from ``fn`` undoes all it wrote and is raised here."""
        with self.write() as conn:
            return fn(conn)

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

"""A deadline on every PostgreSQL round trip: a statement, a commit or a
rollback that gets no answer within ``PLASMAART_DB_TIMEOUT_S`` has its
connection cut, so the caller gets an error (a 503 ``unavailable`` on the
API, a backoff in a worker's loop) instead of waiting forever.

TCP keepalives and ``tcp_user_timeout`` (engine.py) notice a peer that
stopped acknowledging; they cannot notice one that acknowledges and never
answers (a hung server, a stalled proxy or pooler in between). A watchdog
thread does: ``WatchedConnection`` (made by the engine for every pooled
connection) registers each round trip with its deadline, and the thread
shuts the socket of one that passes it down. psycopg then raises
``OperationalError`` on a broken connection, which SQLAlchemy invalidates
with the pool's other connections of before.

Work that may rightly take longer (migrations, the ledger's verification)
runs ``with deadline(None):`` on its thread; ``with deadline(s):`` sets a
shorter one (the readiness probe). Imported only for PostgreSQL.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

log = logging.getLogger(__name__)

_local = threading.local()
_UNSET = object()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Round trips of this thread wait at most ``seconds`` (None: no limit)
    inside the block, instead of the connection's own deadline."""
    before = getattr(_local, "seconds", _UNSET)
    _local.seconds = seconds
    try:
        yield
    finally:
        if before is _UNSET:
            del _local.seconds
        else:
            _local.seconds = before


class Watchdog:
    """One thread cutting the connections whose round trip ran past its deadline."""

    def __init__(self, tick_s: float = 0.1) -> None:
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, float, psycopg.Connection[Any]]] = {}
        self._thread: threading.Thread | None = None
        self.cut = 0  # connections cut so far (for tests and logs)

    def arm(self, conn: psycopg.Connection[Any], seconds: float | None) -> bool:
        chosen = getattr(_local, "seconds", seconds)
        if chosen is None or chosen <= 0:
            return False
        with self._lock:
            self._armed[id(conn)] = (time.monotonic() + chosen, chosen, conn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch, name="plasmaart-db-deadline", daemon=True
                )
                self._thread.start()
        return True

    def disarm(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._armed.pop(id(conn), None)

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            with self._lock:
                # Cut under the lock: the round trip cannot end (and its
                # connection close, its descriptor be reused) meanwhile.
                for key, (due, seconds, conn) in list(self._armed.items()):
                    if now >= due:
                        del self._armed[key]
                        self._cut(conn, seconds)

    def _cut(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        try:
            fd = conn.pgconn.socket
            with socket.socket(fileno=socket.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            return  # already closed or broken: the round trip ends by itself
        self.cut += 1
        log.warning(
            "no answer from the database within %.1fs: connection cut (PLASMAART_DB_TIMEOUT_S)",
            seconds,
        )


WATCHDOG = Watchdog()


class WatchedCursor(psycopg.Cursor[Any]):
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        conn = self.connection
        armed = isinstance(conn, WatchedConnection) and WATCHDOG.arm(conn, conn.round_trip_s)
        try:
            return super().execute(*args, **kwargs)
        finally:
            if armed:
                WATCHDOG.disarm(conn)

    def executemany(self, *args: Any, **kwargs: Any) -> None:
        conn = self.connection
        armed = isinstance(conn, WatchedConnection) and WATCHDOG.arm(conn, conn.round_trip_s)
        try:
            super().executemany(*args, **kwargs)
        finally:
            if armed:
                WATCHDOG.disarm(conn)


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose round trips have a deadline (``round_trip_s``)."""

    round_trip_s: float | None = None

    def commit(self) -> None:
        armed = WATCHDOG.arm(self, self.round_trip_s)
        try:
            super().commit()
        finally:
            if armed:
                WATCHDOG.disarm(self)

    def rollback(self) -> None:
        armed = WATCHDOG.arm(self, self.round_trip_s)
        try:
            super().rollback()
        finally:
            if armed:
                WATCHDOG.disarm(self)


def watched_connect(round_trip_s: float | None, *args: Any, **kwargs: Any) -> WatchedConnection:
    """``psycopg.connect`` whose connection's round trips wait at most
    ``round_trip_s`` (None or 0: no limit)."""
    conn = WatchedConnection.connect(*args, cursor_factory=WatchedCursor, **kwargs)
    conn.round_trip_s = round_trip_s or None
    return conn

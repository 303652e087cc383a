"""The sandbox test clock: the platform's clock, shifted by an offset that
lives in the database, so that every process of a deployment (API servers,
workers) agrees on the simulated time.

Reading the offset costs a query, so each process keeps it for
``refresh_s``; the process that moves the clock sees the new time as soon as
its transaction commits, the others within ``refresh_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from plasmaart.billing import repository as repo
from plasmaart.clock import Clock, OffsetClock
from plasmaart.db.engine import Database, after_commit
from plasmaart.errors import InvalidInput

log = logging.getLogger(__name__)
REFRESH_S = 1.0


class SandboxTestClock:
    """``base`` (the system clock; a ``ManualClock`` in tests) plus the
    database's offset. Tests can move either."""

    def __init__(self, base: Clock, db: Database, *, refresh_s: float = REFRESH_S) -> None:
        self._clock = OffsetClock(base)
        self._db = db
        self._refresh_s = refresh_s
        self._read_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def now(self) -> datetime:
        self._ensure_reader()
        return self._clock.now()

    @property
    def offset(self) -> timedelta:
        self._ensure_reader()
        return self._clock.offset

    def advance(self, conn: Connection, delta: timedelta) -> timedelta:
        """Move the clock forward by ``delta`` in the caller's transaction;
        the new offset."""
        seconds = int(delta.total_seconds())
        if seconds <= 0:
            raise InvalidInput("the test clock only moves forward", field="days")
        offset = timedelta(seconds=repo.advance_test_clock(conn, seconds, self.now()))
        after_commit(conn, lambda: self._set(offset))
        return offset

    def _set(self, offset: timedelta) -> None:
        self._clock.offset = offset
        self._read_at = time.monotonic()

    def _ensure_reader(self) -> None:
        """Start the thread that keeps the offset current. ``now()`` itself never
        touches the database: it is called inside transactions, and a second
        connection taken there can deadlock a busy pool (every thread holding one
        connection and waiting for another)."""
        if self._reader is not None:
            return
        with self._lock:
            if self._reader is not None:
                return
            self._read_offset()
            self._reader = threading.Thread(
                target=self._keep_reading, name="plasmaart-test-clock", daemon=True
            )
            self._reader.start()

    def _keep_reading(self) -> None:
        while not self._stop.wait(max(self._refresh_s, 0.01)):
            self._read_offset()

    def _read_offset(self) -> None:
        try:
            with self._db.read() as conn:
                self._clock.offset = timedelta(seconds=repo.clock_offset_seconds(conn))
        except SQLAlchemyError:
            # The clock must not fail because the database hiccupped (or is
            # not migrated yet): keep the last offset, retry after refresh_s.
            log.warning("could not read the test clock's offset", exc_info=True)
        self._read_at = time.monotonic()

    def close(self) -> None:
        """Stop the reader and wait for it, so that it never holds a connection
        of a pool that is being disposed."""
        self._stop.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=10)

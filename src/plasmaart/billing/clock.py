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

    def now(self) -> datetime:
        self._refresh()
        return self._clock.now()

    @property
    def offset(self) -> timedelta:
        self._refresh()
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

    def _fresh(self) -> bool:
        read_at = self._read_at
        return read_at is not None and time.monotonic() - read_at < self._refresh_s

    def _refresh(self) -> None:
        if self._fresh():
            return
        # Only the first read waits; later, while one thread reads, the others
        # use the offset they have rather than queue for a connection.
        if not self._lock.acquire(blocking=self._read_at is None):
            return
        try:
            if self._fresh():
                return
            try:
                with self._db.read() as conn:
                    self._clock.offset = timedelta(seconds=repo.clock_offset_seconds(conn))
            except SQLAlchemyError:
                # The clock must not fail because the database hiccupped (or is
                # not migrated yet): keep the last offset, retry after refresh_s.
                log.warning("could not read the test clock's offset", exc_info=True)
            self._read_at = time.monotonic()
        finally:
            self._lock.release()

"""The sandbox test clock: the platform's clock, shifted by an offset that
lives in the database, so that every process of a deployment (API servers,
workers) agrees on the simulated time.

The offset is read only when it moves, never polled:

- the process that moves the clock sees the new time as soon as its
  transaction commits;
- on PostgreSQL every other process hears of the move from a NOTIFY on the
  platform's event bus (``billing.test_clock``), and re-reads the offset at
  once. While its listener is not listening (a process that never starts
  the bus, such as a CLI command; one starting; or one reconnecting after
  the connection dropped, when moves may have been missed) it reads the
  offset every ``refresh_s`` instead, and once more when it listens again;
- on SQLite (one machine) the move also rewrites a stamp file beside the
  database (``<database>-clock``); the other processes look at its size and
  modification time every ``refresh_s``, a system call, not a statement, and
  re-read the offset when it changed.

So a clock that stands still costs no statement at all.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from plasmaart.billing import repository as repo
from plasmaart.clock import Clock, OffsetClock
from plasmaart.db.engine import Database, after_commit
from plasmaart.db.outage import Backoff, is_unavailable
from plasmaart.errors import InvalidInput
from plasmaart.eventbus import (
    RESYNC,
    Event,
    EventBus,
    InProcessEventBus,
    PostgresEventBus,
)

log = logging.getLogger(__name__)
REFRESH_S = 1.0
# The address of the clock's moves on the event bus: not a user id (those are
# ``usr_…``), so no ``/v1/events`` stream ever receives it.
MOVED_ADDRESS: Final = "billing:test_clock"
MOVED_EVENT: Final = "billing.test_clock"


class _Listener:
    """Sets ``moved`` when the bus tells of a move (or may have missed one)."""

    def __init__(self, address: str, moved: threading.Event) -> None:
        self.address = address
        self._moved = moved

    def __call__(self, event: Event) -> None:
        if event.type in (MOVED_EVENT, RESYNC):
            self._moved.set()


class SandboxTestClock:
    """``base`` (the system clock; a ``ManualClock`` in tests) plus the
    database's offset. Tests can move either.

    ``events``: the platform's event bus, which carries moves between
    processes on PostgreSQL. Without one (or on SQLite without a database
    file) the offset is read every ``refresh_s``, as a last resort.
    """

    def __init__(
        self,
        base: Clock,
        db: Database,
        *,
        refresh_s: float = REFRESH_S,
        events: EventBus | None = None,
    ) -> None:
        self._clock = OffsetClock(base)
        self._db = db
        self._refresh_s = refresh_s
        self._events = events
        self._lock = threading.Lock()
        self._outage = Backoff("test clock reader", logger=log)
        self._stop = threading.Event()
        self._moved = threading.Event()
        self._reader: threading.Thread | None = None
        self._listener: _Listener | None = None
        self._stamp = _stamp_path(db)
        self._seen_stamp = _stat(self._stamp)
        self.reads = 0  # how often the offset was read from the database

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
        after_commit(conn, lambda: self._moved_here(offset))
        return offset

    def _moved_here(self, offset: timedelta) -> None:
        """After the move committed: this process at once, the others told."""
        self._clock.offset = offset
        if self._stamp is not None:
            try:
                self._stamp.write_text(f"{int(offset.total_seconds())}\n")
                self._seen_stamp = _stat(self._stamp)
            except OSError:
                log.warning("could not write the test clock's stamp file", exc_info=True)
        if self._events is not None and not self._db.is_sqlite:
            self._events.publish(
                [MOVED_ADDRESS], MOVED_EVENT, {"offset_s": int(offset.total_seconds())}
            )

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
            if self._events is not None and not self._db.is_sqlite:
                listener = _Listener(MOVED_ADDRESS, self._moved)
                # Heard once the process listens (the API and the worker
                # start the bus); until then the offset is polled.
                if _attach(self._events, listener):
                    self._listener = listener
            self._read_offset()
            self._reader = threading.Thread(
                target=self._keep_current, name="plasmaart-test-clock", daemon=True
            )
            self._reader.start()

    def _keep_current(self) -> None:
        # Whether the bus may have missed a move since the offset was read.
        deaf = True
        while True:
            moved = self._moved.wait(max(self._refresh_s, 0.01))
            if self._stop.is_set():
                return
            if moved:
                self._moved.clear()
                self._read_offset()
                continue
            if self._listener is not None and self._events is not None:
                if _listening(self._events):
                    if deaf:  # listening (again): whatever moved meanwhile
                        self._read_offset()
                        deaf = False
                    continue
                deaf = True
                self._read_offset()
            elif self._stamp is not None:
                stamp = _stat(self._stamp)
                if stamp != self._seen_stamp:
                    self._seen_stamp = stamp
                    self._read_offset()
            else:
                self._read_offset()

    def _read_offset(self) -> None:
        try:
            with self._db.read() as conn:
                self._clock.offset = timedelta(seconds=repo.clock_offset_seconds(conn))
            self.reads += 1
        except SQLAlchemyError as exc:
            # The clock must not fail because the database hiccupped (or is
            # not migrated yet): keep the last offset, retry after refresh_s.
            if is_unavailable(exc):  # an outage: said once, and once when it ends
                self._outage.failed(exc)
            else:
                log.warning("could not read the test clock's offset", exc_info=True)
        else:
            self._outage.succeeded()

    def close(self) -> None:
        """Stop the reader and wait for it, so that it never holds a connection
        of a pool that is being disposed."""
        self._stop.set()
        self._moved.set()
        if self._listener is not None and self._events is not None:
            _detach(self._events, self._listener)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=10)


def _stamp_path(db: Database) -> Path | None:
    """The stamp file of a SQLite database file, None on PostgreSQL."""
    if not db.is_sqlite:
        return None
    database = db.engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(f"{database}-clock")


def _stat(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size)


def _listening(events: EventBus) -> bool:
    return not isinstance(events, PostgresEventBus) or events.listening


def _attach(events: EventBus, listener: _Listener) -> bool:
    """Listen for moves; False if the bus cannot carry them (then poll)."""
    if isinstance(events, InProcessEventBus):
        events.add_listener(listener)
        return True
    return False


def _detach(events: EventBus, listener: _Listener) -> None:
    if isinstance(events, InProcessEventBus):
        events.remove_listener(listener)

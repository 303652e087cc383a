"""The sandbox test clock is read only when it moves (billing/sandbox_clock.py), on
SQLite and PostgreSQL: another process sees a move at once (a NOTIFY on
PostgreSQL, the stamp file on SQLite), and a clock standing still costs no
statement at all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event

from plasmaart.billing.sandbox_clock import REFRESH_S, SandboxTestClock
from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database
from plasmaart.eventbus import EventBus, PostgresEventBus, create_event_bus
from plasmaart.platform import Platform


class Statements:
    """The statements an engine runs, from any thread."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        with self._lock:
            self.seen.append(statement)


@contextmanager
def counting(db: Database) -> Iterator[Statements]:
    statements = Statements()
    event.listen(db.engine, "before_cursor_execute", statements)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", statements)


@contextmanager
def another_process(
    platform: Platform, clock: ManualClock, refresh_s: float
) -> Iterator[SandboxTestClock]:
    """The test clock of another process over the same database: its own
    clock object and its own event bus (a listener connection of its own on
    PostgreSQL)."""
    bus: EventBus = create_event_bus(platform.db)
    elsewhere = SandboxTestClock(clock, platform.db, refresh_s=refresh_s, events=bus)
    try:
        elsewhere.now()
        if isinstance(bus, PostgresEventBus):
            bus.start(wait=10)
            assert bus.listening
        yield elsewhere
    finally:
        elsewhere.close()
        bus.close()


def wait_for(check: Any, within: float) -> float:
    """Seconds until ``check()`` held; fails after ``within``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "not seen in time"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_move_is_seen_at_once_by_every_process(platform: Platform, clock: ManualClock) -> None:
    moved = platform.billing.test_clock
    assert moved is not None
    # On PostgreSQL the other process hears the NOTIFY: its fallback read
    # (every refresh_s, only while its listener is deaf) is far away. On
    # SQLite it looks at the stamp file (a stat, not a statement) this often.
    refresh_s = 0.05 if platform.db.is_sqlite else 60.0
    with another_process(platform, clock, refresh_s) as elsewhere:
        start = elsewhere.now()
        # Settled: the fallback read made when the listener came up is done.
        time.sleep(0.2)
        with platform.db.write() as conn:
            moved.advance(conn, timedelta(days=3))
        # The process that moved it: as soon as the move committed.
        assert platform.clock.now() == start + timedelta(days=3)
        took = wait_for(lambda: elsewhere.now() == start + timedelta(days=3), within=5)
        assert took < 1.0
        # And again: every move, not only the first.
        with platform.db.write() as conn:
            moved.advance(conn, timedelta(days=1))
        wait_for(lambda: elsewhere.now() == start + timedelta(days=4), within=5)


def test_a_still_clock_runs_no_statement(platform: Platform, clock: ManualClock) -> None:
    test_clock = platform.billing.test_clock
    assert test_clock is not None
    # A short refresh: the clock that polled read the offset this often.
    with another_process(platform, clock, refresh_s=0.02) as elsewhere:
        # Settled: each clock reads once more when its listener comes up
        # (a move may have been missed before), within its refresh_s.
        platform.events.start(wait=10)
        time.sleep(REFRESH_S + 0.3)
        reads = (test_clock.reads, elsewhere.reads)
        with counting(platform.db) as statements:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # both clocks in use, standing still
                test_clock.now()
                elsewhere.now()
                time.sleep(0.01)
        assert statements.seen == []
        assert (test_clock.reads, elsewhere.reads) == reads
        # Moved, it is read again (once in each process at most).
        with platform.db.write() as conn:
            test_clock.advance(conn, timedelta(days=1))
        wait_for(lambda: elsewhere.reads > reads[1], within=5)
        assert elsewhere.reads <= reads[1] + 2

"""The one source of time. Everything that needs "now" takes a ``Clock``.

Tests use ``ManualClock``; the sandbox billing backend's test clock is an
``OffsetClock`` whose offset lives in the database, so that every process of a
deployment agrees on the simulated time.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC now."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told; for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


class OffsetClock:
    """Another clock shifted by an offset that can be moved forward."""

    def __init__(self, base: Clock, offset: timedelta = timedelta(0)) -> None:
        self._base = base
        self.offset = offset

    def now(self) -> datetime:
        return self._base.now() + self.offset


def as_utc(value: datetime) -> datetime:
    """Databases without time zones (SQLite) hand back naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

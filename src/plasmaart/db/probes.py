"""What ``plasmaart doctor`` asks the database besides its revision: the
server's version and how far its clock is from this machine's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from plasmaart.clock import as_utc
from plasmaart.db.engine import Database

_DATABASE_NOW = text("SELECT clock_timestamp()")


@dataclass(frozen=True)
class ClockReading:
    """The database's clock minus this machine's, read at the middle of the
    round trip; the true offset is within ``round_trip_s / 2`` of it."""

    offset_s: float
    round_trip_s: float


def server_version(db: Database) -> str:
    """The server's version, as ``16.4``; connects (raises ``SQLAlchemyError``)."""
    with db.engine.connect() as conn:
        info = conn.dialect.server_version_info or ()
    return ".".join(str(part) for part in info)


def clock_offset(db: Database, now: Callable[[], datetime], samples: int = 3) -> ClockReading:
    """PostgreSQL's ``clock_timestamp()`` (the time as the statement runs,
    not the transaction's start) against ``now``, the reading with the
    shortest round trip of ``samples``: the least uncertain one."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    readings: list[ClockReading] = []
    with db.engine.connect() as conn:
        conn.execute(_DATABASE_NOW)  # the first statement also opens the transaction
        for _ in range(samples):
            before = now()
            database_now = conn.execute(_DATABASE_NOW).scalar_one()
            after = now()
            round_trip = (after - before).total_seconds()
            middle = before + (after - before) / 2
            readings.append(
                ClockReading((as_utc(database_now) - middle).total_seconds(), round_trip)
            )
        conn.rollback()
    return min(readings, key=lambda reading: reading.round_trip_s)

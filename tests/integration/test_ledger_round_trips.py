"""Statement and round-trip budgets of the ledger's hot path, on SQLite and PostgreSQL.

A hold and its capture run for every generation. These tests count what they
send to the database and fail when a change sends more than the budget:

* statements, as SQLAlchemy's ``before_cursor_execute`` and
  ``after_cursor_execute`` events see them (the ledger runs its hot
  statements on the DBAPI cursor, and must still show each one to these
  events: statement counters and tracing rely on them);
* on PostgreSQL, round trips: the times the client asks the server to finish
  what it sent and answer (a ``Sync`` or a simple ``Query`` message, in
  libpq's trace of the connection), the commit included.

The scenario draws a hold across two lots (an expiring subscription lot, then
the purchase) and captures part of it, so that every statement a hold or a
capture can send is sent: several lots to update, a release back to a lot,
a capture and a release entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from psycopg import pq
from sqlalchemy import Connection, event

from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.service import LedgerService

T = TypeVar("T")

# (statements, PostgreSQL round trips) of one write transaction, BEGIN and
# COMMIT included. SQLite counts its ``BEGIN IMMEDIATE`` as a statement;
# psycopg begins implicitly, in a round trip of its own.
HOLD_BUDGET = {"sqlite": 8, "postgres": 8}
CAPTURE_BUDGET = {"sqlite": 9, "postgres": 9}
# BEGIN; the lock and the reads after it; the writes; COMMIT.
ROUND_TRIPS = 4


@dataclass
class Sent:
    before: int = 0
    after: int = 0
    round_trips: int | None = None


@contextmanager
def counting(db: Database) -> Iterator[Sent]:
    sent = Sent()

    def before(*_: Any) -> None:
        sent.before += 1

    def after(*_: Any) -> None:
        sent.after += 1

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "after_cursor_execute", after)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
        event.remove(db.engine, "after_cursor_execute", after)


def in_transaction(
    db: Database, tmp_path: Path, action: Callable[[Connection], T]
) -> tuple[T, Sent]:
    """Run ``action`` in one write transaction; count what it sends."""
    trace = tmp_path / "libpq.trace"
    with counting(db) as sent, trace.open("w") as sink:
        with db.write() as conn:
            raw = conn.connection.dbapi_connection
            postgres = db.dialect == "postgresql"
            if postgres:
                pgconn = raw.pgconn  # type: ignore[union-attr]
                pgconn.trace(sink.fileno())
                pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                result = action(conn)
            except BaseException:
                if postgres:
                    pgconn.untrace()
                raise
        if postgres:
            pgconn.untrace()
    if postgres:
        messages = [line.split("\t") for line in trace.read_text().splitlines()]
        sent.round_trips = sum(
            1
            for fields in messages
            if fields[0] == "F" and fields[2].split()[0] in ("Sync", "Query")
        )
    return result, sent


def test_a_hold_and_its_capture_stay_within_their_budgets(
    db: Database, ledger: LedgerService, clock: ManualClock, backend: str, tmp_path: Path
) -> None:
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_budget")
        ledger.grant(conn, wallet, 100, source="purchase", idempotency_key="budget:buy")
        ledger.grant(
            conn,
            wallet,
            5,
            source="subscription",
            expires_at=clock.now() + timedelta(days=30),
            idempotency_key="budget:month",
        )
    hold, held = in_transaction(
        db, tmp_path, lambda conn: ledger.hold(conn, wallet, 8, idempotency_key="budget:hold")
    )
    assert [credits for _, credits in hold.lots] == [5, 3]
    settled, captured = in_transaction(
        db,
        tmp_path,
        lambda conn: ledger.capture(
            conn, hold.hold_id, 6, idempotency_key="budget:capture", outputs=1
        ),
    )
    assert (settled.captured, settled.released, settled.balance_after) == (6, 2, 99)

    assert held.before == held.after <= HOLD_BUDGET[backend]
    assert captured.before == captured.after <= CAPTURE_BUDGET[backend]
    if backend == "postgres":
        assert held.round_trips is not None
        assert captured.round_trips is not None
        assert held.round_trips <= ROUND_TRIPS
        assert captured.round_trips <= ROUND_TRIPS
    with db.read() as conn:
        assert check_ledger(conn) == []


def test_a_replay_reads_and_writes_only_what_a_replay_needs(
    db: Database, ledger: LedgerService, backend: str, tmp_path: Path
) -> None:
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_replay")
        ledger.grant(conn, wallet, 50, source="purchase", idempotency_key="replay:buy")
        first = ledger.hold(conn, wallet, 8, idempotency_key="replay:hold")
    again, sent = in_transaction(
        db, tmp_path, lambda conn: ledger.hold(conn, wallet, 8, idempotency_key="replay:hold")
    )
    assert again == first
    # The lock and its reads (and SQLite's BEGIN): nothing written.
    assert sent.before == sent.after <= 2
    if backend == "postgres":
        assert sent.round_trips is not None
        assert sent.round_trips <= 3

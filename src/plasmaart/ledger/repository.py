"""All SQL of the ledger. Callers own the transaction.

Two ways to the database live here:

* The hot path (every hold, capture and release, and the journal, wallet and
  idempotency writes of every mutation) goes through ``Driver``: SQL text
  written once per dialect, run on the DBAPI cursor of the caller's
  connection. A profile of hold + capture showed SQLAlchemy's execution layer
  (compiled-cache lookup, execution context, result objects, events) costing
  several times what SQLite itself did for these short statements; the driver
  path keeps what matters of that layer (the ``before_cursor_execute`` and
  ``after_cursor_execute`` events, so statement counters still see every
  statement, and SQLAlchemy's exception wrapping and disconnect handling) and
  drops the rest. Writes are queued and sent at the end of the operation: on
  PostgreSQL in one pipeline (one round trip for all of them), on SQLite one
  after the other (there is no network to cross).
* Everything else (grants, renewals, expiry sweeps, clawbacks, reads for
  pages) uses SQLAlchemy Core, where clarity matters more than microseconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Date, Row, func, insert, select, update
from sqlalchemy.dialects import sqlite as sqlite_dialect

from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    Timestamp,
    hold_lots,
    holds,
    lots,
    teams,
    wallets,
)
from plasmaart.ledger.rules import Allocation, LotView

# A row of any shape (SQLAlchemy 2.1 types rows by their columns).
AnyRow = Row[*tuple[Any, ...]]


class Sql:
    """One statement, written once with ``:name`` parameters, in the text and
    paramstyle of each dialect (sqlite3: ``:name``; psycopg: ``%(name)s``)."""

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, text: str, *, postgresql_suffix: str = "") -> None:
        text = " ".join(text.split())
        self.sqlite = text
        self.postgresql = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text) + postgresql_suffix


# Lock the wallet and look its idempotency key up in one statement. Every
# ledger mutation takes this lock first (SQLite's BEGIN IMMEDIATE already
# serialises writers), so the lots, holds and entries of one wallet are only
# ever changed by one transaction at a time.
_LOCK_WALLET = Sql(
    """SELECT w.available, w.held, o.operation, o.request_hash, o.result,
    w.monthly_spend_limit, w.watch_below, w.watch_above
    FROM wallets AS w
    LEFT OUTER JOIN ledger_operations AS o ON o.idempotency_key = :key
    WHERE w.id = :wallet""",
    postgresql_suffix=" FOR UPDATE OF w",
)
# The same lock, found from a hold (a capture or a release knows only the hold).
_LOCK_HOLD_WALLET = Sql(
    """SELECT h.wallet_id, w.available, w.held, o.operation, o.request_hash, o.result,
    w.monthly_spend_limit, w.watch_below, w.watch_above
    FROM holds AS h
    JOIN wallets AS w ON w.id = h.wallet_id
    LEFT OUTER JOIN ledger_operations AS o ON o.idempotency_key = :key
    WHERE h.id = :hold""",
    postgresql_suffix=" FOR UPDATE OF w",
)
_OPEN_LOTS = Sql(
    """SELECT id, source, remaining, expires_at, created_at
    FROM lots WHERE wallet_id = :wallet AND remaining > 0"""
)
# The hold and its allocations, one row per lot it drew from.
_HOLD_WITH_LOTS = Sql(
    """SELECT h.amount, h.status, h.generation_id, h.model,
    hl.lot_id, hl."position", hl.credits, l.expires_at, l.closed_reason, l.remaining
    FROM holds AS h
    JOIN hold_lots AS hl ON hl.hold_id = h.id
    JOIN lots AS l ON l.id = hl.lot_id
    WHERE h.id = :hold"""
)
# SQLite only: the lock and the reads that follow it, as one statement.
_SQLITE_LOCK_WALLET_WITH_LOTS = Sql(
    """SELECT w.available, w.held, o.operation, o.request_hash, o.result,
    w.monthly_spend_limit, w.watch_below, w.watch_above,
    l.id, l.source, l.remaining, l.expires_at, l.created_at
    FROM wallets AS w
    LEFT OUTER JOIN ledger_operations AS o ON o.idempotency_key = :key
    LEFT OUTER JOIN lots AS l ON l.wallet_id = w.id AND l.remaining > 0
    WHERE w.id = :wallet"""
)
_SQLITE_LOCK_HOLD_WITH_LOTS = Sql(
    """SELECT h.wallet_id, w.available, w.held, o.operation, o.request_hash, o.result,
    w.monthly_spend_limit, w.watch_below, w.watch_above,
    h.amount, h.status, h.generation_id, h.model,
    hl.lot_id, hl."position", hl.credits, l.expires_at, l.closed_reason, l.remaining
    FROM holds AS h
    JOIN wallets AS w ON w.id = h.wallet_id
    LEFT OUTER JOIN ledger_operations AS o ON o.idempotency_key = :key
    JOIN hold_lots AS hl ON hl.hold_id = h.id
    JOIN lots AS l ON l.id = hl.lot_id
    WHERE h.id = :hold"""
)
_TAKE_FROM_LOT = Sql("UPDATE lots SET remaining = remaining - :take WHERE id = :lot")
_GIVE_BACK_TO_LOT = Sql("UPDATE lots SET remaining = remaining + :credits WHERE id = :lot")
_INSERT_HOLD = Sql(
    """INSERT INTO holds (id, wallet_id, amount, captured, released, status,
    generation_id, model, memo, created_at)
    VALUES (:hold, :wallet, :amount, 0, 0, 'pending', :generation, :model, :memo, :now)"""
)
_INSERT_HOLD_LOT = Sql(
    """INSERT INTO hold_lots (hold_id, lot_id, "position", credits, captured, released)
    VALUES (:hold, :lot, :position, :credits, 0, 0)"""
)
_SETTLE_HOLD_LOT = Sql(
    """UPDATE hold_lots SET captured = :captured, released = :released
    WHERE hold_id = :hold AND lot_id = :lot"""
)
_RESOLVE_HOLD = Sql(
    """UPDATE holds SET captured = :captured, released = :released, status = :status,
    resolved_at = :now WHERE id = :hold AND status = 'pending'"""
)
_INSERT_ENTRY = Sql(
    """INSERT INTO journal_entries (wallet_id, kind, from_account, to_account, credits,
    amount, balance_after, held_after, lot_id, hold_id, generation_id, model, outputs,
    memo, created_at)
    VALUES (:wallet_id, :kind, :from_account, :to_account, :credits, :amount,
    :balance_after, :held_after, :lot_id, :hold_id, :generation_id, :model, :outputs,
    :memo, :created_at)"""
)
_STORE_WALLET = Sql("UPDATE wallets SET available = :available, held = :held WHERE id = :wallet")
_RECORD_OPERATION = Sql(
    """INSERT INTO ledger_operations (idempotency_key, operation, request_hash, result,
    created_at) VALUES (:key, :operation, :hash, :result, :now)"""
)
# Count one captured generation in the wallet's daily usage roll-up.
_ADD_USAGE = Sql(
    """INSERT INTO usage_daily (wallet_id, day, model, generations, outputs, credits)
    VALUES (:wallet, :day, :model, 1, :outputs, :credits)
    ON CONFLICT (wallet_id, day, model) DO UPDATE SET
    generations = usage_daily.generations + excluded.generations,
    outputs = usage_daily.outputs + excluded.outputs,
    credits = usage_daily.credits + excluded.credits"""
)

# SQLite has no date types: values are bound and read in the text form that
# SQLAlchemy's own SQLite types use, so both paths read and write alike.
_SQLITE = sqlite_dialect.dialect()
_Convert = Callable[[Any], Any]
_sqlite_bind_time = cast(_Convert, Timestamp.dialect_impl(_SQLITE).bind_processor(_SQLITE))
_sqlite_read_time = cast(_Convert, Timestamp.dialect_impl(_SQLITE).result_processor(_SQLITE, None))
_sqlite_bind_day = cast(_Convert, Date().dialect_impl(_SQLITE).bind_processor(_SQLITE))


class WalletState(NamedTuple):
    """A locked wallet and what its idempotency key recorded, if anything."""

    wallet_id: str
    available: int
    held: int
    operation: str | None
    request_hash: str | None
    result: str | None
    # The owner's monthly spend limit, and the balance watch (tables.wallets).
    spend_limit: int | None = None
    watch_below: int | None = None
    watch_above: int | None = None

    def watched(self, available: int) -> bool:
        """Whether ``available`` is outside the watch: the watchers want to see it."""
        return (self.watch_below is not None and available < self.watch_below) or (
            self.watch_above is not None and available > self.watch_above
        )


class HoldPart(NamedTuple):
    """A hold (amount, status, generation, model) and one lot it drew from."""

    amount: int
    status: str
    generation_id: str | None
    model: str | None
    lot_id: str
    position: int
    credits: int
    expires_at: datetime | None
    closed_reason: str | None
    # What the lot itself still holds (read under the wallet's lock).
    remaining: int


class Driver:
    """The ledger's hot statements, run on the DBAPI connection of ``conn``
    inside its transaction (begun here if the caller has not begun it).

    Reads run at once (several at once in one round trip on PostgreSQL);
    writes are queued by ``write``/``write_many`` and sent by ``flush``.
    """

    __slots__ = ("after", "before", "conn", "cursor", "postgres", "raw", "writes")

    def __init__(self, conn: Connection) -> None:
        if not conn.in_transaction():
            conn.begin()
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        self.raw: Any = cast(Any, conn.connection.dbapi_connection)
        self.cursor: Any = self.raw.cursor()
        self.writes: list[tuple[Sql, Any, bool]] = []
        # Statement listeners (statement counters, tracing), looked up once:
        # walking SQLAlchemy's empty listener collections on every statement
        # showed in the profile.
        # The engine's listeners are read from the engine's own dispatcher:
        # a connection joins its dispatcher to the engine's on first use,
        # which costs more than the statements it would watch.
        dispatch: Any = (
            conn.dispatch
            if conn._has_events
            else conn.engine.dispatch
            if conn.engine._has_events
            else None
        )
        self.before = [] if dispatch is None else list(dispatch.before_cursor_execute)
        self.after = dispatch is not None and bool(dispatch.after_cursor_execute)

    # -- values ----------------------------------------------------------

    def bind_time(self, value: datetime | None) -> Any:
        if value is None or self.postgres:
            return value
        return _sqlite_bind_time(value)

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return as_utc(cast(datetime, value if self.postgres else _sqlite_read_time(value)))

    def bind_day(self, value: date) -> Any:
        return value if self.postgres else _sqlite_bind_day(value)

    # -- running statements ----------------------------------------------

    def _execute(self, cursor: Any, sql: Sql, params: Any, many: bool) -> None:
        conn = self.conn
        statement = sql.postgresql if self.postgres else sql.sqlite
        try:
            for before in self.before:
                statement, params = before(conn, cursor, statement, params, None, many)
            if many:
                cursor.executemany(statement, params)
            else:
                cursor.execute(statement, params)
            if self.after:
                conn.dispatch.after_cursor_execute(conn, cursor, statement, params, None, many)
        except BaseException as error:
            conn._handle_dbapi_exception(error, statement, params, cursor, None)

    def _pipelined(self, run: Callable[[], None]) -> None:
        """Run ``run`` in one pipeline on PostgreSQL (its statements go in one
        round trip; errors surface when it ends), as it is on SQLite."""
        if not self.postgres:
            run()
            return
        try:
            with self.raw.pipeline():
                run()
        except BaseException as error:
            self.conn._handle_dbapi_exception(error, "(pipeline)", None, self.cursor, None)

    def read(self, *queries: tuple[Sql, dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """Run ``queries`` in order and return their rows."""
        cursors = [self.cursor] + [self.raw.cursor() for _ in queries[1:]]

        def run() -> None:
            for cursor, (sql, params) in zip(cursors, queries, strict=True):
                self._execute(cursor, sql, params, False)

        if len(queries) == 1:
            run()
        else:
            self._pipelined(run)
        return [cursor.fetchall() for cursor in cursors]

    def write(self, sql: Sql, params: dict[str, Any]) -> None:
        self.writes.append((sql, params, False))

    def write_many(self, sql: Sql, rows: list[dict[str, Any]]) -> None:
        """Queue one statement for each of ``rows`` (never empty): one
        ``executemany``, or a plain execute for a single row."""
        if len(rows) == 1:
            self.writes.append((sql, rows[0], False))
        else:
            self.writes.append((sql, rows, True))

    def flush(self) -> None:
        """Send the queued writes, in the order they were queued."""
        writes, self.writes = self.writes, []

        def run() -> None:
            for sql, params, many in writes:
                self._execute(self.cursor, sql, params, many)

        self._pipelined(run)

    # -- the hot statements ----------------------------------------------

    def lock_wallet(
        self, wallet_id: str, key: str, *, with_lots: bool = False
    ) -> tuple[WalletState | None, list[LotView]]:
        """Lock the wallet row for this transaction and fetch the operation
        recorded under ``key`` (None when there is no such wallet); with
        ``with_lots``, also its lots that still hold credits, read once the
        lock is taken: on PostgreSQL a second statement in the same round trip
        (a join would read the lots from before the lock was granted); on
        SQLite, whose ``BEGIN IMMEDIATE`` already excludes other writers, the
        same statement."""
        params = {"wallet": wallet_id, "key": key}
        if not with_lots:
            found, lot_rows = self.read((_LOCK_WALLET, params))[0], []
        elif self.postgres:
            found, lot_rows = self.read((_LOCK_WALLET, params), (_OPEN_LOTS, params))
        else:
            found = self.read((_SQLITE_LOCK_WALLET_WITH_LOTS, params))[0]
            lot_rows = [row[8:] for row in found if row[8] is not None]
        if not found:
            return None, []
        available, held, operation, request_hash, result = found[0][:5]
        state = WalletState(
            wallet_id, int(available), int(held), operation, request_hash, result, *found[0][5:8]
        )
        return state, [self._lot_view(row) for row in lot_rows]

    def lock_hold_wallet(self, hold_id: str, key: str) -> tuple[WalletState | None, list[HoldPart]]:
        """Lock the wallet of a hold and fetch the operation recorded under
        ``key``, then (once the lock is taken, as in ``lock_wallet``) the hold
        with one row per lot it drew from."""
        params = {"hold": hold_id, "key": key}
        if self.postgres:
            found, part_rows = self.read((_LOCK_HOLD_WALLET, params), (_HOLD_WITH_LOTS, params))
        else:
            found = self.read((_SQLITE_LOCK_HOLD_WITH_LOTS, params))[0]
            part_rows = [row[9:] for row in found]
        if not found:
            return None, []
        wallet_id, available, held, operation, request_hash, result = found[0][:6]
        state = WalletState(
            wallet_id, int(available), int(held), operation, request_hash, result, *found[0][6:9]
        )
        return state, [
            HoldPart(
                int(amount),
                status,
                generation_id,
                model,
                lot_id,
                int(position),
                int(credits),
                self.read_time(expires_at),
                closed_reason,
                int(remaining),
            )
            for (
                amount,
                status,
                generation_id,
                model,
                lot_id,
                position,
                credits,
                expires_at,
                closed_reason,
                remaining,
            ) in part_rows
        ]

    def _lot_view(self, row: tuple[Any, ...]) -> LotView:
        lot_id, source, remaining, expires_at, created_at = row
        created = cast(datetime, self.read_time(created_at))
        return LotView(lot_id, source, int(remaining), self.read_time(expires_at), created)

    def take_from_lots(self, taken: Sequence[tuple[str, int]]) -> None:
        self.write_many(_TAKE_FROM_LOT, [{"lot": lot_id, "take": take} for lot_id, take in taken])

    def give_back_to_lot(self, lot_id: str, credits: int) -> None:
        self.write(_GIVE_BACK_TO_LOT, {"lot": lot_id, "credits": credits})

    def insert_hold(
        self,
        *,
        hold_id: str,
        wallet_id: str,
        credits: int,
        generation_id: str | None,
        model: str | None,
        memo: str | None,
        now: datetime,
        taken: Sequence[tuple[str, int]],
    ) -> None:
        """The hold and, in burn order, the lots it draws from."""
        self.write(
            _INSERT_HOLD,
            {
                "hold": hold_id,
                "wallet": wallet_id,
                "amount": credits,
                "generation": generation_id,
                "model": model,
                "memo": memo,
                "now": self.bind_time(now),
            },
        )
        self.write_many(
            _INSERT_HOLD_LOT,
            [
                {"hold": hold_id, "lot": lot_id, "position": position, "credits": part}
                for position, (lot_id, part) in enumerate(taken)
            ],
        )

    def settle_hold(
        self,
        hold_id: str,
        captured: Sequence[tuple[str, int]],
        released: Sequence[tuple[str, int]],
        now: datetime,
    ) -> None:
        """Record what each lot of the hold gave to the capture and got back,
        and resolve the hold (captured if any credit was, else released)."""
        parts: dict[str, list[int]] = {}
        for lot_id, credits in captured:
            parts.setdefault(lot_id, [0, 0])[0] += credits
        for lot_id, credits in released:
            parts.setdefault(lot_id, [0, 0])[1] += credits
        self.write_many(
            _SETTLE_HOLD_LOT,
            [
                {"hold": hold_id, "lot": lot_id, "captured": cap, "released": rel}
                for lot_id, (cap, rel) in parts.items()
            ],
        )
        total_captured = sum(credits for _, credits in captured)
        self.write(
            _RESOLVE_HOLD,
            {
                "hold": hold_id,
                "captured": total_captured,
                "released": sum(credits for _, credits in released),
                "status": "captured" if total_captured else "released",
                "now": self.bind_time(now),
            },
        )

    def add_usage(
        self, wallet_id: str, *, day: date, model: str, outputs: int, credits: int
    ) -> None:
        """Count one captured generation in the wallet's daily usage roll-up."""
        self.write(
            _ADD_USAGE,
            {
                "wallet": wallet_id,
                "day": self.bind_day(day),
                "model": model,
                "outputs": outputs,
                "credits": credits,
            },
        )

    def insert_entries(self, entries: list[dict[str, Any]]) -> None:
        """Journal entries (dicts keyed by column; ``created_at`` a datetime)."""
        if not self.postgres:
            entries = [
                {**entry, "created_at": self.bind_time(entry["created_at"])} for entry in entries
            ]
        self.write_many(_INSERT_ENTRY, entries)

    def store_wallet(self, wallet_id: str, available: int, held: int) -> None:
        self.write(_STORE_WALLET, {"wallet": wallet_id, "available": available, "held": held})

    def record_operation(
        self, key: str, operation: str, request_hash: str, result: dict[str, Any], now: datetime
    ) -> None:
        self.write(
            _RECORD_OPERATION,
            {
                "key": key,
                "operation": operation,
                "hash": request_hash,
                "result": json.dumps(result, sort_keys=True),
                "now": self.bind_time(now),
            },
        )


def insert_wallet(
    conn: Connection, wallet_id: str, owner_kind: str, owner_id: str, now: datetime
) -> None:
    conn.execute(
        insert(wallets).values(
            id=wallet_id,
            owner_kind=owner_kind,
            owner_id=owner_id,
            available=0,
            held=0,
            created_at=now,
        )
    )


def wallet_of_owner(conn: Connection, owner_kind: str, owner_id: str) -> str | None:
    return conn.execute(
        select(wallets.c.id).where(
            wallets.c.owner_kind == owner_kind, wallets.c.owner_id == owner_id
        )
    ).scalar_one_or_none()


def read_wallet(conn: Connection, wallet_id: str) -> tuple[int, int] | None:
    row = conn.execute(
        select(wallets.c.available, wallets.c.held).where(wallets.c.id == wallet_id)
    ).one_or_none()
    return None if row is None else (int(row.available), int(row.held))


def open_lot_rows(conn: Connection, wallet_id: str) -> list[AnyRow]:
    return list(
        conn.execute(select(lots).where(lots.c.wallet_id == wallet_id, lots.c.remaining > 0)).all()
    )


def insert_lot(
    conn: Connection,
    *,
    lot_id: str,
    wallet_id: str,
    source: str,
    credits: int,
    expires_at: datetime | None,
    reference: str | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(lots).values(
            id=lot_id,
            wallet_id=wallet_id,
            source=source,
            granted=credits,
            remaining=credits,
            expired=0,
            expires_at=expires_at,
            reference=reference,
            created_at=now,
        )
    )


def close_lot(conn: Connection, lot_id: str, *, reason: str, expired: int, now: datetime) -> None:
    """Empty a lot for good: what it still held (or what comes back to it) is gone."""
    conn.execute(
        update(lots)
        .where(lots.c.id == lot_id)
        .values(
            remaining=0,
            expired=lots.c.expired + expired,
            closed_at=func.coalesce(lots.c.closed_at, now),
            closed_reason=func.coalesce(lots.c.closed_reason, reason),
        )
    )


def get_lot(conn: Connection, lot_id: str) -> AnyRow | None:
    return conn.execute(select(lots).where(lots.c.id == lot_id)).one_or_none()


def lots_by_id(conn: Connection, lot_ids: Iterable[str]) -> dict[str, AnyRow]:
    rows = conn.execute(select(lots).where(lots.c.id.in_(list(lot_ids)))).all()
    return {row.id: row for row in rows}


def period_lots(
    conn: Connection, wallet_id: str, period_start: datetime, period_end: datetime
) -> list[AnyRow]:
    """The monthly (subscription and rollover) lots that end with this period."""
    return list(
        conn.execute(
            select(lots).where(
                lots.c.wallet_id == wallet_id,
                lots.c.source.in_(("subscription", "rollover")),
                lots.c.expires_at > period_start,
                lots.c.expires_at <= period_end,
            )
        ).all()
    )


def due_lots(conn: Connection, now: datetime, limit: int) -> list[AnyRow]:
    return list(
        conn.execute(
            select(lots.c.id, lots.c.wallet_id)
            .where(lots.c.remaining > 0, lots.c.expires_at <= now)
            .order_by(lots.c.wallet_id)
            .limit(limit)
        ).all()
    )


def allocations(parts: Iterable[HoldPart]) -> list[Allocation]:
    return [Allocation(part.lot_id, part.position, part.credits) for part in parts]


def pending_on_lot(conn: Connection, lot_id: str) -> int:
    value = conn.execute(
        select(func.coalesce(func.sum(hold_lots.c.credits), 0))
        .select_from(hold_lots.join(holds, holds.c.id == hold_lots.c.hold_id))
        .where(hold_lots.c.lot_id == lot_id, holds.c.status == "pending")
    ).scalar_one()
    return int(value)


def wallet_owner_user(conn: Connection, wallet_id: str) -> str | None:
    """The user who owns ``wallet_id``: its user, or its team's owner."""
    row = conn.execute(
        select(wallets.c.owner_kind, wallets.c.owner_id).where(wallets.c.id == wallet_id)
    ).first()
    if row is None:
        return None
    if row.owner_kind == "user":
        return str(row.owner_id)
    owner = conn.execute(select(teams.c.owner_id).where(teams.c.id == row.owner_id)).scalar()
    return None if owner is None else str(owner)

"""All SQL of the ledger (SQLAlchemy Core). Callers own the transaction.

The statements of the hot path (hold, capture, release) are built once, at
import, with bind parameters: building a Core statement costs more than
executing a cached one, and these run for every generation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    hold_lots,
    holds,
    journal_entries,
    ledger_operations,
    lots,
    usage_daily,
    wallets,
)
from plasmaart.ledger.rules import Allocation, LotView

# A row of any shape (SQLAlchemy 2.1 types rows by their columns).
AnyRow = Row[*tuple[Any, ...]]

# Lock the wallet and look its idempotency key up in one round trip.
_LOCK_WALLET = (
    select(
        wallets.c.available,
        wallets.c.held,
        ledger_operations.c.operation,
        ledger_operations.c.request_hash,
        ledger_operations.c.result,
    )
    .select_from(
        wallets.outerjoin(
            ledger_operations, ledger_operations.c.idempotency_key == bindparam("b_key")
        )
    )
    .where(wallets.c.id == bindparam("b_wallet"))
    .with_for_update(of=wallets)
)
_READ_WALLET = select(wallets.c.available, wallets.c.held).where(
    wallets.c.id == bindparam("b_wallet")
)
_STORE_WALLET = (
    update(wallets)
    .where(wallets.c.id == bindparam("b_wallet"))
    .values(available=bindparam("b_available"), held=bindparam("b_held"))
)
_RECORD_OPERATION = insert(ledger_operations)
_OPEN_LOTS = select(
    lots.c.id, lots.c.source, lots.c.remaining, lots.c.expires_at, lots.c.created_at
).where(lots.c.wallet_id == bindparam("b_wallet"), lots.c.remaining > 0)
_TAKE_FROM_LOT = (
    update(lots)
    .where(lots.c.id == bindparam("b_lot"))
    .values(remaining=lots.c.remaining - bindparam("b_take"))
)
_GIVE_BACK_TO_LOT = (
    update(lots)
    .where(lots.c.id == bindparam("b_lot"))
    .values(remaining=lots.c.remaining + bindparam("b_credits"))
)
_INSERT_HOLD = insert(holds)
_INSERT_HOLD_LOTS = insert(hold_lots)
_INSERT_ENTRIES = insert(journal_entries)
_HOLD_WALLET = select(holds.c.wallet_id).where(holds.c.id == bindparam("b_hold"))
# The hold and its allocations, one row per lot it drew from.
_HOLD_WITH_LOTS = (
    select(
        holds.c.amount,
        holds.c.status,
        holds.c.generation_id,
        holds.c.model,
        hold_lots.c.lot_id,
        hold_lots.c.position,
        hold_lots.c.credits,
        lots.c.expires_at,
        lots.c.closed_reason,
    )
    .select_from(
        holds.join(hold_lots, hold_lots.c.hold_id == holds.c.id).join(
            lots, lots.c.id == hold_lots.c.lot_id
        )
    )
    .where(holds.c.id == bindparam("b_hold"))
)
_SETTLE_HOLD_LOT = (
    update(hold_lots)
    .where(hold_lots.c.hold_id == bindparam("b_hold"), hold_lots.c.lot_id == bindparam("b_lot"))
    .values(captured=bindparam("b_cap"), released=bindparam("b_rel"))
)
_RESOLVE_HOLD = (
    update(holds)
    .where(holds.c.id == bindparam("b_hold"), holds.c.status == "pending")
    .values(
        captured=bindparam("b_captured"),
        released=bindparam("b_released"),
        status=bindparam("b_status"),
        resolved_at=bindparam("b_now"),
    )
)


def _usage_upsert(dialect_insert: Any) -> Any:
    statement = dialect_insert(usage_daily)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["wallet_id", "day", "model"],
        set_={
            "generations": usage_daily.c.generations + excluded.generations,
            "outputs": usage_daily.c.outputs + excluded.outputs,
            "credits": usage_daily.c.credits + excluded.credits,
        },
    )


_ADD_USAGE = {"postgresql": _usage_upsert(pg_insert), "sqlite": _usage_upsert(sqlite_insert)}


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


def lock_wallet(conn: Connection, wallet_id: str, key: str = "") -> AnyRow | None:
    """Lock the wallet row for this transaction, and fetch the operation
    recorded under ``key`` if any: ``(available, held, operation,
    request_hash, result)``, or None when there is no such wallet.

    Every ledger mutation takes this lock first, so that the lots, holds and
    entries of one wallet are only ever changed by one transaction at a time;
    reading the key under the lock lets two racing requests with one key see
    each other.
    """
    return conn.execute(_LOCK_WALLET, {"b_wallet": wallet_id, "b_key": key}).one_or_none()


def read_wallet(conn: Connection, wallet_id: str) -> tuple[int, int] | None:
    row = conn.execute(_READ_WALLET, {"b_wallet": wallet_id}).one_or_none()
    return None if row is None else (int(row.available), int(row.held))


def store_wallet(conn: Connection, wallet_id: str, available: int, held: int) -> None:
    conn.execute(_STORE_WALLET, {"b_wallet": wallet_id, "b_available": available, "b_held": held})


def record_operation(
    conn: Connection,
    key: str,
    operation: str,
    request_hash: str,
    result: dict[str, Any],
    now: datetime,
) -> None:
    conn.execute(
        _RECORD_OPERATION,
        {
            "idempotency_key": key,
            "operation": operation,
            "request_hash": request_hash,
            "result": json.dumps(result, sort_keys=True),
            "created_at": now,
        },
    )


def open_lots(conn: Connection, wallet_id: str) -> list[LotView]:
    """The wallet's lots that still hold credits (expired or not)."""
    return [
        LotView(
            id=row.id,
            source=row.source,
            remaining=int(row.remaining),
            expires_at=None if row.expires_at is None else as_utc(row.expires_at),
            created_at=as_utc(row.created_at),
        )
        for row in conn.execute(_OPEN_LOTS, {"b_wallet": wallet_id})
    ]


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


def take_from_lots(conn: Connection, taken: Sequence[tuple[str, int]]) -> None:
    conn.execute(_TAKE_FROM_LOT, [{"b_lot": lot_id, "b_take": take} for lot_id, take in taken])


def give_back_to_lot(conn: Connection, lot_id: str, credits: int) -> None:
    conn.execute(_GIVE_BACK_TO_LOT, {"b_lot": lot_id, "b_credits": credits})


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


def insert_hold(
    conn: Connection,
    *,
    hold_id: str,
    wallet_id: str,
    credits: int,
    generation_id: str | None,
    model: str | None,
    memo: str | None,
    now: datetime,
) -> None:
    conn.execute(
        _INSERT_HOLD,
        {
            "id": hold_id,
            "wallet_id": wallet_id,
            "amount": credits,
            "captured": 0,
            "released": 0,
            "status": "pending",
            "generation_id": generation_id,
            "model": model,
            "memo": memo,
            "created_at": now,
        },
    )


def insert_hold_lots(conn: Connection, hold_id: str, taken: Sequence[tuple[str, int]]) -> None:
    conn.execute(
        _INSERT_HOLD_LOTS,
        [
            {
                "hold_id": hold_id,
                "lot_id": lot_id,
                "position": position,
                "credits": credits,
                "captured": 0,
                "released": 0,
            }
            for position, (lot_id, credits) in enumerate(taken)
        ],
    )


def hold_wallet(conn: Connection, hold_id: str) -> str | None:
    return conn.execute(_HOLD_WALLET, {"b_hold": hold_id}).scalar_one_or_none()


def hold_with_lots(conn: Connection, hold_id: str) -> list[AnyRow]:
    """The hold (amount, status, generation, model) repeated on one row per lot
    it drew from, with that lot's allocation, expiry and closing reason."""
    return list(conn.execute(_HOLD_WITH_LOTS, {"b_hold": hold_id}).all())


def allocations(rows: Iterable[AnyRow]) -> list[Allocation]:
    return [Allocation(row.lot_id, int(row.position), int(row.credits)) for row in rows]


def settle_hold_lots(
    conn: Connection,
    hold_id: str,
    captured: Sequence[tuple[str, int]],
    released: Sequence[tuple[str, int]],
) -> None:
    parts: dict[str, list[int]] = {}
    for lot_id, credits in captured:
        parts.setdefault(lot_id, [0, 0])[0] += credits
    for lot_id, credits in released:
        parts.setdefault(lot_id, [0, 0])[1] += credits
    conn.execute(
        _SETTLE_HOLD_LOT,
        [
            {"b_hold": hold_id, "b_lot": lot_id, "b_cap": cap, "b_rel": rel}
            for lot_id, (cap, rel) in parts.items()
        ],
    )


def resolve_hold(
    conn: Connection, hold_id: str, *, captured: int, released: int, now: datetime
) -> None:
    conn.execute(
        _RESOLVE_HOLD,
        {
            "b_hold": hold_id,
            "b_captured": captured,
            "b_released": released,
            "b_status": "captured" if captured else "released",
            "b_now": now,
        },
    )


def pending_on_lot(conn: Connection, lot_id: str) -> int:
    value = conn.execute(
        select(func.coalesce(func.sum(hold_lots.c.credits), 0))
        .select_from(hold_lots.join(holds, holds.c.id == hold_lots.c.hold_id))
        .where(hold_lots.c.lot_id == lot_id, holds.c.status == "pending")
    ).scalar_one()
    return int(value)


def insert_entries(conn: Connection, entries: list[dict[str, Any]]) -> None:
    """Insert a non-empty batch of journal entries (one executemany)."""
    conn.execute(_INSERT_ENTRIES, entries)


def add_usage(
    conn: Connection, wallet_id: str, *, day: date, model: str, outputs: int, credits: int
) -> None:
    """Count one captured generation in the wallet's daily usage roll-up."""
    conn.execute(
        _ADD_USAGE[conn.dialect.name],
        {
            "wallet_id": wallet_id,
            "day": day,
            "model": model,
            "generations": 1,
            "outputs": outputs,
            "credits": credits,
        },
    )

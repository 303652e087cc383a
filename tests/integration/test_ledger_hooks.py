"""The ledger's two hooks for the credit controls (ledger/__init__.py), on
SQLite and PostgreSQL: the spend guard a hold asks under the wallet's lock,
and the balance watch an operation calls when it leaves the watched range.
Without controls neither is called."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, update

from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database
from plasmaart.db.tables import holds, wallets
from plasmaart.errors import SpendLimitReached
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.service import LedgerService

START = datetime(2026, 1, 1, tzinfo=UTC)


class Seen:
    """A watch that records what it is shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, conn: Connection, wallet_id: str, available: int) -> None:
        assert not conn.closed  # called inside the operation's transaction
        self.calls.append((wallet_id, available))


def _wallet(db: Database, ledger: LedgerService, credits: int = 100) -> str:
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_hooks")
        ledger.grant(conn, wallet, credits, source="promo", idempotency_key="g1")
    return wallet


def _set(db: Database, wallet: str, **values: int | None) -> None:
    with db.write() as conn:
        conn.execute(update(wallets).where(wallets.c.id == wallet).values(**values))


def test_the_guard_sees_the_limit_under_the_lock_and_can_refuse(db: Database) -> None:
    ledger = LedgerService(ManualClock(START))
    wallet = _wallet(db, ledger)
    asked: list[int | None] = []

    def guard(conn: Connection, monthly_limit: int | None) -> None:
        asked.append(monthly_limit)
        if monthly_limit is not None and monthly_limit < 10:
            raise SpendLimitReached(
                "over", limit="wallet_monthly", resets_at=START + timedelta(days=31), cap=5, spent=0
            )

    with db.write() as conn:
        ledger.hold(conn, wallet, 10, idempotency_key="h1", spend_guard=guard)
    assert asked == [None]
    _set(db, wallet, monthly_spend_limit=5)
    with pytest.raises(SpendLimitReached), db.write() as conn:
        ledger.hold(conn, wallet, 10, idempotency_key="h2", spend_guard=guard)
    assert asked == [None, 5]
    # A replay of a hold already made answers without asking again.
    with db.write() as conn:
        again = ledger.hold(conn, wallet, 10, idempotency_key="h1", spend_guard=guard)
    assert asked == [None, 5]
    with db.read() as conn:
        assert ledger.balance(conn, wallet).available == 90
        assert check_ledger(conn) == []
        assert conn.execute(holds.select()).all()[0].id == again.hold_id


def test_the_watch_is_called_only_outside_its_range(db: Database) -> None:
    seen = Seen()
    ledger = LedgerService(ManualClock(START), watch=seen)
    wallet = _wallet(db, ledger)
    assert seen.calls == []  # no watch set: nothing called
    _set(db, wallet, watch_below=50)
    with db.write() as conn:
        first = ledger.hold(conn, wallet, 40, idempotency_key="h1")
    assert seen.calls == []  # 60 is not below 50
    with db.write() as conn:
        second = ledger.hold(conn, wallet, 20, idempotency_key="h2")
    assert seen.calls == [(wallet, 40)]
    with db.write() as conn:
        ledger.capture(conn, first.hold_id, 10, idempotency_key="c1")
    # The capture released 30: 70 is no longer below the watch.
    assert seen.calls == [(wallet, 40)]
    _set(db, wallet, watch_below=None, watch_above=80)
    with db.write() as conn:
        ledger.release(conn, second.hold_id, idempotency_key="r2")
    assert seen.calls == [(wallet, 40), (wallet, 90)]
    with db.write() as conn:
        ledger.grant(conn, wallet, 5, source="promo", idempotency_key="g2")
    assert seen.calls[-1] == (wallet, 95)
    with db.read() as conn:
        assert check_ledger(conn) == []


def test_an_expiry_shows_the_watch_the_balance_it_left(db: Database) -> None:
    clock = ManualClock(START)
    seen = Seen()
    ledger = LedgerService(clock, watch=seen)
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_expiring")
        ledger.grant(conn, wallet, 30, source="promo", idempotency_key="g1")
        ledger.grant(
            conn,
            wallet,
            70,
            source="subscription",
            expires_at=START + timedelta(days=1),
            idempotency_key="g2",
        )
    _set(db, wallet, watch_below=50)
    clock.advance(timedelta(days=2))
    with db.write() as conn:
        assert ledger.expire_due(conn).credits == 70
    assert seen.calls == [(wallet, 30)]

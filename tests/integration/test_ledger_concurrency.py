"""Holds racing on one wallet that cannot afford them all: no overdraft, nothing lost."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from plasmaart.db.engine import Database
from plasmaart.db.tables import holds
from plasmaart.ledger.errors import HoldAlreadyResolved, InsufficientCredits
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.service import LedgerService

THREADS = 8
ATTEMPTS_PER_THREAD = 6
HOLD = 7
FUNDS = 100  # affords 14 of the 48 holds


def test_racing_holds_never_overdraw(db: Database, ledger: LedgerService) -> None:
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_racer")
        ledger.grant(
            conn,
            wallet,
            60,
            source="subscription",
            idempotency_key="sub",
            expires_at=ledger.clock.now().replace(year=2027),
        )
        ledger.grant(conn, wallet, FUNDS - 60, source="purchase", idempotency_key="pack")

    start = threading.Barrier(THREADS)
    winners: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()

    def race(worker: int) -> None:
        start.wait()
        for attempt in range(ATTEMPTS_PER_THREAD):
            try:
                with db.write() as conn:
                    result = ledger.hold(
                        conn, wallet, HOLD, idempotency_key=f"race:{worker}:{attempt}"
                    )
                with lock:
                    winners.append(result.hold_id)
            except InsufficientCredits as refusal:
                with lock:
                    refused.append(refusal.available)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(race, range(THREADS)))

    assert len(winners) == FUNDS // HOLD
    assert len(winners) + len(refused) == THREADS * ATTEMPTS_PER_THREAD
    assert all(available < HOLD for available in refused)
    with db.read() as conn:
        balance = ledger.balance(conn, wallet)
        recorded = set(
            conn.execute(select(holds.c.id).where(holds.c.wallet_id == wallet)).scalars()
        )
        pending = conn.execute(select(func.sum(holds.c.amount))).scalar_one()
        assert check_ledger(conn) == []
    assert recorded == set(winners)
    assert balance.held == pending == HOLD * len(winners)
    assert balance.available + balance.held == FUNDS


def test_racing_captures_and_releases_resolve_each_hold_once(
    db: Database, ledger: LedgerService
) -> None:
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_settler")
        ledger.grant(conn, wallet, 1000, source="purchase", idempotency_key="pack")
        hold_ids = [
            ledger.hold(conn, wallet, 10, idempotency_key=f"h{n}").hold_id for n in range(10)
        ]
    outcomes: list[str] = []
    refusals: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def settle(worker: int) -> None:
        start.wait()
        for n, hold_id in enumerate(hold_ids):
            try:
                with db.write() as conn:
                    if (worker + n) % 2:
                        ledger.capture(conn, hold_id, 10, idempotency_key=f"c:{worker}:{n}")
                    else:
                        ledger.release(conn, hold_id, idempotency_key=f"r:{worker}:{n}")
                with lock:
                    outcomes.append(hold_id)
            except HoldAlreadyResolved:
                with lock:
                    refusals.append(hold_id)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(settle, range(THREADS)))
    # Any other error would have escaped the thread and failed pool.map.
    assert sorted(outcomes) == sorted(hold_ids)
    assert len(refusals) == len(hold_ids) * (THREADS - 1)
    with db.read() as conn:
        assert check_ledger(conn) == []
        assert ledger.balance(conn, wallet).held == 0

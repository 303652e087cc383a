"""Subscribing grants the period's credits; the worker's clock expires them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from plasmaart.billing.errors import AlreadySubscribed
from plasmaart.billing.periods import add_months
from plasmaart.clock import ManualClock
from plasmaart.errors import InvalidInput
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.queries import ledger_page
from plasmaart.platform import Platform
from plasmaart.worker import Worker


def new_user(platform: Platform, email: str = "kai@example.com") -> tuple[str, str]:
    with platform.db.write() as conn:
        user = platform.accounts.create_user(conn, email, "a long password")
        return user.id, platform.ledger.wallet_of(conn, "user", user.id)


def test_subscribing_grants_the_month_at_once(platform: Platform, clock: ManualClock) -> None:
    user, wallet = new_user(platform)
    with platform.db.write() as conn:
        subscription = platform.billing.subscriptions.subscribe_paid(
            conn, user_id=user, wallet_id=wallet, plan_id="pro", backend="sandbox"
        )
    assert subscription.current_period_end == add_months(clock.now())
    with platform.db.read() as conn:
        balance = platform.ledger.balance(conn, wallet)
        assert platform.billing.plans.subscription(conn, wallet) == subscription
    assert balance.available == 5000
    assert balance.next_expiry == (5000, subscription.current_period_end)
    with pytest.raises(AlreadySubscribed), platform.db.write() as conn:
        platform.billing.subscriptions.subscribe_paid(
            conn, user_id=user, wallet_id=wallet, plan_id="studio", backend="sandbox"
        )
    for plan in ("free", "gold"):
        with pytest.raises(InvalidInput), platform.db.write() as conn:
            platform.billing.subscriptions.subscribe_paid(
                conn, user_id=user, wallet_id=wallet, plan_id=plan, backend="sandbox"
            )


def test_worker_clock_expires_lots_that_fell_due(platform: Platform, clock: ManualClock) -> None:
    user, wallet = new_user(platform)
    with platform.db.write() as conn:
        platform.billing.subscriptions.subscribe_paid(
            conn, user_id=user, wallet_id=wallet, plan_id="starter", backend="sandbox"
        )
        platform.ledger.grant(conn, wallet, 1000, source="purchase", idempotency_key="pack")
        # Canceled at the period end, so nothing renews: the month just expires.
        platform.billing.subscriptions.cancel(conn, platform.billing.customer(conn, user))
    worker = Worker(platform)
    worker.run_once()
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, wallet).available == 3000
    clock.advance(timedelta(days=32))
    worker.run_once()
    with platform.db.read() as conn:
        entries = ledger_page(conn, wallet, limit=1).lines
        assert platform.ledger.balance(conn, wallet).available == 1000
        assert check_ledger(conn) == []
    assert (entries[0].kind, entries[0].amount, entries[0].balance_after) == ("expire", -2000, 1000)


def test_expiry_runs_in_batches_until_done(
    platform: Platform, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plasmaart.ledger import tasks

    monkeypatch.setattr(tasks, "BATCH", 2)
    _, wallet = new_user(platform)
    with platform.db.write() as conn:
        for n in range(5):
            platform.ledger.grant(
                conn,
                wallet,
                10,
                source="promo",
                idempotency_key=f"p{n}",
                expires_at=clock.now() + timedelta(days=1),
            )
    clock.advance(timedelta(days=2))
    result = tasks.expire_due_lots(platform.db, platform.ledger)
    assert (result.lots, result.credits) == (5, 50)


def test_worker_thread_stops_promptly(platform: Platform) -> None:
    import time

    worker = Worker(platform)
    thread = worker.start_thread()
    deadline = time.monotonic() + 10
    while worker.ticks == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.ticks >= 1
    # The clock interval is 30 s: stopping must not wait for it.
    started = time.monotonic()
    worker.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (datetime(2026, 1, 31, 12, tzinfo=UTC), datetime(2026, 2, 28, 12, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC)),
    ],
)
def test_monthly_periods(start: datetime, expected: datetime) -> None:
    assert add_months(start) == expected

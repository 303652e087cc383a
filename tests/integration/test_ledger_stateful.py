"""A Hypothesis state machine drives the ledger and a plain in-memory model of it.

After every step: the journal sums to zero, every wallet's balance equals the
sum of its entries and of its lots, nothing is negative, every hold resolves
at most once, a replay writes nothing, and the database agrees with the model.
Runs on SQLite and PostgreSQL; each example uses a fresh wallet.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database
from plasmaart.ledger.errors import HoldAlreadyResolved, InsufficientCredits
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.rules import LotView, allocate, split_capture
from plasmaart.ledger.service import LedgerService


@dataclass
class ModelLot:
    source: str
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    closed: bool = False


@dataclass
class ModelHold:
    parts: list[tuple[str, int]]
    status: str = "pending"


@dataclass
class Model:
    lots: dict[str, ModelLot] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    consumed: int = 0

    def available(self) -> int:
        return sum(lot.remaining for lot in self.lots.values())

    def held(self) -> int:
        return sum(sum(n for _, n in h.parts) for h in self.holds.values() if h.status == "pending")

    def expire(self, now: datetime) -> None:
        for lot in self.lots.values():
            if lot.expires_at is not None and lot.expires_at <= now and lot.remaining:
                lot.remaining = 0
                lot.closed = True

    def views(self) -> list[LotView]:
        return [
            LotView(i, lot.source, lot.remaining, lot.expires_at, lot.created_at)
            for i, lot in self.lots.items()
            if lot.remaining
        ]


def ledger_machine(db: Database) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")

        def __init__(self) -> None:
            super().__init__()
            self.clock = ManualClock()
            self.ledger = LedgerService(self.clock)
            self.model = Model()
            self.keys = 0
            self.done: list[tuple[str, dict[str, Any], Any]] = []
            with db.write() as conn:
                # A fresh owner per example (id(self) can repeat once an old machine is freed).
                self.wallet = self.ledger.open_wallet(conn, "user", f"usr_{uuid.uuid4().hex}")

        def key(self) -> str:
            self.keys += 1
            return f"{self.wallet}:{self.keys}"

        def call(self, name: str, **kwargs: Any) -> Any:
            with db.write() as conn:
                result = getattr(self.ledger, name)(conn, **kwargs)
            self.done.append((name, kwargs, result))
            return result

        @rule(
            credits=st.integers(1, 500),
            source=st.sampled_from(["promo", "subscription", "rollover", "adjustment", "purchase"]),
            days=st.one_of(st.none(), st.integers(1, 40)),
        )
        def grant(self, credits: int, source: str, days: int | None) -> None:
            now = self.clock.now()
            expires = None if days is None else now + timedelta(days=days)
            result = self.call(
                "grant",
                wallet_id=self.wallet,
                credits=credits,
                source=source,
                expires_at=expires,
                idempotency_key=self.key(),
            )
            self.model.lots[result.lot_id] = ModelLot(source, credits, expires, now)

        @rule(target=holds, credits=st.integers(1, 600))
        def hold(self, credits: int) -> str:
            self.model.expire(self.clock.now())
            if credits > self.model.available():
                with pytest.raises(InsufficientCredits) as refused:
                    self.call(
                        "hold", wallet_id=self.wallet, credits=credits, idempotency_key=self.key()
                    )
                assert refused.value.available == self.model.available()
                return "none"
            expected = allocate(self.model.views(), credits)
            result = self.call(
                "hold", wallet_id=self.wallet, credits=credits, idempotency_key=self.key()
            )
            assert result.lots == expected
            for lot_id, n in expected:
                self.model.lots[lot_id].remaining -= n
            self.model.holds[result.hold_id] = ModelHold(expected)
            return str(result.hold_id)

        def _settle(self, hold_id: str, fraction: float | None) -> None:
            if hold_id == "none":
                return
            model_hold = self.model.holds[hold_id]
            amount = sum(n for _, n in model_hold.parts)
            credits = 0 if fraction is None else round(amount * fraction)
            if model_hold.status != "pending":
                try:
                    self.call("release", hold_id=hold_id, idempotency_key=self.key())
                except HoldAlreadyResolved:
                    return
                raise AssertionError("a hold resolved twice")
            now = self.clock.now()
            from plasmaart.ledger.rules import Allocation

            _, released = split_capture(
                [Allocation(lot, pos, n) for pos, (lot, n) in enumerate(model_hold.parts)], credits
            )
            if fraction is None:
                result = self.call("release", hold_id=hold_id, idempotency_key=self.key())
            else:
                result = self.call(
                    "capture", hold_id=hold_id, credits=credits, idempotency_key=self.key()
                )
            expired = 0
            for lot_id, n in released:
                lot = self.model.lots[lot_id]
                if lot.closed or (lot.expires_at is not None and lot.expires_at <= now):
                    lot.closed = True
                    expired += n
                else:
                    lot.remaining += n
            assert (result.captured, result.expired) == (credits, expired)
            self.model.consumed += credits
            model_hold.status = "captured" if credits else "released"

        @rule(hold_id=consumes(holds), fraction=st.sampled_from([0.0, 0.5, 1.0]))
        def capture(self, hold_id: str, fraction: float) -> None:
            self._settle(hold_id, fraction)

        @rule(hold_id=consumes(holds))
        def release(self, hold_id: str) -> None:
            self._settle(hold_id, None)

        @rule(hold_id=holds)
        def settle_again(self, hold_id: str) -> None:
            """A second capture or release of a resolved hold is refused."""
            if hold_id != "none" and self.model.holds[hold_id].status != "pending":
                self._settle(hold_id, 1.0)

        @rule(days=st.integers(0, 20))
        def expire(self, days: int) -> None:
            self.clock.advance(timedelta(days=days))
            with db.write() as conn:
                self.ledger.expire_due(conn)
            self.model.expire(self.clock.now())

        @rule(monthly=st.integers(0, 2000), cap=st.integers(0, 300))
        def renew(self, monthly: int, cap: int) -> None:
            now = self.clock.now()
            start, end = now - timedelta(days=30), now
            unused = 0
            for lot in self.model.lots.values():
                in_period = lot.expires_at is not None and start < lot.expires_at <= end
                if lot.source in ("subscription", "rollover") and in_period:
                    unused += lot.remaining
                    lot.remaining = 0
                    lot.closed = True
            result = self.call(
                "renew",
                wallet_id=self.wallet,
                period_start=start,
                period_end=end,
                next_period_end=end + timedelta(days=30),
                monthly_credits=monthly,
                rollover_cap=cap,
                idempotency_key=self.key(),
            )
            # Lots the sweep already expired count as unused too, so the
            # model's figure is a lower bound of what may be carried.
            assert min(unused, cap) <= result.rolled_over <= cap
            self.model.expire(now)
            with db.read() as conn:
                lots = self.ledger.balance(conn, self.wallet).lots
            for lot in lots:
                if lot.id not in self.model.lots:
                    self.model.lots[lot.id] = ModelLot(
                        lot.source, lot.remaining, lot.expires_at, now
                    )

        @rule(pick=st.integers(0, 1000))
        def replay(self, pick: int) -> None:
            if not self.done:
                return
            name, kwargs, first = self.done[pick % len(self.done)]
            before = self._counts()
            with db.write() as conn:
                again = getattr(self.ledger, name)(conn, **kwargs)
            assert again == first
            assert self._counts() == before

        def _counts(self) -> tuple[int, ...]:
            with db.read() as conn:
                return tuple(
                    int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                    for table in ("journal_entries", "lots", "holds", "ledger_operations")
                )

        @invariant()
        def books_balance(self) -> None:
            with db.read() as conn:
                assert check_ledger(conn) == []
                balance = self.ledger.balance(conn, self.wallet)
            model = self.model
            stale = sum(
                lot.remaining
                for lot in model.lots.values()
                if lot.expires_at is not None and lot.expires_at <= self.clock.now()
            )
            assert balance.available == model.available() - stale
            assert balance.held == model.held()

    return LedgerMachine


def test_ledger_state_machine(db: Database) -> None:
    run_state_machine_as_test(
        ledger_machine(db),
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

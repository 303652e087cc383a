"""The ledger's rules (DESIGN.md §3) as worked examples, on SQLite and PostgreSQL.

Each test ends by checking the accounting equation with ``check_ledger``.
The running example is a month of a Starter user (2,000 monthly credits).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError

from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database
from plasmaart.db.tables import journal_entries, ledger_operations, lots
from plasmaart.ledger.errors import (
    CaptureExceedsHold,
    HoldAlreadyResolved,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    LotNotFound,
    WalletNotFound,
)
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.queries import ledger_page
from plasmaart.ledger.service import LedgerService

START = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD_END = START + timedelta(days=31)
NEXT_END = PERIOD_END + timedelta(days=28)


@pytest.fixture
def wallet(db: Database, ledger: LedgerService) -> str:
    with db.write() as conn:
        return ledger.open_wallet(conn, "user", "usr_starter")


def subscribe(db: Database, ledger: LedgerService, wallet: str, credits: int = 2000) -> str:
    with db.write() as conn:
        return ledger.grant(
            conn,
            wallet,
            credits,
            source="subscription",
            expires_at=PERIOD_END,
            idempotency_key=f"sub:{wallet}:1",
        ).lot_id


def books_balance(db: Database) -> None:
    with db.read() as conn:
        assert check_ledger(conn) == []


def journal(conn: Connection, wallet: str) -> list[tuple[str, int, int]]:
    rows = conn.execute(
        select(journal_entries.c.kind, journal_entries.c.amount, journal_entries.c.balance_after)
        .where(journal_entries.c.wallet_id == wallet)
        .order_by(journal_entries.c.id)
    )
    return [(row.kind, int(row.amount), int(row.balance_after)) for row in rows]


def count_rows(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {
            name: int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())
            for name in ("lots", "holds", "hold_lots", "journal_entries", "ledger_operations")
        }


def test_a_month_of_a_starter_user(
    db: Database, ledger: LedgerService, clock: ManualClock, wallet: str
) -> None:
    subscribe(db, ledger, wallet)
    with db.write() as conn:
        # Four Flux Schnell images succeed: 4 held, 4 captured.
        generated = ledger.hold(conn, wallet, 4, idempotency_key="g1:hold", generation_id="gen_1")
        assert generated.balance_after == 1996
        ledger.capture(conn, generated.hold_id, 4, idempotency_key="g1:capture")
        # A Kling video fails: nothing is charged.
        failed = ledger.hold(conn, wallet, 280, idempotency_key="g2:hold")
        assert failed.balance_after == 1716
        ledger.release(conn, failed.hold_id, idempotency_key="g2:release")
        # A cancelled Pixverse video: nothing is charged either.
        canceled = ledger.hold(conn, wallet, 80, idempotency_key="g3:hold")
        ledger.release(conn, canceled.hold_id, idempotency_key="g3:release")
        # A pack of 1,000 credits is added to the existing balance.
        ledger.grant(conn, wallet, 1000, source="purchase", idempotency_key="pack:1")
    with db.read() as conn:
        assert ledger.balance(conn, wallet).available == 2996
        assert journal(conn, wallet) == [
            ("grant", 2000, 2000),
            ("hold", -4, 1996),
            ("capture", 0, 1996),
            ("hold", -280, 1716),
            ("release", 280, 1996),
            ("hold", -80, 1916),
            ("release", 80, 1996),
            ("grant", 1000, 2996),
        ]
    # Renewal: the 1,996 unused monthly credits expire (no rollover on Starter),
    # the new 2,000 arrive, the purchased 1,000 are untouched.
    clock.set(PERIOD_END)
    with db.write() as conn:
        renewed = ledger.renew(
            conn,
            wallet,
            period_start=START,
            period_end=PERIOD_END,
            next_period_end=NEXT_END,
            monthly_credits=2000,
            rollover_cap=0,
            idempotency_key="renew:1",
        )
    assert (renewed.expired, renewed.rolled_over, renewed.granted) == (1996, 0, 2000)
    with db.read() as conn:
        balance = ledger.balance(conn, wallet)
    assert balance.available == 3000
    assert [(lot.source, lot.remaining) for lot in balance.lots] == [
        ("subscription", 2000),
        ("purchase", 1000),
    ]
    assert balance.next_expiry == (2000, NEXT_END)
    books_balance(db)


def test_captures_roll_up_usage_by_day_and_model(
    db: Database, ledger: LedgerService, clock: ManualClock, wallet: str
) -> None:
    from plasmaart.db.tables import usage_daily

    subscribe(db, ledger, wallet)
    with db.write() as conn:
        for n, (model, credits, outputs) in enumerate(
            [("flux-schnell", 4, 4), ("flux-schnell", 3, 3), ("pixverse-v4.5", 80, 1)]
        ):
            hold = ledger.hold(
                conn,
                wallet,
                credits,
                idempotency_key=f"h{n}",
                model=model,
                generation_id=f"gen_{n}",
            )
            ledger.capture(conn, hold.hold_id, credits, outputs=outputs, idempotency_key=f"c{n}")
        failed = ledger.hold(conn, wallet, 8, idempotency_key="hf", model="flux-pro-v1.1")
        ledger.release(conn, failed.hold_id, idempotency_key="rf")
    clock.advance(timedelta(days=1))
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 1, idempotency_key="next", model="flux-schnell")
        ledger.capture(conn, hold.hold_id, 1, outputs=1, idempotency_key="next-c")
    with db.read() as conn:
        rows = conn.execute(
            select(
                usage_daily.c.day,
                usage_daily.c.model,
                usage_daily.c.generations,
                usage_daily.c.outputs,
                usage_daily.c.credits,
            ).order_by(usage_daily.c.day, usage_daily.c.model)
        ).all()
        capture = ledger_page(conn, wallet, limit=1).lines[0]
    day = START.date()
    assert [tuple(row) for row in rows] == [
        (day, "flux-schnell", 2, 7, 7),
        (day, "pixverse-v4.5", 1, 1, 80),
        (day + timedelta(days=1), "flux-schnell", 1, 1, 1),
    ]
    assert (capture.kind, capture.model, capture.outputs, capture.credits) == (
        "capture",
        "flux-schnell",
        1,
        1,
    )
    books_balance(db)


def test_burn_order_earliest_expiry_then_source_then_age(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    soon = START + timedelta(days=5)
    with db.write() as conn:
        purchase = ledger.grant(conn, wallet, 100, source="purchase", idempotency_key="a").lot_id
        sub = ledger.grant(
            conn, wallet, 10, source="subscription", expires_at=soon, idempotency_key="b"
        ).lot_id
        promo = ledger.grant(
            conn, wallet, 10, source="promo", expires_at=soon, idempotency_key="c"
        ).lot_id
        later = ledger.grant(
            conn,
            wallet,
            10,
            source="adjustment",
            expires_at=soon + timedelta(days=1),
            idempotency_key="d",
        ).lot_id
        held = ledger.hold(conn, wallet, 35, idempotency_key="h")
    # Same expiry: promo before subscription; then the later expiry; purchases last.
    assert held.lots == [(promo, 10), (sub, 10), (later, 10), (purchase, 5)]
    books_balance(db)


def test_partial_capture_releases_the_rest_to_the_lots_spent_last(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    with db.write() as conn:
        sub = ledger.grant(
            conn, wallet, 2, source="subscription", expires_at=PERIOD_END, idempotency_key="s"
        ).lot_id
        pack = ledger.grant(conn, wallet, 10, source="purchase", idempotency_key="p").lot_id
        hold = ledger.hold(conn, wallet, 4, idempotency_key="h")  # 2 from sub, 2 from pack
        settled = ledger.capture(conn, hold.hold_id, 3, idempotency_key="c")
    assert (settled.captured, settled.released, settled.balance_after) == (3, 1, 9)
    with db.read() as conn:
        remaining = dict(conn.execute(select(lots.c.id, lots.c.remaining)).all())
        assert journal(conn, wallet)[-2:] == [("capture", 0, 8), ("release", 1, 9)]
    # The capture consumed the expiring credits first; the refund went to the pack.
    assert remaining == {sub: 0, pack: 9}
    books_balance(db)


def test_a_hold_resolves_exactly_once(db: Database, ledger: LedgerService, wallet: str) -> None:
    subscribe(db, ledger, wallet)
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 8, idempotency_key="h")
        ledger.capture(conn, hold.hold_id, 8, idempotency_key="c1")
    before = count_rows(db)
    for attempt in (
        lambda conn: ledger.capture(conn, hold.hold_id, 8, idempotency_key="c2"),
        lambda conn: ledger.release(conn, hold.hold_id, idempotency_key="r1"),
    ):
        with pytest.raises(HoldAlreadyResolved), db.write() as conn:
            attempt(conn)
    assert count_rows(db) == before
    books_balance(db)


def test_refusals_write_nothing(db: Database, ledger: LedgerService, wallet: str) -> None:
    subscribe(db, ledger, wallet, credits=100)
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 10, idempotency_key="h")
    before = count_rows(db)
    refusals = [
        (InvalidAmount, lambda c: ledger.grant(c, wallet, 0, source="promo", idempotency_key="x")),
        (InvalidAmount, lambda c: ledger.grant(c, wallet, -5, source="promo", idempotency_key="x")),
        (InvalidAmount, lambda c: ledger.grant(c, wallet, 5, source="gift", idempotency_key="x")),
        (
            WalletNotFound,
            lambda c: ledger.grant(c, "wal_nope", 5, source="promo", idempotency_key="x"),
        ),
        (InsufficientCredits, lambda c: ledger.hold(c, wallet, 91, idempotency_key="x")),
        (CaptureExceedsHold, lambda c: ledger.capture(c, hold.hold_id, 11, idempotency_key="x")),
        (InvalidAmount, lambda c: ledger.capture(c, hold.hold_id, -1, idempotency_key="x")),
        (
            InvalidAmount,
            lambda c: ledger.capture(c, hold.hold_id, 1, outputs=-1, idempotency_key="x"),
        ),
        (HoldNotFound, lambda c: ledger.release(c, "hld_nope", idempotency_key="x")),
        (
            InsufficientCredits,
            lambda c: ledger.adjust(c, wallet, -91, reason="fix", idempotency_key="x"),
        ),
        (InvalidAmount, lambda c: ledger.adjust(c, wallet, 0, reason="fix", idempotency_key="x")),
        (InvalidAmount, lambda c: ledger.adjust(c, wallet, 5, reason=" ", idempotency_key="x")),
        (
            InvalidAmount,
            lambda c: ledger.adjust(
                c, wallet, 5, reason="r", idempotency_key="x", expires_at=START - timedelta(days=1)
            ),
        ),
        (
            InvalidAmount,
            lambda c: ledger.grant(
                c, wallet, 5, source="promo", idempotency_key="x", expires_at=START
            ),
        ),
        (InvalidAmount, lambda c: ledger.hold(c, wallet, 0, idempotency_key="x")),
        (InvalidAmount, lambda c: ledger.hold(c, wallet, 5, idempotency_key="")),
        (
            InvalidAmount,
            lambda c: ledger.renew(
                c,
                wallet,
                period_start=START,
                period_end=PERIOD_END,
                next_period_end=NEXT_END,
                monthly_credits=-1,
                rollover_cap=0,
                idempotency_key="x",
            ),
        ),
        (
            InvalidAmount,
            lambda c: ledger.renew(
                c,
                wallet,
                period_start=PERIOD_END,
                period_end=START,
                next_period_end=NEXT_END,
                monthly_credits=1,
                rollover_cap=0,
                idempotency_key="x",
            ),
        ),
        (LotNotFound, lambda c: ledger.clawback(c, "lot_nope", idempotency_key="x", reason="r")),
        (IdempotencyConflict, lambda c: ledger.hold(c, wallet, 11, idempotency_key="h")),
        (IdempotencyConflict, lambda c: ledger.release(c, hold.hold_id, idempotency_key="h")),
    ]
    for error, call in refusals:
        with pytest.raises(error), db.write() as conn:
            call(conn)
    assert count_rows(db) == before
    with db.read() as conn:
        assert ledger.balance(conn, wallet).available == 90
    books_balance(db)


def test_insufficient_credits_says_required_and_available(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    subscribe(db, ledger, wallet, credits=50)
    with pytest.raises(InsufficientCredits) as refused, db.write() as conn:
        ledger.hold(conn, wallet, 80, idempotency_key="h")
    assert (refused.value.required, refused.value.available) == (80, 50)
    assert refused.value.code == "insufficient_credits"


def test_replay_returns_the_first_result_and_writes_nothing(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    subscribe(db, ledger, wallet)
    with db.write() as conn:
        first = ledger.hold(conn, wallet, 8, idempotency_key="gen_7:hold", generation_id="gen_7")
    before = count_rows(db)
    with db.write() as conn:
        again = ledger.hold(conn, wallet, 8, idempotency_key="gen_7:hold", generation_id="gen_7")
        replayed_grant = ledger.grant(
            conn,
            wallet,
            2000,
            source="subscription",
            expires_at=PERIOD_END,
            idempotency_key=f"sub:{wallet}:1",
        )
    assert again == first
    assert replayed_grant.balance_after == 2000  # the first grant's answer
    assert count_rows(db) == before
    # Every kind of mutation replays: captures, adjustments and clawbacks too.
    with db.write() as conn:
        captured = ledger.capture(conn, first.hold_id, 6, idempotency_key="gen_7:capture")
        lot = ledger.grant(conn, wallet, 10, source="purchase", idempotency_key="p").lot_id
        adjusted = ledger.adjust(conn, wallet, -5, reason="fix", idempotency_key="adj")
        clawed = ledger.clawback(conn, lot, idempotency_key="claw", reason="refund")
    before = count_rows(db)
    with db.write() as conn:
        assert ledger.capture(conn, first.hold_id, 6, idempotency_key="gen_7:capture") == captured
        assert ledger.adjust(conn, wallet, -5, reason="fix", idempotency_key="adj") == adjusted
        assert ledger.clawback(conn, lot, idempotency_key="claw", reason="refund") == clawed
        # A second clawback under another key finds nothing left to take.
        second = ledger.clawback(conn, lot, idempotency_key="claw2", reason="dispute")
    assert second.clawed_back == 0
    assert count_rows(db) == {**before, "ledger_operations": before["ledger_operations"] + 1}
    books_balance(db)


def test_release_into_an_expired_lot_expires_at_once(
    db: Database, ledger: LedgerService, clock: ManualClock, wallet: str
) -> None:
    subscribe(db, ledger, wallet, credits=100)
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 80, idempotency_key="h")
    clock.set(PERIOD_END + timedelta(seconds=1))
    with db.write() as conn:
        swept = ledger.expire_due(conn)
        settled = ledger.release(conn, hold.hold_id, idempotency_key="r")
    assert (swept.lots, swept.credits) == (1, 20)
    assert (settled.released, settled.expired, settled.balance_after) == (80, 80, 0)
    with db.read() as conn:
        assert journal(conn, wallet)[-3:] == [
            ("expire", -20, 0),
            ("release", 80, 80),
            ("expire", -80, 0),
        ]
    books_balance(db)


def test_expiry_sweep_and_expired_credits_are_never_spent(
    db: Database, ledger: LedgerService, clock: ManualClock, wallet: str
) -> None:
    subscribe(db, ledger, wallet, credits=100)
    with db.write() as conn:
        ledger.grant(conn, wallet, 5, source="purchase", idempotency_key="p")
    clock.set(PERIOD_END)
    with db.read() as conn:
        # Not yet swept, but already not spendable.
        assert ledger.balance(conn, wallet).available == 5
    with pytest.raises(InsufficientCredits), db.write() as conn:
        ledger.hold(conn, wallet, 6, idempotency_key="h")
    with db.write() as conn:
        assert ledger.expire_due(conn).credits == 100
        assert ledger.expire_due(conn).lots == 0  # a second sweep writes nothing
    with db.read() as conn:
        assert ledger.balance(conn, wallet).available == 5
    books_balance(db)


def test_renewal_carries_over_up_to_the_rollover_cap(
    db: Database, ledger: LedgerService, clock: ManualClock, wallet: str
) -> None:
    subscribe(db, ledger, wallet, credits=2000)
    with db.write() as conn:
        ledger.hold(conn, wallet, 500, idempotency_key="h")  # still running at renewal
    clock.set(PERIOD_END)
    with db.write() as conn:
        renewed = ledger.renew(
            conn,
            wallet,
            period_start=START,
            period_end=PERIOD_END,
            next_period_end=NEXT_END,
            monthly_credits=2000,
            rollover_cap=300,
            idempotency_key="renew",
        )
    assert (renewed.expired, renewed.rolled_over) == (1500, 300)
    with db.read() as conn:
        balance = ledger.balance(conn, wallet)
    assert balance.available == 2300
    assert {(lot.source, lot.remaining, lot.expires_at) for lot in balance.lots} == {
        ("subscription", 2000, NEXT_END),
        ("rollover", 300, NEXT_END),
    }
    books_balance(db)


def test_renewal_with_cap_above_unused_carries_all_unused(
    db: Database, ledger: LedgerService, clock: ManualClock, wallet: str
) -> None:
    subscribe(db, ledger, wallet, credits=100)
    clock.set(PERIOD_END + timedelta(hours=1))
    with db.write() as conn:
        ledger.expire_due(conn)  # the sweep got there first
        renewed = ledger.renew(
            conn,
            wallet,
            period_start=START,
            period_end=PERIOD_END,
            next_period_end=NEXT_END,
            monthly_credits=0,
            rollover_cap=1000,
            idempotency_key="renew",
        )
    assert (renewed.expired, renewed.rolled_over, renewed.balance_after) == (0, 100, 100)
    books_balance(db)


def test_admin_adjustments_never_go_below_zero(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    with db.write() as conn:
        up = ledger.adjust(conn, wallet, 50, reason="support: failed render", idempotency_key="a")
        down = ledger.adjust(conn, wallet, -20, reason="duplicate grant", idempotency_key="b")
    assert (up.balance_after, down.balance_after) == (50, 30)
    with pytest.raises(InsufficientCredits), db.write() as conn:
        ledger.adjust(conn, wallet, -31, reason="too much", idempotency_key="c")
    books_balance(db)


def test_clawback_takes_what_remains_and_reports_what_was_spent(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    with db.write() as conn:
        pack = ledger.grant(conn, wallet, 1000, source="purchase", idempotency_key="p").lot_id
        spent = ledger.hold(conn, wallet, 300, idempotency_key="h1")
        ledger.capture(conn, spent.hold_id, 300, idempotency_key="c1")
        running = ledger.hold(conn, wallet, 100, idempotency_key="h2")
        clawed = ledger.clawback(conn, pack, idempotency_key="refund", reason="charge.refunded")
    assert (clawed.clawed_back, clawed.spent, clawed.held, clawed.balance_after) == (
        600,
        300,
        100,
        0,
    )
    # The running generation fails: its credits go back to a refunded lot, so
    # they are clawed back at once instead of becoming spendable.
    with db.write() as conn:
        settled = ledger.release(conn, running.hold_id, idempotency_key="r2")
    assert (settled.expired, settled.balance_after) == (100, 0)
    books_balance(db)


def test_database_constraints_stop_a_negative_balance(db: Database, wallet: str) -> None:
    """Even a bug that bypasses the service cannot make a balance negative."""
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(text("UPDATE wallets SET available = -1 WHERE id = :w"), {"w": wallet})
    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(
            text(
                "INSERT INTO journal_entries (wallet_id, kind, from_account, to_account, credits,"
                " amount, balance_after, held_after, created_at) VALUES (:w, 'grant', 'issuance',"
                " 'wallet', 5, -5, 0, 0, :now)"
            ),
            {"w": wallet, "now": START},
        )


# A hold of 10 in each state, and a direct edit that would leave its status
# and its amounts disagreeing; the CHECK constraint that refuses it.
UNTIED_HOLD_EDITS = [
    ("pending", "status = 'captured', resolved_at = created_at", "captured_parts"),
    ("pending", "status = 'released', resolved_at = created_at", "released_parts"),
    ("pending", "captured = 10", "pending_parts"),
    ("pending", "released = 10, resolved_at = created_at", "pending_parts"),
    ("captured", "status = 'released'", "released_parts"),
    ("captured", "status = 'pending', resolved_at = NULL", "pending_parts"),
    ("captured", "captured = 0, released = 10", "captured_parts"),
    ("captured", "captured = 9", "captured_parts"),
    ("partial", "status = 'released'", "released_parts"),
    ("partial", "captured = 4, released = 5", "captured_parts"),
    ("released", "status = 'captured'", "captured_parts"),
    ("released", "captured = 10, released = 0", "released_parts"),
    ("released", "resolved_at = NULL", "released_parts"),
]


@pytest.mark.parametrize(("state", "edit", "constraint"), UNTIED_HOLD_EDITS)
def test_database_ties_a_holds_status_to_its_amounts(
    db: Database, ledger: LedgerService, wallet: str, state: str, edit: str, constraint: str
) -> None:
    """A status flipped without its amounts, or amounts changed under the
    status, is refused by the database itself, whatever code runs the SQL."""
    from sqlalchemy.exc import IntegrityError

    subscribe(db, ledger, wallet, credits=100)
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 10, idempotency_key="h").hold_id
        if state == "captured":
            ledger.capture(conn, hold, 10, idempotency_key="c")
        elif state == "partial":
            ledger.capture(conn, hold, 6, idempotency_key="c")
        elif state == "released":
            ledger.release(conn, hold, idempotency_key="r")
    before = count_rows(db)
    with pytest.raises(IntegrityError, match=f"ck_holds_{constraint}"), db.write() as conn:
        conn.execute(text(f"UPDATE holds SET {edit} WHERE id = :id"), {"id": hold})
    assert count_rows(db) == before
    books_balance(db)


def test_ledger_operations_are_recorded_once_per_key(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    subscribe(db, ledger, wallet)
    with db.read() as conn:
        keys = conn.execute(select(func.count()).select_from(ledger_operations)).scalar_one()
    assert keys == 1


def test_wallet_lookup(db: Database, ledger: LedgerService, wallet: str) -> None:
    with db.write() as conn:
        assert ledger.open_wallet(conn, "user", "usr_starter") == wallet
        assert ledger.wallet_of(conn, "user", "usr_starter") == wallet
        with pytest.raises(WalletNotFound):
            ledger.wallet_of(conn, "user", "usr_nobody")
        with pytest.raises(WalletNotFound):
            ledger.balance(conn, "wal_nope")


def test_check_ledger_finds_corrupted_books(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    """The checker every other test relies on must be able to fail."""
    subscribe(db, ledger, wallet, credits=100)
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 10, idempotency_key="h")
        done = ledger.hold(conn, wallet, 5, idempotency_key="h2", model="flux-dev")
        ledger.capture(conn, done.hold_id, 5, outputs=1, idempotency_key="c2")
    corruptions = [
        ("UPDATE wallets SET available = available + 1", "available 86, entries 85"),
        ("UPDATE usage_daily SET credits = credits + 1", "usage roll-up disagrees"),
        ("UPDATE wallets SET held = held + 1", "held 11"),
        ("UPDATE lots SET remaining = remaining - 1", "granted 100 but 99 accounted for"),
        (
            "UPDATE journal_entries SET balance_after = balance_after + 1 WHERE kind = 'grant'",
            "balance_after 101",
        ),
        ("UPDATE holds SET amount = 11 WHERE status = 'pending'", "amount 11 but lots give 10"),
        ("UPDATE hold_lots SET captured = 4 WHERE captured = 5", "captured/released disagree"),
        (
            "UPDATE holds SET status = 'released', released = amount, resolved_at = created_at"
            " WHERE status = 'pending'",
            "pending holds 0",
        ),
        (
            "UPDATE holds SET captured = 4, released = 1 WHERE status = 'captured'",
            "consumed account 5 but holds captured 4",
        ),
        # A transfer rewritten to come from elsewhere: the holds account no
        # longer matches the wallet's held credits.
        (
            "UPDATE journal_entries SET from_account = 'issuance' WHERE kind = 'capture'",
            "held 10, entries 15",
        ),
    ]
    for statement, symptom in corruptions:
        with db.write() as conn:
            conn.execute(text(statement))
            problems = check_ledger(conn)
            conn.rollback()
        assert any(symptom in problem for problem in problems), (statement, problems)
    assert hold.credits == 10
    books_balance(db)


def test_entries_page_newest_first(db: Database, ledger: LedgerService, wallet: str) -> None:
    with db.write() as conn:
        for n in range(7):
            ledger.grant(conn, wallet, n + 1, source="promo", idempotency_key=f"g{n}")
    with db.read() as conn:
        first = ledger_page(conn, wallet, limit=4).lines
        second = ledger_page(conn, wallet, limit=4, before=first[-1].position).lines
    assert [e.credits for e in first] == [7, 6, 5, 4]
    assert [e.credits for e in second] == [3, 2, 1]


def test_a_connection_without_a_transaction_gets_one(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    # The hot path runs on the driver's cursor: it must still write inside
    # the caller's transaction (begun for it if need be), never in autocommit.
    subscribe(db, ledger, wallet, credits=100)
    before = count_rows(db)
    with db.engine.connect() as conn:
        assert not conn.in_transaction()
        hold = ledger.hold(conn, wallet, 10, idempotency_key="no-tx:hold")
        assert conn.in_transaction()
        conn.rollback()
    assert count_rows(db) == before
    with db.engine.connect() as conn:
        hold = ledger.hold(conn, wallet, 10, idempotency_key="no-tx:hold")
        ledger.capture(conn, hold.hold_id, 10, idempotency_key="no-tx:capture")
        conn.commit()
    with db.read() as conn:
        assert journal(conn, wallet)[-2:] == [("hold", -10, 90), ("capture", 0, 90)]
    books_balance(db)


def test_a_write_the_database_refuses_fails_the_operation_and_writes_nothing(
    db: Database, ledger: LedgerService, wallet: str
) -> None:
    # The hot path's writes are sent together at the end (in one pipeline on
    # PostgreSQL): a refusal by the database surfaces from the ledger call as
    # SQLAlchemy's exception, and the caller's rollback leaves nothing behind.
    subscribe(db, ledger, wallet, credits=100)
    with db.write() as conn:
        hold = ledger.hold(conn, wallet, 10, idempotency_key="refused:first")
        if db.is_sqlite:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_daily"
                " BEGIN SELECT RAISE(ABORT, 'usage refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_usage() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'usage refused'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_daily"
                " FOR EACH ROW EXECUTE FUNCTION refuse_usage()"
            )
    before = count_rows(db)
    with pytest.raises(DBAPIError, match="usage refused"), db.write() as conn:
        ledger.capture(conn, hold.hold_id, 10, idempotency_key="refused:capture")
    assert count_rows(db) == before
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_daily")).scalar_one() == 0
        status = conn.execute(
            text("SELECT status FROM holds WHERE id = :id"), {"id": hold.hold_id}
        ).scalar_one()
    assert status == "pending"
    books_balance(db)

"""Fair use off the request path, on SQLite and PostgreSQL: a submission's
and a cancel's write transactions issue no fair-use statement (no copy count,
no account lock, no signal), a refusal by the rate limit writes nothing, the
plan's limit is read once a second per account, and a flood of identical
prompts still records its signals and flags and suspends the account once
the flusher writes them (at most a second later; here ``flush()``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import abuse_flags, abuse_signals, audit_log, generations
from plasmaart.fairuse.counters import PendingSignal
from plasmaart.fairuse.service import FairUseService
from plasmaart.fairuse.tasks import FLUSH_INTERVAL_S
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from tests.support.accounts import TestUser, make_user
from tests.support.matrix import changes, snapshot

ONE_IMAGE = {"model": "flux-schnell", "prompt": "a red fox in snow"}
# What only fair use reads or writes in a transaction: its tables, the copy
# count's self-join of generations, the account's row lock.
FAIR_USE_MARKS = ("abuse_signals", "abuse_flags", "AS this", "FROM users")


@dataclass
class Transactions:
    """Every committed write transaction's statements, in order."""

    done: list[list[str]] = field(default_factory=list)
    _open: dict[int, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def with_insert_into(self, table: str) -> list[list[str]]:
        with self._lock:
            return [t for t in self.done if any(f"INSERT INTO {table}" in s for s in t)]


@pytest.fixture
def transactions(platform: Platform) -> Iterator[Transactions]:
    seen = Transactions()
    engine = platform.db.engine

    def begin(conn: Connection) -> None:
        with seen._lock:
            seen._open[id(conn)] = []

    def statement(conn: Connection, *args: Any) -> None:
        with seen._lock:
            if id(conn) in seen._open:
                seen._open[id(conn)].append(" ".join(str(args[1]).split()))

    def commit(conn: Connection) -> None:
        with seen._lock:
            done = seen._open.pop(id(conn), None)
            if done is not None and any(not s.startswith("SELECT") for s in done):
                seen.done.append(done)

    def rollback(conn: Connection) -> None:
        with seen._lock:
            seen._open.pop(id(conn), None)

    listeners = [
        ("begin", begin),
        ("before_cursor_execute", statement),
        ("commit", commit),
        ("rollback", rollback),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    yield seen
    for name, fn in listeners:
        event.remove(engine, name, fn)


@pytest.fixture
def api(platform: Platform) -> Iterator[TestClient]:
    """The app, with its flusher stopped: the test flushes by hand."""
    with TestClient(create_app(platform, embedded_worker=False)) as client:
        assert platform.fairuse.flusher is not None
        platform.fairuse.flusher.stop()
        yield client


def fair_use_statements(transaction: list[str]) -> list[str]:
    return [s for s in transaction if any(mark in s for mark in FAIR_USE_MARKS)]


def signals_and_flags(platform: Platform, user: TestUser) -> tuple[list[str], list[str]]:
    with platform.db.read() as conn:
        kinds = conn.execute(
            select(abuse_signals.c.kind)
            .where(abuse_signals.c.user_id == user.id)
            .order_by(abuse_signals.c.id)
        ).scalars()
        statuses = conn.execute(
            select(abuse_flags.c.status).where(abuse_flags.c.user_id == user.id)
        ).scalars()
        return list(kinds), list(statuses)


def status_of(platform: Platform, user: TestUser) -> str:
    with platform.db.read() as conn:
        return platform.accounts.get(conn, user.id).status


def test_a_flood_of_one_prompt_writes_nothing_on_the_request_path_then_suspends(
    platform: Platform, api: TestClient, transactions: Transactions
) -> None:
    """The identical-prompt flood of test_fairuse, request by request: each
    submission's one write transaction is the submission alone; the flush
    records the signals, flags at the 5th copy and suspends at the 7th, as
    before, and cancels the jobs queued meanwhile, the last one included."""
    platform.fairuse.policy = replace(
        platform.fairuse.policy, flag_at=10, suspend_at=20, identical_prompts_allowed=2
    )
    bot = make_user(platform, "bot@example.com", credits=100)  # Free, never paid
    made = []
    outcomes = []
    for copy in range(1, 8):
        answer = api.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth)
        assert answer.status_code == 201, answer.text
        assert answer.json()["status"] == "queued"
        made.append(answer.json()["id"])
        # Nothing of fair use was read or written while the request ran.
        submission = transactions.with_insert_into("generations")[-1]
        assert fair_use_statements(submission) == [], submission
        assert signals_and_flags(platform, bot)[0] == ["identical_prompt"] * max(0, copy - 3)
        platform.fairuse.flush()
        outcomes.append(signals_and_flags(platform, bot))
    assert len(transactions.with_insert_into("generations")) == 7
    # The 3rd copy is the first signal (4 points): the 5th flags, the 7th suspends.
    assert [len(kinds) for kinds, _ in outcomes] == [0, 0, 1, 2, 3, 4, 5]
    assert [flags for _, flags in outcomes] == [[]] * 4 + [["open"]] * 2 + [["suspended"]]
    assert status_of(platform, bot) == "suspended"
    with platform.db.read() as conn:
        jobs = conn.execute(
            select(generations.c.id, generations.c.status, generations.c.error_code).where(
                generations.c.user_id == bot.id
            )
        ).all()
        actions = list(
            conn.execute(
                select(audit_log.c.action)
                .where(audit_log.c.target == bot.id)
                .order_by(audit_log.c.id)
            ).scalars()
        )
        assert platform.ledger.balance(conn, bot.wallet_id).held == 0
    assert sorted(jobs) == sorted((i, "canceled", "account_suspended") for i in made)
    assert actions.index("abuse.flag") < actions.index("user.suspend")
    assert actions.index("user.suspend") < actions.index("abuse.suspend")


def test_a_cancel_writes_no_signal_in_its_transaction(
    platform: Platform, api: TestClient, transactions: Transactions, clock: ManualClock
) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)
    made = api.post("/v1/generations", json=ONE_IMAGE, headers=ann.auth).json()
    clock.advance(timedelta(seconds=5))
    canceled = api.post(f"/v1/generations/{made['id']}/cancel", headers=ann.auth)
    assert canceled.status_code == 200, canceled.text
    cancel = [t for t in transactions.done if any("UPDATE generations" in s for s in t)][-1]
    assert fair_use_statements(cancel) == [], cancel
    assert signals_and_flags(platform, ann) == ([], [])
    # Quick: churn, written by the flush, as of when the cancel happened.
    assert platform.fairuse.flush() == 1
    assert signals_and_flags(platform, ann) == (["submit_cancel"], [])
    with platform.db.read() as conn:
        at = conn.execute(select(abuse_signals.c.created_at)).scalar_one()
    assert at.replace(tzinfo=None) == clock.now().replace(tzinfo=None)


def test_a_rate_limit_refusal_writes_nothing_and_its_signal_comes_after(
    platform: Platform, api: TestClient
) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)  # Free: 40 quotes a minute
    for _ in range(40):
        assert api.post("/v1/quotes", json=ONE_IMAGE, headers=ann.auth).status_code == 200
    before = snapshot(platform)
    refused = api.post("/v1/quotes", json=ONE_IMAGE, headers=ann.auth)
    assert refused.status_code == 429, refused.text
    assert changes(before, snapshot(platform, settle=False)) == []
    assert platform.fairuse.flush() == 1
    assert signals_and_flags(platform, ann) == (["rate_limited"], [])


def test_the_plans_limit_is_read_once_a_second_per_account(
    platform: Platform, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)
    bob = make_user(platform, "bob@example.com", plan="pro")
    reads: list[str] = []
    read = FairUseService.requests_per_minute

    def counted(self: FairUseService, conn: Connection, user: Any, budget: Any) -> int:
        reads.append(user.id)
        return read(self, conn, user, budget)

    monkeypatch.setattr(FairUseService, "requests_per_minute", counted)
    limits = [
        api.post("/v1/generations/gen_nope/cancel", headers=user.auth).headers["RateLimit-Limit"]
        for user in (ann, ann, bob, ann, bob)
    ]
    assert limits == ["10", "10", "60", "10", "60"]
    assert reads == [ann.id, bob.id]


def test_a_signal_that_cannot_be_recorded_does_not_keep_the_others_out(
    platform: Platform,
) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)
    now = platform.clock.now()
    for user_id in (ann.id, "usr_gone", ann.id):
        platform.fairuse.pending.put(
            PendingSignal(user_id, "invalid_input", {"n": user_id}, None, now)
        )
    assert platform.fairuse.flush() == 2
    assert signals_and_flags(platform, ann) == (["invalid_input"] * 2, [])
    assert len(platform.fairuse.pending) == 0


def test_closing_the_platform_writes_what_is_queued(platform: Platform) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)
    platform.fairuse.enqueue_signal(ann.id, "invalid_input", {"path": "/v1/generations"})
    assert platform.fairuse.flusher is not None
    platform.fairuse.flusher.stop()  # what Platform.close() and the app's shutdown do
    assert signals_and_flags(platform, ann) == (["invalid_input"], [])


def test_the_flusher_writes_within_a_second(platform: Platform) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)
    flusher = platform.fairuse.flusher
    assert flusher is not None
    flusher.start()
    try:
        platform.fairuse.enqueue_signal(ann.id, "invalid_input", {"path": "/v1/quotes"})
        queued = time.monotonic()
        for _ in range(40):  # bounded: 2 s, twice the interval
            if signals_and_flags(platform, ann)[0]:
                break
            time.sleep(0.05)
        assert signals_and_flags(platform, ann) == (["invalid_input"], [])
        # Up to one interval, plus this machine's scheduling.
        assert time.monotonic() - queued < 2 * FLUSH_INTERVAL_S
    finally:
        flusher.stop()

"""FairUseService against the database, on SQLite and PostgreSQL: one cause
counts once, one unresolved flag per account even under concurrent signals,
reinstatement from anywhere wipes the slate, and the admin's list pages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.accounts.service import UserNotFound
from plasmaart.clock import ManualClock
from plasmaart.db.tables import abuse_flags, abuse_signals, generations
from plasmaart.fairuse.service import Assessment
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from tests.support.accounts import TestUser, make_user
from tests.support.platforms import running_platform, settings_for

THREADS = 8


@pytest.fixture
def platform(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    # clawback: 40 points each; flag at 40, suspend at 120 (three).
    settings = settings_for(
        database_url, tmp_path / "var", fairuse_flag_score=40, fairuse_suspend_score=120
    )
    with running_platform(settings, clock) as built:
        yield built


def clawback(platform: Platform, user: TestUser, payment_id: str) -> Assessment:
    with platform.db.write() as conn:
        return platform.fairuse.record_clawback(
            conn,
            user.id,
            payment_id=payment_id,
            credits_clawed_back=10,
            credits_spent=5,
            reason="dispute",
        )


def unresolved(platform: Platform, user: TestUser) -> list[str]:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(abuse_flags.c.status).where(
                abuse_flags.c.user_id == user.id, abuse_flags.c.status != "resolved"
            )
        )
        return [row.status for row in rows]


def test_one_cause_counts_once(platform: Platform) -> None:
    eve = make_user(platform, "eve@example.com")
    first = clawback(platform, eve, "pay_1")
    again = clawback(platform, eve, "pay_1")
    assert (first.recorded, first.score.total, first.verdict) == (True, 40, "flag")
    assert (again.recorded, again.score.total, again.flag_id) == (False, 40, first.flag_id)
    with platform.db.read() as conn:
        assert len(conn.execute(select(abuse_signals)).all()) == 1


def test_unknown_users_and_kinds_are_refused(platform: Platform) -> None:
    eve = make_user(platform, "eve@example.com")
    with platform.db.write() as conn, pytest.raises(UserNotFound):
        platform.fairuse.record_signal(conn, "usr_nobody", "clawback", {})
    with platform.db.write() as conn, pytest.raises(ValueError, match="unknown abuse signal"):
        platform.fairuse.record_signal(conn, eve.id, "sneezing", {})  # type: ignore[arg-type]


def test_concurrent_signals_open_one_flag(platform: Platform) -> None:
    eve = make_user(platform, "eve@example.com")
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def report(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            clawback(platform, eve, f"pay_{n}")
        except BaseException as exc:  # collected, and the test fails on any
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert unresolved(platform, eve) == ["suspended"]
    with platform.db.read() as conn:
        (flag,) = conn.execute(select(abuse_flags)).all()
    assert flag.score == 40 * THREADS


def test_a_reinstatement_from_the_command_line_resolves_the_flag_lazily(
    platform: Platform, clock: ManualClock
) -> None:
    eve = make_user(platform, "eve@example.com")
    for n in range(3):
        clawback(platform, eve, f"pay_{n}")
    assert unresolved(platform, eve) == ["suspended"]
    clock.advance(timedelta(minutes=1))
    with platform.db.write() as conn:  # what `plasmaart users reinstate` does
        user = platform.accounts.get(conn, eve.id)
        platform.accounts.set_status(conn, user, "active", actor="cli", reason=None)
    clock.advance(timedelta(minutes=1))
    fresh = clawback(platform, eve, "pay_new")
    # The old flag is resolved; one new clawback flags anew, it does not suspend.
    assert (fresh.score.total, fresh.verdict, fresh.suspended_now) == (40, "flag", False)
    assert unresolved(platform, eve) == ["open"]
    with platform.db.read() as conn:
        statuses = sorted(row.status for row in conn.execute(select(abuse_flags)))
        assert statuses == ["open", "resolved"]
        assert platform.accounts.get(conn, eve.id).status == "active"


def test_a_flag_of_an_account_suspended_by_hand_says_so(platform: Platform) -> None:
    eve = make_user(platform, "eve@example.com")
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, eve.id)
        platform.accounts.set_status(conn, user, "suspended", actor="admin", reason="by hand")
    found = clawback(platform, eve, "pay_1")
    assert (found.verdict, found.suspended_now) == ("flag", False)
    assert unresolved(platform, eve) == ["suspended"]


def test_the_admin_list_pages_and_filters(platform: Platform) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    users = [make_user(platform, f"u{n}@example.com") for n in range(3)]
    for user in users:
        clawback(platform, user, "pay_1")
        time.sleep(0.002)  # flag ids are ordered by the millisecond they were made in
    with TestClient(create_app(platform, embedded_worker=False)) as client:
        first = client.get("/v1/admin/abuse?limit=2", headers=admin.auth).json()
        assert [flag["email"] for flag in first["data"]] == ["u2@example.com", "u1@example.com"]
        second = client.get(
            f"/v1/admin/abuse?limit=2&cursor={first['next_cursor']}", headers=admin.auth
        ).json()
        assert [flag["email"] for flag in second["data"]] == ["u0@example.com"]
        assert second["next_cursor"] is None
        assert client.get("/v1/admin/abuse?status=suspended", headers=admin.auth).json() == {
            "data": [],
            "next_cursor": None,
        }
        refused = client.get("/v1/admin/abuse?status=nonsense", headers=admin.auth)
        assert refused.status_code == 422
        hidden = client.get("/v1/admin/abuse", headers=users[0].auth)
        assert hidden.status_code == 404


def test_submissions_racing_a_suspension_neither_deadlock_nor_lose_credits(
    platform: Platform,
) -> None:
    """Submissions (the wallet only: their signals are queued) and signals
    that suspend, recorded by the flusher or in a clawback's transaction
    (account row, then the wallets of the queued jobs), never deadlock."""
    eve = make_user(platform, "eve@example.com", plan="studio")
    # Every copy of the prompt after the first is a signal, which the
    # flusher records (and scores, and acts on) while submissions go on.
    platform.fairuse.policy = replace(platform.fairuse.policy, identical_prompts_allowed=1)
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []
    submitting = threading.Event()

    def submit(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                with platform.db.write() as conn:
                    user = platform.accounts.get(conn, eve.id)
                    request = GenerationRequest("flux-schnell", "the same prompt")
                    generation = platform.generations.submit(conn, user, request)
                    platform.fairuse.after_submit(conn, user, generation, request)
        except BaseException as exc:  # collected, and the test fails on any
            errors.append(exc)

    def flush() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(200):  # bounded: until the submissions are done
                platform.fairuse.flush()
                if not submitting.is_set():
                    return
                time.sleep(0.01)
        except BaseException as exc:  # collected, and the test fails on any
            errors.append(exc)

    def report(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            clawback(platform, eve, f"pay_{n}")
        except BaseException as exc:  # collected, and the test fails on any
            errors.append(exc)

    threads = [
        threading.Thread(target=submit if n % 2 else report, args=(n,)) for n in range(THREADS)
    ]
    flusher = threading.Thread(target=flush)
    submitting.set()
    for thread in [*threads, flusher]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    submitting.clear()
    flusher.join(timeout=60)
    assert not errors, errors
    platform.fairuse.flush()
    with platform.db.read() as conn:
        assert platform.accounts.get(conn, eve.id).status == "suspended"
        assert check_ledger(conn) == []
        queued = conn.execute(
            select(generations.c.credits_held).where(generations.c.status == "queued")
        ).all()
        held = platform.ledger.balance(conn, eve.wallet_id).held
    # Whatever is still held belongs to a job still queued (submitted after
    # the suspension, which the API would have refused at the door).
    assert held == sum(row.credits_held for row in queued)

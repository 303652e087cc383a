"""Suspension and reinstatement have one home, ``SuspensionService``, on
SQLite and PostgreSQL: the same steps whoever decides (an admin, the command
line, fair use), nobody suspends themselves, and a reinstatement resolves
the account's flags. And the platform is wired in construction order: fair
use hears billing's facts through the hooks it registered with when it was
built, and the sandbox billing backend is made once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, select

import plasmaart.billing.sandbox as sandbox_module
from plasmaart.billing.clawbacks import ClawbackOutcome
from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.repository import Payment
from plasmaart.bootstrap import bootstrap
from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import abuse_flags, audit_log, generations, sessions, users
from plasmaart.errors import InvalidInput
from plasmaart.fairuse.service import SYSTEM_ACTOR
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from tests.support.accounts import TestUser, make_user


@pytest.fixture
def platform(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    # One clawback after spending flags (40), three suspend (120).
    settings = Settings(
        database_url=database_url,
        var_dir=tmp_path / "var",
        fairuse_flag_score=40,
        fairuse_suspend_score=120,
    )
    built = bootstrap(settings, clock=clock, migrate=False)
    yield built
    built.close()


def audit_of(platform: Platform, user: TestUser) -> list[tuple[str, str]]:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action)
            .where(audit_log.c.target == user.id)
            .order_by(audit_log.c.id)
        )
        return [(row.actor, row.action) for row in rows]


def state_of(platform: Platform, user: TestUser) -> tuple[str, int, list[str], list[str]]:
    """The account's status, open sessions, its jobs' statuses and flags' statuses."""
    with platform.db.read() as conn:
        status = conn.execute(select(users.c.status).where(users.c.id == user.id)).scalar_one()
        open_sessions = conn.execute(
            select(func.count()).select_from(sessions).where(sessions.c.user_id == user.id)
        ).scalar_one()
        jobs = conn.execute(
            select(generations.c.status).where(generations.c.user_id == user.id)
        ).scalars()
        flags = conn.execute(
            select(abuse_flags.c.status).where(abuse_flags.c.user_id == user.id)
        ).scalars()
        return status, int(open_sessions), sorted(jobs), sorted(flags)


def with_session_and_job(platform: Platform, user: TestUser) -> None:
    with platform.db.write() as conn:
        platform.credentials.open_session(conn, user.id)
        account = platform.accounts.get(conn, user.id)
        platform.generations.submit(conn, account, GenerationRequest("flux-schnell", "a fox"))


def clawback(platform: Platform, user: TestUser, payment_id: str) -> None:
    with platform.db.write() as conn:
        platform.billing.hooks.clawed_back(
            conn,
            ClawbackOutcome(user.id, user.wallet_id, payment_id, 10, 5, 0, "dispute"),
        )


def test_every_door_suspends_alike(platform: Platform) -> None:
    """An admin's API call, the command line's call and fair use's automatic
    suspension take the same steps: status, sessions closed, queued jobs
    canceled, a `user.suspend` entry by whoever decided."""
    admin = make_user(platform, "admin@example.com", admin=True)
    by_admin = make_user(platform, "a@example.com", credits=100)
    by_cli = make_user(platform, "b@example.com", credits=100)
    by_fairuse = make_user(platform, "c@example.com", credits=100)
    for user in (by_admin, by_cli, by_fairuse):
        with_session_and_job(platform, user)
        assert state_of(platform, user) == ("active", 1, ["queued"], [])

    with TestClient(create_app(platform, embedded_worker=False)) as client:
        answer = client.post(
            f"/v1/admin/users/{by_admin.id}/suspend", json={"reason": "spam"}, headers=admin.auth
        )
        assert (answer.status_code, answer.json()["status"]) == (200, "suspended"), answer.text
    with platform.db.write() as conn:
        suspended = platform.suspensions.suspend(conn, by_cli.id, actor="cli", reason="spam")
    assert (suspended.user.status, suspended.queued_canceled) == ("suspended", 1)
    for n in range(3):
        clawback(platform, by_fairuse, f"pay_{n}")

    assert state_of(platform, by_admin) == ("suspended", 0, ["canceled"], [])
    assert state_of(platform, by_cli) == ("suspended", 0, ["canceled"], [])
    assert state_of(platform, by_fairuse) == ("suspended", 0, ["canceled"], ["suspended"])
    assert (admin.id, "user.suspend") in audit_of(platform, by_admin)
    assert ("cli", "user.suspend") in audit_of(platform, by_cli)
    assert audit_of(platform, by_fairuse)[-3:] == [
        (SYSTEM_ACTOR, "abuse.flag"),
        (SYSTEM_ACTOR, "user.suspend"),
        (SYSTEM_ACTOR, "abuse.suspend"),
    ]


def test_nobody_suspends_themselves_and_the_refusal_writes_nothing(platform: Platform) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    before = audit_of(platform, admin)
    with TestClient(create_app(platform, embedded_worker=False)) as client:
        answer = client.post(
            f"/v1/admin/users/{admin.id}/suspend", json={"reason": "oops"}, headers=admin.auth
        )
    problem = answer.json()
    assert (answer.status_code, problem["code"]) == (422, "invalid_input"), answer.text
    assert problem["detail"] == "admins cannot suspend themselves"
    with platform.db.write() as conn, pytest.raises(InvalidInput, match="themselves"):
        platform.suspensions.suspend(conn, admin.id, actor=admin.id, reason="oops")
    assert state_of(platform, admin)[0] == "active"
    assert audit_of(platform, admin) == before


def test_reinstating_resolves_the_flags_whoever_reinstates(platform: Platform) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    eve = make_user(platform, "eve@example.com")
    kai = make_user(platform, "kai@example.com")
    for user in (eve, kai):
        for n in range(3):
            clawback(platform, user, f"pay_{user.id}_{n}")
        assert state_of(platform, user)[0::3] == ("suspended", ["suspended"])

    with TestClient(create_app(platform, embedded_worker=False)) as client:
        answer = client.post(f"/v1/admin/users/{eve.id}/reinstate", headers=admin.auth)
        assert (answer.status_code, answer.json()["status"]) == (200, "active"), answer.text
    with platform.db.write() as conn:
        active = platform.suspensions.reinstate(conn, kai.id, actor="cli")
    assert active.status == "active"

    for user, actor in ((eve, admin.id), (kai, "cli")):
        assert state_of(platform, user)[0::3] == ("active", ["resolved"])
        assert audit_of(platform, user)[-2:] == [
            (actor, "user.reinstate"),
            (actor, "abuse.resolve"),
        ]
        with platform.db.read() as conn:
            resolved_by = conn.execute(
                select(abuse_flags.c.resolved_by).where(abuse_flags.c.user_id == user.id)
            ).scalar_one()
        assert resolved_by == actor


def test_fair_use_hears_billing_through_the_hooks_it_registered_with(platform: Platform) -> None:
    """Built after billing, fair use registered its listeners itself: a
    clawback after spending, told through billing's hooks, flags the account."""
    eve = make_user(platform, "eve@example.com")
    clawback(platform, eve, "pay_1")
    assert state_of(platform, eve)[0::3] == ("active", ["open"])
    # Taken back unspent: no signal.
    with platform.db.write() as conn:
        platform.billing.hooks.clawed_back(
            conn, ClawbackOutcome(eve.id, eve.wallet_id, "pay_2", 10, 0, 0, "refund")
        )
    with platform.db.read() as conn:
        (flag,) = conn.execute(select(abuse_flags.c.score)).scalars()
    assert flag == 40


def test_the_sandbox_backend_is_made_once(
    database_url: str, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []
    original = sandbox_module.SandboxBackend.__init__

    def counting(self: sandbox_module.SandboxBackend, *args: object, **kwargs: object) -> None:
        made.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sandbox_module.SandboxBackend, "__init__", counting)
    settings = Settings(database_url=database_url, var_dir=tmp_path / "var")
    built = bootstrap(settings, clock=clock, migrate=False)
    try:
        assert made == [built.billing.backends.by_name["sandbox"]]
    finally:
        built.close()


def test_billing_hooks_tell_every_listener_in_order_and_a_failure_refuses() -> None:
    hooks = BillingHooks()
    heard: list[str] = []
    outcome = ClawbackOutcome("usr_1", "wal_1", "pay_1", 10, 5, 0, "refund")
    payment = object()

    def fails(_conn: Connection, _payment: Payment) -> None:
        raise RuntimeError("refused")

    hooks.listen_to_clawbacks(lambda _conn, told: heard.append(f"first {told.payment_id}"))
    hooks.listen_to_clawbacks(lambda _conn, told: heard.append(f"second {told.payment_id}"))
    hooks.listen_to_payments(fails)
    conn = object()
    hooks.clawed_back(conn, outcome)  # type: ignore[arg-type]
    assert heard == ["first pay_1", "second pay_1"]
    with pytest.raises(RuntimeError, match="refused"):
        hooks.payment_recorded(conn, payment)  # type: ignore[arg-type]

"""TOTP two-factor on SQLite and PostgreSQL: turning it on (a wrong code
first), the code at login (asked only after the password, never twice the
same), recovery codes (each once), the throttle of wrong codes, turning it
off and making new codes with a code, the notices to the address, and that
every refusal writes nothing but its count and no secret reaches the logs.

Codes are computed as the authenticator app would, from the secret and the
test's ``ManualClock`` (the platform's wall clock in tests)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from plasmaart.accounts.second_factor import FAILURE_WINDOW, OtpInvalid, Throttled
from plasmaart.accounts.service import SignedIn
from plasmaart.cli import app
from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    audit_log,
    auth_throttle,
    notification_outbox,
    recovery_codes,
    users,
)
from plasmaart.platform import Platform
from plasmaart.worker import outbox_delivery
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.matrix import Snapshot, changes, snapshot

EMAIL = "ada@example.com"
STEP = timedelta(seconds=30)
RECOVERY_CODE = re.compile(r"^[a-z2-9]{5}-[a-z2-9]{5}$")


@dataclass(frozen=True)
class Enrolled:
    user: TestUser
    secret: str
    recovery_codes: list[str]
    csrf: dict[str, str]


def code(secret: str, clock: ManualClock, steps: int = 0) -> str:
    """The authenticator app's code, ``steps`` 30-second steps from now."""
    return pyotp.TOTP(secret).at(clock.now() + steps * STEP)


def log_in(client: TestClient, otp: str | None = None, password: str = PASSWORD) -> dict[str, str]:
    """Log in (with ``otp``) and return the CSRF header of the new session."""
    body = {"email": EMAIL, "password": password} | ({} if otp is None else {"otp": otp})
    answer = client.post("/v1/auth/login", json=body)
    assert answer.status_code == 200, answer.text
    return {"X-CSRF-Token": client.cookies["pa_csrf"]}


def login_answer(
    client: TestClient, otp: str | None = None, password: str = PASSWORD
) -> tuple[int, str | None, httpx.Response]:
    """The login's status, problem code and answer."""
    body = {"email": EMAIL, "password": password} | ({} if otp is None else {"otp": otp})
    answer = client.post("/v1/auth/login", json=body)
    problem = answer.json() if answer.status_code >= 400 else {}
    return answer.status_code, problem.get("code"), answer


def log_out(client: TestClient, csrf: dict[str, str]) -> None:
    assert client.post("/v1/auth/logout", headers=csrf).status_code == 204
    client.cookies.clear()


def enrol(platform: Platform, client: TestClient, clock: ManualClock) -> Enrolled:
    """Ada, logged in with a session, turns two-factor on."""
    user = make_user(platform, EMAIL)
    csrf = log_in(client)
    started = client.post("/v1/me/2fa", headers=csrf)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    confirmed = client.post("/v1/me/2fa/confirm", json={"code": code(secret, clock)}, headers=csrf)
    assert confirmed.status_code == 200, confirmed.text
    return Enrolled(user, secret, confirmed.json()["recovery_codes"], csrf)


def changed(before: Snapshot, after: Snapshot) -> set[str]:
    return {change.split(":", 1)[0] for change in changes(before, after)}


def kinds_queued(platform: Platform, user_id: str) -> list[str]:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(notification_outbox.c.kind)
            .where(notification_outbox.c.user_id == user_id)
            .order_by(notification_outbox.c.created_at, notification_outbox.c.id)
        ).all()
    return [row.kind for row in rows]


def test_turning_it_on(platform: Platform, client: TestClient, clock: ManualClock) -> None:
    user = make_user(platform, EMAIL)
    csrf = log_in(client)
    assert client.get("/v1/me").json()["two_factor"] is False
    assert client.get("/v1/me/2fa").json() == {
        "enabled": False,
        "recovery_codes_left": 0,
        "pending": False,
    }
    # Confirming before a secret was made: nothing to confirm.
    early = client.post("/v1/me/2fa/confirm", json={"code": "123456"}, headers=csrf)
    assert (early.status_code, early.json()["code"]) == (409, "two_factor_state")

    started = client.post("/v1/me/2fa", headers=csrf)
    assert started.status_code == 200, started.text
    enrollment = started.json()
    secret = enrollment["secret"]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert enrollment["otpauth_url"] == pyotp.TOTP(secret).provisioning_uri(
        name=EMAIL, issuer_name="PlasmaArt"
    )
    assert enrollment["qr_code"].startswith("data:image/svg+xml")
    assert client.get("/v1/me/2fa").json()["pending"] is True

    # A wrong code: refused, counted, and nothing else written.
    before = snapshot(platform)
    wrong = client.post(
        "/v1/me/2fa/confirm", json={"code": code(secret, clock, steps=3)}, headers=csrf
    )
    assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    assert changed(before, snapshot(platform)) == {"auth_throttle"}
    assert client.get("/v1/me")
    assert client.get("/v1/me").json()["two_factor"] is False

    confirmed = client.post("/v1/me/2fa/confirm", json={"code": code(secret, clock)}, headers=csrf)
    assert confirmed.status_code == 200, confirmed.text
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    assert all(RECOVERY_CODE.match(c) for c in codes)
    assert client.get("/v1/me").json()["two_factor"] is True
    assert client.get("/v1/me/2fa").json() == {
        "enabled": True,
        "recovery_codes_left": 10,
        "pending": False,
    }
    # Stored hashed: no code, in any spelling, is in the table.
    with platform.db.read() as conn:
        stored = [row.code_hash for row in conn.execute(select(recovery_codes.c.code_hash))]
    assert len(stored) == 10
    assert not any(c in h or c.replace("-", "") in h for c in codes for h in stored)

    # On already: no second secret, no second confirmation.
    again = client.post("/v1/me/2fa", headers=csrf)
    assert (again.status_code, again.json()["code"]) == (409, "two_factor_state")
    twice = client.post("/v1/me/2fa/confirm", json={"code": code(secret, clock)}, headers=csrf)
    assert (twice.status_code, twice.json()["code"]) == (409, "two_factor_state")
    assert kinds_queued(platform, user.id) == ["account.two_factor_enabled"]


def test_login_asks_for_the_code_after_the_password(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    ada = enrol(platform, client, clock)
    log_out(client, ada.csrf)

    # No code: otp_required, only once the password is right, and nothing
    # is written (no session, no count).
    before = snapshot(platform)
    status, problem, answer = login_answer(client)
    assert (status, problem) == (401, "otp_required")
    assert "pa_session" not in answer.cookies
    assert changes(before, snapshot(platform)) == []
    # A wrong password says nothing of two-factor.
    status, problem, answer = login_answer(client, password="not the password at all")
    assert (status, problem) == (401, "unauthenticated")
    assert "otp" not in answer.text
    status, problem, _ = login_answer(client, otp=code(ada.secret, clock, 1), password="nope" * 3)
    assert (status, problem) == (401, "unauthenticated")

    # The code that confirmed the enrolment is spent: refused at login.
    before = snapshot(platform)
    status, problem, answer = login_answer(client, otp=code(ada.secret, clock))
    assert (status, problem) == (401, "otp_invalid")
    assert "pa_session" not in answer.cookies
    # Counted as a wrong code and as a failed login; no session, no user change.
    assert changed(before, snapshot(platform)) == {"auth_throttle", "login_failures"}

    clock.advance(STEP)
    fresh = code(ada.secret, clock)
    csrf = log_in(client, otp=fresh)
    assert client.get("/v1/me").json()["email"] == EMAIL
    log_out(client, csrf)
    # The same code again (a replay), even within its step: refused.
    status, problem, _ = login_answer(client, otp=fresh)
    assert (status, problem) == (401, "otp_invalid")
    # An earlier step's code after a later one was used: refused too.
    status, problem, _ = login_answer(client, otp=code(ada.secret, clock, -1))
    assert (status, problem) == (401, "otp_invalid")
    # The next step's code (a phone a little ahead) works, typed with a space.
    spaced = code(ada.secret, clock, 1)
    log_in(client, otp=f"{spaced[:3]} {spaced[3:]}")


def test_a_recovery_code_works_once(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    ada = enrol(platform, client, clock)
    log_out(client, ada.csrf)
    first = ada.recovery_codes[0]
    csrf = log_in(client, otp=first.upper())  # as typed from paper
    assert client.get("/v1/me/2fa").json()["recovery_codes_left"] == 9
    log_out(client, csrf)
    before = snapshot(platform)
    for spelling in (first, first.replace("-", "")):
        status, problem, _ = login_answer(client, otp=spelling)
        assert (status, problem) == (401, "otp_invalid")
    assert changed(before, snapshot(platform)) == {"auth_throttle", "login_failures"}
    assert kinds_queued(platform, ada.user.id) == [
        "account.two_factor_enabled",
        "account.recovery_code_used",
    ]
    with platform.db.read() as conn:
        data = conn.execute(
            select(notification_outbox.c.data).where(
                notification_outbox.c.kind == "account.recovery_code_used"
            )
        ).scalar_one()
    assert '"recovery_codes_left":9' in data


def test_wrong_codes_are_throttled(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    ada = enrol(platform, client, clock)
    log_out(client, ada.csrf)
    clock.advance(STEP)
    # Five wrong codes are each refused and counted ...
    for guess in ("000000", "111111", "222222", "333333", "wrong-guess"):
        status, problem, _ = login_answer(client, otp=guess)
        assert (status, problem) == (401, "otp_invalid")
    # ... then even the right code is refused, and nothing is written.
    before = snapshot(platform)
    status, problem, answer = login_answer(client, otp=code(ada.secret, clock))
    assert (status, problem) == (429, "rate_limited")
    assert 0 < int(answer.headers["Retry-After"]) <= FAILURE_WINDOW.total_seconds()
    assert changes(before, snapshot(platform)) == []
    # The service's own throttle, whatever route asks (here without the
    # login throttle, which also stops the login above).
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, ada.user.id)
        with pytest.raises(Throttled):
            platform.second_factor.check(conn, user, code(ada.secret, clock))
    # Once the oldest wrong code is out of the window, the right code works.
    clock.advance(FAILURE_WINDOW + timedelta(seconds=1))
    log_in(client, otp=code(ada.secret, clock))


def test_wrong_codes_while_turning_it_on_are_throttled_too(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    make_user(platform, EMAIL)
    csrf = log_in(client)
    secret = client.post("/v1/me/2fa", headers=csrf).json()["secret"]
    for steps in (3, 4, 5, 6, 7):
        wrong = client.post(
            "/v1/me/2fa/confirm", json={"code": code(secret, clock, steps)}, headers=csrf
        )
        assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    before = snapshot(platform)
    right = client.post("/v1/me/2fa/confirm", json={"code": code(secret, clock)}, headers=csrf)
    assert (right.status_code, right.json()["code"]) == (429, "rate_limited")
    assert "Retry-After" in right.headers
    assert changes(before, snapshot(platform)) == []
    assert client.get("/v1/me").json()["two_factor"] is False


def test_codes_sent_at_once_are_counted_one_by_one(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    """Wrong codes racing in parallel transactions cannot all pass the
    throttle together: the account's row lock makes them take turns."""
    ada = enrol(platform, client, clock)
    racers = 12
    barrier = threading.Barrier(racers, timeout=30)
    outcomes: list[str] = []

    def guess(n: int) -> None:
        barrier.wait()
        try:
            with platform.db.write() as conn:
                user = platform.accounts.get(conn, ada.user.id)
                refusal = platform.second_factor.check(conn, user, f"{n:06d}")
            outcomes.append(type(refusal).__name__)
        except Throttled:
            outcomes.append("Throttled")

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(outcomes) == ["OtpInvalid"] * 5 + ["Throttled"] * (racers - 5)
    with platform.db.read() as conn:
        counted = conn.execute(
            select(auth_throttle.c.id).where(auth_throttle.c.subject == ada.user.id)
        ).all()
    assert len(counted) == 5


def test_turning_it_off_needs_a_code(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    ada = enrol(platform, client, clock)
    missing = client.request("DELETE", "/v1/me/2fa", headers=ada.csrf)
    assert (missing.status_code, missing.json()["code"]) == (422, "invalid_input")
    before = snapshot(platform)
    wrong = client.request("DELETE", "/v1/me/2fa", json={"code": "000000"}, headers=ada.csrf)
    assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    assert changed(before, snapshot(platform)) == {"auth_throttle"}
    assert client.get("/v1/me").json()["two_factor"] is True

    clock.advance(STEP)
    off = client.request(
        "DELETE", "/v1/me/2fa", json={"code": code(ada.secret, clock)}, headers=ada.csrf
    )
    assert off.status_code == 200, off.text
    assert off.json() == {"enabled": False, "recovery_codes_left": 0, "pending": False}
    assert client.get("/v1/me").json()["two_factor"] is False
    with platform.db.read() as conn:
        assert conn.execute(select(recovery_codes.c.id)).all() == []
        row = conn.execute(select(users).where(users.c.id == ada.user.id)).one()
    assert (row.totp_secret, row.totp_pending_secret, row.totp_last_step) == (None, None, None)
    again = client.request("DELETE", "/v1/me/2fa", json={"code": "000000"}, headers=ada.csrf)
    assert (again.status_code, again.json()["code"]) == (409, "two_factor_state")
    log_out(client, ada.csrf)
    log_in(client)  # the password alone again
    assert kinds_queued(platform, ada.user.id) == [
        "account.two_factor_enabled",
        "account.two_factor_disabled",
    ]


def test_turning_it_off_with_a_recovery_code(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    ada = enrol(platform, client, clock)
    off = client.request(
        "DELETE", "/v1/me/2fa", json={"code": ada.recovery_codes[4]}, headers=ada.csrf
    )
    assert off.status_code == 200, off.text
    assert client.get("/v1/me").json()["two_factor"] is False


def test_new_recovery_codes(platform: Platform, client: TestClient, clock: ManualClock) -> None:
    ada = enrol(platform, client, clock)
    wrong = client.post("/v1/me/2fa/recovery-codes", json={"code": "999999"}, headers=ada.csrf)
    assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    clock.advance(STEP)
    renewed = client.post(
        "/v1/me/2fa/recovery-codes", json={"code": code(ada.secret, clock)}, headers=ada.csrf
    )
    assert renewed.status_code == 200, renewed.text
    fresh = renewed.json()["recovery_codes"]
    assert len(fresh) == 10
    assert not set(fresh) & set(ada.recovery_codes)
    log_out(client, ada.csrf)
    status, problem, _ = login_answer(client, otp=ada.recovery_codes[0])
    assert (status, problem) == (401, "otp_invalid")
    log_in(client, otp=fresh[0])
    assert kinds_queued(platform, ada.user.id)[-2:] == [
        "account.recovery_codes_regenerated",
        "account.recovery_code_used",
    ]


def test_an_api_key_cannot_manage_it(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    """A leaked key must not be able to turn two-factor on and lock its
    owner out, nor off: these routes need a login session."""
    ada = enrol(platform, client, clock)
    client.cookies.clear()
    assert client.get("/v1/me/2fa", headers=ada.user.auth).json()["enabled"] is True
    before = snapshot(platform)
    for method, path, body in (
        ("POST", "/v1/me/2fa", None),
        ("POST", "/v1/me/2fa/confirm", {"code": code(ada.secret, clock, 1)}),
        ("DELETE", "/v1/me/2fa", {"code": code(ada.secret, clock, 1)}),
        ("POST", "/v1/me/2fa/recovery-codes", {"code": ada.recovery_codes[0]}),
    ):
        answer = client.request(method, path, json=body, headers=ada.user.auth)
        assert (answer.status_code, answer.json()["code"]) == (403, "forbidden"), path
    assert changes(before, snapshot(platform)) == []


def test_the_address_is_told(platform: Platform, client: TestClient, clock: ManualClock) -> None:
    ada = enrol(platform, client, clock)
    log_out(client, ada.csrf)
    csrf = log_in(client, otp=ada.recovery_codes[0])
    clock.advance(STEP)
    client.request("DELETE", "/v1/me/2fa", json={"code": code(ada.secret, clock)}, headers=csrf)
    outbox_delivery(platform).run("test")
    mails = {mail.subject: mail for mail in platform.mail_folder.messages()}
    assert set(mails) >= {
        "Two-factor authentication is on",
        "A recovery code was used",
        "Two-factor authentication is off",
    }
    assert all(mail.to == EMAIL for mail in mails.values())
    used = mails["A recovery code was used"].text
    assert "You have 9 recovery codes left" in used
    assert "change your password" in used
    assert "from your account's settings" in mails["Two-factor authentication is off"].text
    # The notices are in the app too.
    notices = client.get("/v1/notifications").json()["data"]
    assert {n["kind"] for n in notices} >= {
        "account.two_factor_enabled",
        "account.recovery_code_used",
        "account.two_factor_disabled",
    }


def test_no_secret_or_code_is_logged_or_echoed(
    platform: Platform, client: TestClient, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ada = enrol(platform, client, clock)
    log_out(client, ada.csrf)
    secrets_seen = [ada.secret, *ada.recovery_codes]
    wrong = "314159"
    answers = [login_answer(client, otp=wrong)[2], login_answer(client)[2]]
    clock.advance(STEP)
    right = code(ada.secret, clock)
    secrets_seen += [wrong, right]
    csrf = log_in(client, otp=right)
    answers.append(client.post("/v1/me/2fa/recovery-codes", json={"code": "271828"}, headers=csrf))
    secrets_seen.append("271828")
    for answer in answers:
        assert answer.status_code == 401
        assert not [s for s in secrets_seen if s in answer.text]
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert caplog.records, "the requests were logged"
    assert not [s for s in secrets_seen if s in logged]


def test_service_refuses_a_wrong_code_without_state(platform: Platform, clock: ManualClock) -> None:
    """``check`` is None for an account without two-factor (other flows call
    it for every sensitive change), and a wrong code never turns it on."""
    ada = make_user(platform, EMAIL)
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, ada.id)
        assert platform.second_factor.check(conn, user, None) is None
        assert platform.second_factor.check(conn, user, "000000") is None
        enrollment = platform.second_factor.begin(conn, user)
        refused = platform.second_factor.enable(conn, user, code(enrollment.secret, clock, 5))
        assert isinstance(refused, OtpInvalid)
        assert platform.second_factor.status(conn, user).enabled is False


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The command configures logging for a real process; give the test run
    its own configuration back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("keep_logging")
def test_an_operator_turns_it_off(
    platform: Platform,
    clock: ManualClock,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``plasmaart users disable-2fa``: for an owner who lost the phone and
    the recovery codes; audit-logged with the reason, and told to them."""
    ada = make_user(platform, EMAIL)
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, ada.id)
        secret = platform.second_factor.begin(conn, user).secret
        assert isinstance(platform.second_factor.enable(conn, user, code(secret, clock)), list)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PLASMAART_VAR_DIR", str(tmp_path / "cli-var"))
    runner = CliRunner()
    reason = "lost phone and codes; identity checked on ticket 42"

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["users", *args], prog_name="plasmaart")
        return result.exit_code, result.output

    assert invoke("disable-2fa", EMAIL)[0] == 2  # the reason is required
    exit_code, out = invoke("disable-2fa", "nobody@example.com", "--reason", reason)
    assert (exit_code, out.strip()) == (1, "error: no user with e-mail nobody@example.com")
    exit_code, out = invoke("disable-2fa", EMAIL.upper(), "--reason", reason)
    assert exit_code == 0, out
    assert f"two-factor of {EMAIL} is off" in out
    with platform.db.read() as conn:
        assert platform.second_factor.status(conn, user).enabled is False
        entry = conn.execute(
            select(audit_log).where(audit_log.c.action == "user.disable_2fa")
        ).one()
    assert (entry.actor, entry.target, entry.reason) == ("cli", ada.id, reason)
    assert json.loads(entry.data) == {"email": EMAIL}
    assert kinds_queued(platform, ada.id)[-1] == "account.two_factor_disabled"
    # (Queued by the command's own platform, on the system clock: read as queued.)
    with platform.db.read() as conn:
        title, body = conn.execute(
            select(notification_outbox.c.title, notification_outbox.c.body).where(
                notification_outbox.c.kind == "account.two_factor_disabled"
            )
        ).one()
    assert title == "Two-factor authentication is off"
    assert "by our support team" in body
    # Off already: one clear line, and nothing more in the log.
    exit_code, out = invoke("disable-2fa", EMAIL, "--reason", reason)
    assert (exit_code, out.strip()) == (1, "error: two-factor is off")
    # The password alone logs in again.
    with platform.db.write() as conn:
        signed_in = platform.accounts.log_in(conn, EMAIL, PASSWORD, address="127.0.0.1")
    assert isinstance(signed_in, SignedIn)

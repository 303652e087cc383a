"""Password reset by e-mail (docs/accounts.md, "Password reset"): the same
answer for any address, the throttles, the single-use link, every session
ended, the notice, and two-factor still asked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from plasmaart.clock import ManualClock
from plasmaart.db.tables import account_tokens, login_failures, notification_outbox, users
from plasmaart.platform import Platform
from plasmaart.worker import outbox_delivery
from tests.support.accounts import PASSWORD, make_user
from tests.support.platforms import api_client

NEW_PASSWORD = "a brand new passphrase"
RESET = "/v1/auth/password-reset"
CONFIRM = "/v1/auth/password-reset/confirm"
# Every table a refused confirmation must leave as it was.
TABLES = (
    "users",
    "sessions",
    "account_tokens",
    "login_failures",
    "notification_outbox",
    "audit_log",
    "auth_throttle",
    "api_keys",
)


def snapshot(platform: Platform) -> dict[str, list[tuple[object, ...]]]:
    with platform.db.read() as conn:
        return {
            table: sorted(
                (tuple(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {table}"))),
            )
            for table in TABLES
        }


def deliver(platform: Platform) -> None:
    outbox_delivery(platform).run("test-worker")


def reset_token(platform: Platform, address: str) -> str:
    """The token of the newest reset link mailed to ``address`` (mail folder)."""
    deliver(platform)
    mails = [
        m
        for m in platform.mail_folder.messages()
        if m.to == address and m.subject == "Reset your PlasmaArt password"
    ]
    assert mails, f"no reset mail to {address}"
    found = re.search(r"/reset-password\?token=([A-Za-z0-9_-]+)", mails[0].text)
    assert found is not None, mails[0].text
    return found.group(1)


def ask_reset(client: TestClient, email: str) -> str:
    answer = client.post(RESET, json={"email": email})
    assert answer.status_code == 202, answer.text
    return answer.text


@pytest.fixture
def other_client(platform: Platform) -> Iterator[TestClient]:
    with api_client(platform) as test_client:
        yield test_client


def test_same_answer_whether_or_not_the_address_exists(
    client: TestClient, platform: Platform
) -> None:
    make_user(platform, "ada@example.com")
    known = client.post(RESET, json={"email": "Ada@Example.com"})
    unknown = client.post(RESET, json={"email": "nobody@example.com"})
    assert (known.status_code, unknown.status_code) == (202, 202)
    assert known.text == unknown.text
    assert known.headers["content-type"] == unknown.headers["content-type"]
    assert "Set-Cookie" not in known.headers
    assert "Set-Cookie" not in unknown.headers
    with platform.db.read() as conn:
        letters = conn.execute(
            select(notification_outbox.c.user_id, notification_outbox.c.in_app)
        ).all()
        tokens = conn.execute(select(account_tokens.c.email, account_tokens.c.purpose)).all()
    ada = platform.accounts
    with platform.db.read() as conn:
        ada_id = ada.get_by_email(conn, "ada@example.com").id
    # One letter (mail only) and one token, both for the registered address alone.
    assert [(row.user_id, row.in_app) for row in letters] == [(ada_id, False)]
    assert [(row.email, row.purpose) for row in tokens] == [("ada@example.com", "password_reset")]
    bad = client.post(RESET, json={"email": "not an address"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_input")


def test_the_link_is_mailed_hashed_and_sensitive(client: TestClient, platform: Platform) -> None:
    make_user(platform, "ada@example.com")
    ask_reset(client, "ada@example.com")
    token = reset_token(platform, "ada@example.com")
    with platform.db.read() as conn:
        stored = conn.execute(select(account_tokens.c.token_hash)).scalar_one()
        body = conn.execute(select(notification_outbox.c.body)).scalar_one()
    assert token not in stored
    assert len(stored) == 64
    # Blanked once delivered: the body carried the token.
    assert token not in body
    mail = platform.mail_folder.messages()[0]
    assert f"http://127.0.0.1:8000/reset-password?token={token}" in mail.text
    assert "30 minutes" in mail.text
    assert mail.html is not None
    assert token in mail.html


def test_throttled_per_address_known_or_not(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    make_user(platform, "ada@example.com")
    for email in ("ada@example.com", "ghost@example.com"):
        for _ in range(3):
            ask_reset(client, email)
        refused = client.post(RESET, json={"email": email.upper()})
        assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
        assert refused.headers["Retry-After"] == "900"
        assert "ada" not in refused.text
        assert "ghost" not in refused.text
    # Another address from the same client is not held back.
    ask_reset(client, "someone@example.com")
    clock.advance(timedelta(minutes=10))
    assert client.post(RESET, json={"email": "ada@example.com"}).headers["Retry-After"] == "300"
    clock.advance(timedelta(minutes=5, seconds=1))
    ask_reset(client, "ada@example.com")


def test_throttled_per_client_address(platform: Platform, client: TestClient) -> None:
    for n in range(20):
        ask_reset(client, f"user{n}@example.com")
    before = snapshot(platform)
    refused = client.post(RESET, json={"email": "fresh@example.com"})
    assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
    assert refused.headers["Retry-After"] == "3600"
    assert snapshot(platform) == before  # nothing counted
    with TestClient(client.app, client=("127.0.0.9", 40000)) as elsewhere:
        assert elsewhere.post(RESET, json={"email": "fresh@example.com"}).status_code == 202


def test_reset_logs_in_and_ends_every_other_session(
    client: TestClient, other_client: TestClient, platform: Platform
) -> None:
    ada = make_user(platform, "ada@example.com")
    for browser in (client, other_client):
        logged = browser.post("/v1/auth/login", json={"email": ada.email, "password": PASSWORD})
        assert logged.status_code == 200
    old_cookie = client.cookies["pa_session"]
    with platform.db.write() as conn:
        platform.credentials.record_login_failure(conn, ada.email, "203.0.113.9")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    with TestClient(client.app, headers={"User-Agent": "Firefox/140"}) as fresh:
        done = fresh.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
        assert done.status_code == 200, done.text
        assert done.json()["user"]["email"] == ada.email
        new_cookie = fresh.cookies["pa_session"]
        assert new_cookie != old_cookie
        assert fresh.get("/v1/me").json()["email"] == ada.email
        listed = fresh.get("/v1/sessions").json()["data"]
        assert [(s["current"], s["user_agent"]) for s in listed] == [(True, "Firefox/140")]
    # The sessions open before are over, in this process's cache too.
    for browser in (client, other_client):
        assert browser.get("/v1/me").status_code == 401
    # API keys keep working (docs/accounts.md says why).
    assert client.get("/v1/me", headers=ada.auth).status_code == 200
    old = client.post("/v1/auth/login", json={"email": ada.email, "password": PASSWORD})
    assert old.status_code == 401
    with platform.db.read() as conn:
        assert conn.execute(select(login_failures.c.email)).scalars().all() == [ada.email]
    new = other_client.post("/v1/auth/login", json={"email": ada.email, "password": NEW_PASSWORD})
    assert new.status_code == 200
    with platform.db.read() as conn:
        assert conn.execute(select(login_failures)).all() == []  # forgotten at the reset


def test_the_owner_is_told(client: TestClient, platform: Platform) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    assert client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD}).status_code == 200
    deliver(platform)
    told = [m for m in platform.mail_folder.messages() if "was changed" in m.subject]
    assert [(m.to, m.subject) for m in told] == [(ada.email, "Your PlasmaArt password was changed")]
    assert "If it was not you" in told[0].text
    assert "http://127.0.0.1:8000/forgot-password" in told[0].text
    assert platform.settings.support_email in told[0].text
    assert NEW_PASSWORD not in told[0].text
    assert token not in told[0].text
    with platform.db.read() as conn:
        row = conn.execute(
            text("SELECT action, actor FROM audit_log WHERE action = 'user.password_reset'")
        ).one()
    assert row.actor == ada.id


def test_the_link_works_once(client: TestClient, platform: Platform) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    assert client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD}).status_code == 200
    before = snapshot(platform)
    again = client.post(CONFIRM, json={"token": token, "password": "yet another passphrase"})
    assert (again.status_code, again.json()["code"]) == (400, "invalid_token")
    assert token not in again.text
    assert snapshot(platform) == before


def test_a_newer_link_voids_the_older_one(client: TestClient, platform: Platform) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    first = reset_token(platform, ada.email)
    ask_reset(client, ada.email)
    second = reset_token(platform, ada.email)
    assert first != second
    refused = client.post(CONFIRM, json={"token": first, "password": NEW_PASSWORD})
    assert refused.json()["code"] == "invalid_token"
    assert client.post(CONFIRM, json={"token": second, "password": NEW_PASSWORD}).status_code == 200


def test_the_link_expires_after_30_minutes(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    clock.advance(timedelta(minutes=30, seconds=1))
    before = snapshot(platform)
    late = client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
    assert (late.status_code, late.json()["code"]) == (400, "invalid_token")
    assert snapshot(platform) == before


def test_in_time_at_29_minutes(client: TestClient, platform: Platform, clock: ManualClock) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    clock.advance(timedelta(minutes=29))
    assert client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD}).status_code == 200


def test_forged_tokens_and_bad_passwords_write_nothing(
    client: TestClient, platform: Platform
) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    before = snapshot(platform)
    for forged in ("x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), "", " "):
        answer = client.post(CONFIRM, json={"token": forged, "password": NEW_PASSWORD})
        assert answer.status_code in (400, 422), answer.text
        if answer.status_code == 400:
            assert answer.json()["code"] == "invalid_token"
    short = client.post(CONFIRM, json={"token": token, "password": "short"})
    assert (short.status_code, short.json()["errors"][0]["field"]) == (422, "password")
    assert snapshot(platform) == before
    # The link still works after those refusals.
    assert client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD}).status_code == 200


def test_a_link_for_an_address_since_changed_is_refused(
    client: TestClient, platform: Platform
) -> None:
    ada = make_user(platform, "ada@example.com")
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    with platform.db.write() as conn:
        conn.execute(users.update().where(users.c.id == ada.id).values(email="ada@new.example"))
    refused = client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
    assert refused.json()["code"] == "invalid_token"


def test_a_deleted_account_gets_no_link(client: TestClient, platform: Platform) -> None:
    ada = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        conn.execute(
            users.update().where(users.c.id == ada.id).values(deleted_at=platform.clock.now())
        )
    ask_reset(client, ada.email)
    with platform.db.read() as conn:
        assert conn.execute(select(account_tokens)).all() == []


def test_two_factor_is_still_asked(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    ada = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, ada.id)
        secret = platform.second_factor.begin(conn, user).secret
    totp = pyotp.TOTP(secret)
    with platform.db.write() as conn:
        codes = platform.second_factor.enable(conn, user, totp.at(clock.now()))
        assert isinstance(codes, list)
    clock.advance(timedelta(seconds=60))
    ask_reset(client, ada.email)
    token = reset_token(platform, ada.email)
    page = client.get(f"/reset-password?token={token}")
    assert page.status_code == 200
    assert 'name="otp"' in page.text
    before = snapshot(platform)
    missing = client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
    assert (missing.status_code, missing.json()["code"]) == (401, "otp_required")
    assert snapshot(platform) == before
    wrong = client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD, "otp": "000000"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    # The wrong code is counted; the link is not spent, the password unchanged.
    after = snapshot(platform)
    assert after["account_tokens"] == before["account_tokens"]
    assert after["users"] == before["users"]
    assert len(after["auth_throttle"]) == len(before["auth_throttle"]) + 1
    good = client.post(
        CONFIRM, json={"token": token, "password": NEW_PASSWORD, "otp": totp.at(clock.now())}
    )
    assert good.status_code == 200, good.text
    assert client.get("/v1/me").status_code == 200

"""Secrets stay secret, on SQLite and PostgreSQL.

* Every secret a user or operator hands the platform or receives from it (a
  password, an API key, a session token, an invitation token, the webhook
  secret) is absent from every log line the platform writes while it is used,
  formatted the way production formats them (JSON lines).
* Passwords, API keys, session tokens and invitation tokens are stored only
  as hashes: none of them appears in any column of any table.
* Every answer, JSON or HTML, success or refusal, carries the security headers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import LargeBinary, String, Text, select

from plasmaart.db.tables import metadata
from plasmaart.logs import JsonFormatter
from plasmaart.platform import Platform
from plasmaart.worker import outbox_delivery
from tests.support.accounts import PASSWORD as USERS_PASSWORD
from tests.support.accounts import make_user

PASSWORD = "correct horse battery staple 42"
RESET_PASSWORD = "reset horse battery staple 43"
CHANGED_PASSWORD = "changed horse battery staple 44"
WRONG_PASSWORD = "wrong horse battery staple 45"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}


class Captured(logging.Handler):
    """Every record of every logger, formatted as production formats it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The test's own HTTP client logs the URLs it calls; it is not the platform.
        if not record.name.startswith("httpx"):
            self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def use_every_secret(client: TestClient, platform: Platform) -> list[str]:
    """Sign up, log in, make and use an API key, invite a team member; return
    every secret that crossed the wire."""
    signup = client.post("/v1/auth/signup", json={"email": "sec@example.com", "password": PASSWORD})
    assert signup.status_code == 201, signup.text
    client.post("/v1/auth/logout", headers={"X-CSRF-Token": client.cookies["pa_csrf"]})
    wrong = client.post(
        "/v1/auth/login", json={"email": "sec@example.com", "password": "nope-nope"}
    )
    assert wrong.status_code == 401
    login = client.post("/v1/auth/login", json={"email": "sec@example.com", "password": PASSWORD})
    assert login.status_code == 200, login.text
    session = client.cookies["pa_session"]
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    created = client.post("/v1/api-keys", json={"name": "laptop"}, headers=csrf)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    client.cookies.clear()
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # A wrong key is logged as refused, never echoed.
    wrong_key = key[:-4] + "zzzz"
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {wrong_key}"}).status_code == 401
    owner = make_user(platform, "studio-owner@example.com", plan="studio")
    team = client.post("/v1/teams", json={"name": "Night Shift"}, headers=owner.auth)
    assert team.status_code == 201, team.text
    invited = client.post(
        f"/v1/teams/{team.json()['id']}/invitations",
        json={"email": "sec@example.com"},
        headers=owner.auth,
    )
    assert invited.status_code == 201, invited.text
    token = invited.json()["token"]
    accepted = client.post(
        f"/v1/invitations/{token}/accept", headers={"Authorization": f"Bearer {key}"}
    )
    assert accepted.status_code == 200, accepted.text
    return [PASSWORD, session, key, wrong_key, owner.api_key, token, *use_password_secrets(client)]


def use_password_secrets(client: TestClient) -> list[str]:
    """Reset sec@example.com's password by mail (the link delivered), change
    it, with a wrong current password first; the secrets that crossed the wire."""
    platform: Platform = client.app.state.platform  # type: ignore[attr-defined]
    client.cookies.clear()
    asked = client.post("/v1/auth/password-reset", json={"email": "sec@example.com"})
    assert asked.status_code == 202, asked.text
    outbox_delivery(platform).run("security-worker")
    [mail] = [m for m in platform.mail_folder.messages() if "Reset" in m.subject]
    found = re.search(r"token=([A-Za-z0-9_-]+)", mail.text)
    assert found is not None
    reset_token = found.group(1)
    assert client.get(f"/reset-password?token={reset_token}").status_code == 200
    forged = client.post(
        "/v1/auth/password-reset/confirm", json={"token": "forged" * 8, "password": RESET_PASSWORD}
    )
    assert forged.status_code == 400
    done = client.post(
        "/v1/auth/password-reset/confirm", json={"token": reset_token, "password": RESET_PASSWORD}
    )
    assert done.status_code == 200, done.text
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    change = {"current_password": WRONG_PASSWORD, "new_password": CHANGED_PASSWORD}
    assert client.post("/v1/me/password", json=change, headers=csrf).status_code == 403
    change["current_password"] = RESET_PASSWORD
    assert client.post("/v1/me/password", json=change, headers=csrf).status_code == 200
    client.cookies.clear()
    return [reset_token, RESET_PASSWORD, CHANGED_PASSWORD, WRONG_PASSWORD]


def test_no_secret_reaches_the_logs(
    client: TestClient, platform: Platform, logged: Captured
) -> None:
    secrets = use_every_secret(client, platform)
    webhook_secret = platform.settings.stripe_webhook_secret
    if webhook_secret is not None:
        secrets.append(webhook_secret.get_secret_value())
    assert len(logged.lines) >= 10  # the requests were logged, so the check can fail
    leaks = [
        (secret[:6] + "…", line)
        for line in logged.lines
        for secret in secrets
        # The key's public prefix is meant to be logged; the rest is not.
        if secret in line or (len(secret) > 24 and secret[16:] in line)
    ]
    assert leaks == []


def test_credentials_are_stored_only_as_hashes(client: TestClient, platform: Platform) -> None:
    secrets = use_every_secret(client, platform)
    # A mailed link (the invitation's) stays in the outbox only until its
    # mail is out: delivery blanks a sensitive message's body.
    outbox_delivery(platform).run("security")
    found: list[str] = []
    scanned = 0
    with platform.db.read() as conn:
        for table in metadata.sorted_tables:
            columns = [
                column
                for column in table.columns
                if isinstance(column.type, String | Text | LargeBinary)
            ]
            if not columns:
                continue
            for row in conn.execute(select(*columns)):
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    text = value.decode(errors="replace") if isinstance(value, bytes) else value
                    scanned += 1
                    found += [f"{table.name}.{column.name}" for secret in secrets if secret in text]
    assert scanned > 50
    assert found == []


def test_every_answer_carries_the_security_headers(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "headers@example.com", plan="pro")
    answers = {
        "json": client.get("/v1/me", headers=user.auth),
        "public": client.get("/v1/models"),
        "refusal": client.get("/v1/me"),
        "not found": client.get("/v1/generations/gen_nope", headers=user.auth),
        "invalid": client.post("/v1/generations", json={"model": 3}, headers=user.auth),
        "html": client.get("/login"),
        "docs": client.get("/docs"),
        "ops": client.get("/healthz"),
    }
    for what, answer in answers.items():
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (what, answer.status_code, name)


def test_leaving_acts_only_on_the_caller(
    client: TestClient, platform: Platform, logged: Captured
) -> None:
    """No user id in ``/v1/me``: another user's session exports its own data
    and deletes only its own account, confirmed by its own password; a cookie
    DELETE needs the CSRF token; the passwords sent never reach the logs."""
    alice = make_user(platform, "alice@example.com")
    bob = make_user(platform, "bob@example.com")
    login = client.post("/v1/auth/login", json={"email": bob.email, "password": USERS_PASSWORD})
    assert login.status_code == 200, login.text
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    # Through bob's session a wrong password is refused, and nothing of alice's moves.
    refused = client.request(
        "DELETE", "/v1/me", json={"password": "alice's guess 12345"}, headers=csrf
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "wrong_password")
    forged = client.request("DELETE", "/v1/me", json={"password": USERS_PASSWORD})
    assert (forged.status_code, forged.json()["code"]) == (403, "forbidden")
    exported = client.get("/v1/me/export")
    assert exported.status_code == 200
    assert alice.id.encode() not in exported.content
    assert client.get("/v1/me", headers=alice.auth).status_code == 200
    # Both users' password is the same here: bob's session still deletes bob alone.
    deleted = client.request("DELETE", "/v1/me", json={"password": USERS_PASSWORD}, headers=csrf)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["id"] == bob.id
    assert client.get("/v1/me", headers=alice.auth).status_code == 200
    assert client.get("/v1/me", headers=bob.auth).status_code == 401
    assert len(logged.lines) >= 5
    assert [
        line for line in logged.lines if "alice's guess" in line or USERS_PASSWORD in line
    ] == []

"""Sign-up, login, sessions with CSRF, API keys, /v1/me, settings, and the
conventions every endpoint shares (idempotency, body limit, request ids)."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from plasmaart.clock import ManualClock
from plasmaart.db.tables import api_keys, audit_log, sessions, users
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, make_user

PROBLEM = "application/problem+json"


def count(platform: Platform, table: str) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def signup(client: TestClient, email: str = "mia@example.com") -> dict[str, str]:
    answer = client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
    assert answer.status_code == 201, answer.text
    return {"X-CSRF-Token": client.cookies["pa_csrf"]}


def test_signup_logs_in_with_safe_cookies(client: TestClient, platform: Platform) -> None:
    answer = client.post(
        "/v1/auth/signup", json={"email": " Mia@Example.com ", "password": PASSWORD}
    )
    assert answer.status_code == 201
    user = answer.json()["user"]
    assert (user["email"], user["role"], user["status"]) == ("mia@example.com", "user", "active")
    cookies = answer.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("pa_session="))
    csrf = next(c for c in cookies if c.startswith("pa_csrf="))
    assert "HttpOnly" in session
    assert "samesite=lax" in session.lower()
    assert "HttpOnly" not in csrf
    me = client.get("/v1/me").json()
    assert (me["email"], me["plan"], me["subscription"]["status"]) == (
        "mia@example.com",
        "free",
        "none",
    )
    assert me["balance"] == {"available": 0, "held": 0}
    # Only a hash of the session token is stored.
    token = client.cookies["pa_session"]
    with platform.db.read() as conn:
        stored = conn.execute(select(sessions.c.token_hash)).scalar_one()
    assert token not in stored
    assert len(stored) == 64


def test_signup_refusals_write_nothing(client: TestClient, platform: Platform) -> None:
    signup(client, "taken@example.com")
    before = count(platform, "users")
    bad = client.post("/v1/auth/signup", json={"email": "nope", "password": "short"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == PROBLEM
    assert {e["field"] for e in bad.json()["errors"]} == {"email", "password"}
    taken = client.post(
        "/v1/auth/signup", json={"email": "TAKEN@example.com", "password": PASSWORD}
    )
    assert (taken.status_code, taken.json()["code"]) == (409, "email_taken")
    extra = client.post(
        "/v1/auth/signup", json={"email": "x@example.com", "password": PASSWORD, "role": "admin"}
    )
    assert (extra.status_code, extra.json()["code"]) == (422, "invalid_input")
    wrong_type = client.post("/v1/auth/signup", json={"email": 5, "password": PASSWORD})
    assert wrong_type.status_code == 422
    assert count(platform, "users") == before


def test_login_logout_and_wrong_password(client: TestClient, platform: Platform) -> None:
    make_user(platform, "leo@example.com")
    wrong = client.post("/v1/auth/login", json={"email": "leo@example.com", "password": "x" * 12})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthenticated")
    unknown = client.post("/v1/auth/login", json={"email": "who@example.com", "password": PASSWORD})
    assert unknown.json()["detail"] == wrong.json()["detail"]
    ok = client.post("/v1/auth/login", json={"email": "LEO@example.com", "password": PASSWORD})
    assert ok.status_code == 200
    first_session = client.cookies["pa_session"]
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    assert client.get("/v1/me").json()["email"] == "leo@example.com"
    # A new login always opens a new session: no fixation.
    client.post("/v1/auth/login", json={"email": "leo@example.com", "password": PASSWORD})
    assert client.cookies["pa_session"] != first_session
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    assert client.post("/v1/auth/logout", headers=csrf).status_code == 204
    assert client.get("/v1/me").status_code == 401


def test_failed_logins_are_throttled(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    make_user(platform, "ivy@example.com")
    for _ in range(5):
        client.post("/v1/auth/login", json={"email": "ivy@example.com", "password": "x" * 12})
    # Even the right password is refused while the account is throttled.
    throttled = client.post(
        "/v1/auth/login", json={"email": "ivy@example.com", "password": PASSWORD}
    )
    assert (throttled.status_code, throttled.json()["code"]) == (429, "rate_limited")
    assert 0 < int(throttled.headers["retry-after"]) <= 15 * 60
    clock.advance(timedelta(minutes=16))
    assert (
        client.post(
            "/v1/auth/login", json={"email": "ivy@example.com", "password": PASSWORD}
        ).status_code
        == 200
    )


def test_cookie_writes_need_the_csrf_token(client: TestClient) -> None:
    csrf = signup(client)
    refused = client.post("/v1/api-keys", json={"name": "laptop"})
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    forged = client.post("/v1/api-keys", json={"name": "laptop"}, headers={"X-CSRF-Token": "guess"})
    assert forged.status_code == 403
    assert client.post("/v1/api-keys", json={"name": "laptop"}, headers=csrf).status_code == 201
    assert len(client.get("/v1/api-keys").json()["data"]) == 1


def test_api_keys_shown_once_stored_hashed_and_revocable(
    client: TestClient, platform: Platform
) -> None:
    owner = make_user(platform, "ada@example.com")
    other = make_user(platform, "bob@example.com")
    created = client.post("/v1/api-keys", json={"name": "ci"}, headers=owner.auth)
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("pa_live_")
    assert body["prefix"] == body["key"][:16]
    listed = client.get("/v1/api-keys", headers=owner.auth).json()["data"]
    assert {k["name"] for k in listed} == {"tests", "ci"}
    assert all("key" not in k for k in listed)
    with platform.db.read() as conn:
        hashes = list(conn.execute(select(api_keys.c.secret_hash)).scalars())
    assert body["key"] not in hashes
    new_key = {"Authorization": f"Bearer {body['key']}"}
    assert client.get("/v1/me", headers=new_key).json()["email"] == "ada@example.com"
    # Another user's key: not found, and not revoked.
    assert client.delete(f"/v1/api-keys/{body['id']}", headers=other.auth).status_code == 404
    assert client.get("/v1/me", headers=new_key).status_code == 200
    revoked = client.delete(f"/v1/api-keys/{body['id']}", headers=owner.auth)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    gone = client.get("/v1/me", headers=new_key)
    assert (gone.status_code, gone.json()["code"]) == (401, "unauthenticated")


def test_bad_credentials_are_refused_not_ignored(client: TestClient) -> None:
    for header in ("Bearer pa_live_nonsense", "Basic abc", "Bearer "):
        answer = client.get("/v1/me", headers={"Authorization": header})
        assert (answer.status_code, answer.json()["code"]) == (401, "unauthenticated"), header
    assert client.get("/v1/me").status_code == 401
    client.cookies.set("pa_session", "forged")
    assert client.get("/v1/me").status_code == 401


def test_me_shows_plan_subscription_and_balance(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "sam@example.com", plan="starter", credits=1000)
    me = client.get("/v1/me", headers=user.auth).json()
    assert (me["plan"], me["subscription"]["plan"], me["subscription"]["status"]) == (
        "starter",
        "starter",
        "active",
    )
    assert me["balance"] == {"available": 3000, "held": 0}
    assert me["settings"] == {"remove_watermark": False}


def test_watermark_removal_only_where_the_plan_allows(
    client: TestClient, platform: Platform
) -> None:
    starter = make_user(platform, "s@example.com", plan="starter")
    studio = make_user(platform, "t@example.com", plan="studio")
    refused = client.patch("/v1/me/settings", json={"remove_watermark": True}, headers=starter.auth)
    assert (refused.status_code, refused.json()["code"], refused.json()["required_plan"]) == (
        403,
        "forbidden",
        "studio",
    )
    assert refused.json()["detail"] == (
        "watermark removal is not part of the Starter plan; Studio includes it"
    )
    allowed = client.patch("/v1/me/settings", json={"remove_watermark": True}, headers=studio.auth)
    assert allowed.json()["settings"] == {"remove_watermark": True}
    with platform.db.read() as conn:
        flags = dict(conn.execute(select(users.c.email, users.c.remove_watermark)).all())
    assert flags == {"s@example.com": False, "t@example.com": True}


def test_suspended_accounts_are_read_only(client: TestClient, platform: Platform) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    user = make_user(platform, "spam@example.com")
    answer = client.post(
        f"/v1/admin/users/{user.id}/suspend", json={"reason": "prompt flood"}, headers=admin.auth
    )
    assert answer.json()["status"] == "suspended"
    me = client.get("/v1/me", headers=user.auth)
    assert (me.status_code, me.json()["status"], me.json()["status_reason"]) == (
        200,
        "suspended",
        "prompt flood",
    )
    refused = client.post("/v1/api-keys", json={"name": "x"}, headers=user.auth)
    assert (refused.status_code, refused.json()["code"]) == (403, "account_suspended")
    assert count(platform, "api_keys") == 2  # the two users' own
    # A suspended user logs in, to a read-only account.
    login = client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert (login.status_code, login.json()["user"]["status"]) == (200, "suspended")
    assert "pa_session" in client.cookies
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    settings = client.patch("/v1/me/settings", json={"remove_watermark": False}, headers=csrf)
    assert (settings.status_code, settings.json()["code"]) == (403, "account_suspended")
    assert client.post("/v1/auth/logout", headers=csrf).status_code == 204
    client.post(f"/v1/admin/users/{user.id}/reinstate", headers=admin.auth)
    me = client.get("/v1/me", headers=user.auth).json()
    assert (me["status"], me["status_reason"]) == ("active", None)
    assert client.post("/v1/api-keys", json={"name": "x"}, headers=user.auth).status_code == 201


def test_admin_endpoints(client: TestClient, platform: Platform) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    user = make_user(platform, "kim@example.com", plan="pro")
    # Not an admin: the admin API does not exist.
    assert client.get("/v1/admin/users", headers=user.auth).status_code == 404
    found = client.get("/v1/admin/users", params={"q": "KIM@"}, headers=admin.auth).json()
    assert [(u["email"], u["plan"], u["available"]) for u in found["data"]] == [
        ("kim@example.com", "pro", 5000)
    ]
    page = client.get("/v1/admin/users", params={"limit": 1}, headers=admin.auth).json()
    rest = client.get(
        "/v1/admin/users", params={"limit": 1, "cursor": page["next_cursor"]}, headers=admin.auth
    ).json()
    assert {page["data"][0]["email"], rest["data"][0]["email"]} == {
        "root@example.com",
        "kim@example.com",
    }
    key = {"Idempotency-Key": "grant-1"}
    granted = client.post(
        f"/v1/admin/users/{user.id}/credits",
        json={"amount": 250, "reason": "render failed"},
        headers={**admin.auth, **key},
    )
    assert granted.json()["available"] == 5250
    again = client.post(
        f"/v1/admin/users/{user.id}/credits",
        json={"amount": 250, "reason": "render failed"},
        headers={**admin.auth, **key},
    )
    assert (again.headers["idempotent-replayed"], again.json()["available"]) == ("true", 5250)
    too_much = client.post(
        f"/v1/admin/users/{user.id}/credits",
        json={"amount": -9999, "reason": "fix"},
        headers=admin.auth,
    )
    assert (too_much.status_code, too_much.json()["code"]) == (402, "insufficient_credits")
    assert (
        client.post(f"/v1/admin/users/{user.id}/suspend", json={}, headers=admin.auth).status_code
        == 422
    )
    assert (
        client.post(
            "/v1/admin/users/usr_nobody/suspend", json={"reason": "x"}, headers=admin.auth
        ).status_code
        == 404
    )
    with platform.db.read() as conn:
        actions = list(
            conn.execute(
                select(audit_log.c.actor, audit_log.c.action, audit_log.c.reason).order_by(
                    audit_log.c.id
                )
            ).all()
        )
    assert [tuple(a) for a in actions] == [(admin.id, "credits.adjust", "render failed")]


def test_idempotency_key_replays_and_conflicts(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "eli@example.com")
    headers = {**user.auth, "Idempotency-Key": "make-key-1"}
    first = client.post("/v1/api-keys", json={"name": "deploy"}, headers=headers)
    again = client.post("/v1/api-keys", json={"name": "deploy"}, headers=headers)
    assert first.status_code == again.status_code == 201
    # The secret is shown once: a replay gives the same key object without it.
    assert again.json() == {**first.json(), "key": None}
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["idempotent-secret-withheld"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert "x-secret-fields" not in first.headers
    with platform.db.read() as conn:
        stored = b"".join(
            conn.execute(text("SELECT response_body FROM idempotency_records")).scalars()
        )
    assert first.json()["key"].encode() not in stored
    with platform.db.read() as conn:
        keys = conn.execute(select(func.count()).select_from(api_keys)).scalar_one()
    assert keys == 2  # the test key and one "deploy"
    other_body = client.post("/v1/api-keys", json={"name": "other"}, headers=headers)
    assert (other_body.status_code, other_body.json()["code"]) == (409, "idempotency_conflict")
    # Keys belong to the credential that used them.
    stranger = make_user(platform, "fox@example.com")
    theirs = client.post(
        "/v1/api-keys",
        json={"name": "deploy"},
        headers={**stranger.auth, "Idempotency-Key": "make-key-1"},
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]
    too_long = client.post(
        "/v1/api-keys", json={"name": "x"}, headers={**user.auth, "Idempotency-Key": "k" * 300}
    )
    assert too_long.status_code == 422


def test_idempotency_records_expire_after_a_day(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "zed@example.com")
    headers = {**user.auth, "Idempotency-Key": "daily"}
    first = client.post("/v1/api-keys", json={"name": "a"}, headers=headers)
    clock.advance(timedelta(hours=23))
    replayed = client.post("/v1/api-keys", json={"name": "a"}, headers=headers)
    assert replayed.json()["id"] == first.json()["id"]
    clock.advance(timedelta(hours=2))
    later = client.post("/v1/api-keys", json={"name": "a"}, headers=headers)
    assert later.status_code == 201
    assert later.json()["id"] != first.json()["id"]


def test_oversized_bodies_are_refused(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "big@example.com")
    before = count(platform, "api_keys")
    answer = client.post(
        "/v1/api-keys",
        content=b'{"name": "' + b"x" * 2_000_000 + b'"}',
        headers={**user.auth, "Content-Type": "application/json"},
    )
    assert (answer.status_code, answer.json()["code"]) == (413, "payload_too_large")
    assert count(platform, "api_keys") == before


def test_request_ids_and_security_headers(client: TestClient) -> None:
    answer = client.get("/healthz", headers={"X-Request-ID": "abc12345-trace"})
    assert answer.headers["x-request-id"] == "abc12345-trace"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 16
    assert (
        client.get("/healthz", headers={"X-Request-ID": "bad id!"}).headers["x-request-id"]
        != "bad id!"
    )
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"


def test_a_repeat_right_after_the_answer_is_replayed(
    client: TestClient, platform: Platform
) -> None:
    """The record is stored before the answer's last byte leaves: a client that
    repeats at once gets the replay, never "still running"."""
    admin = make_user(platform, "root@example.com", admin=True)
    user = make_user(platform, "now@example.com")
    headers = {**admin.auth, "Idempotency-Key": "at-once"}
    body = {"amount": 10, "reason": "goodwill"}
    answers = [
        client.post(f"/v1/admin/users/{user.id}/credits", json=body, headers=headers)
        for _ in range(5)
    ]
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.json()["available"] for a in answers} == {10}
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None] + ["true"] * 4

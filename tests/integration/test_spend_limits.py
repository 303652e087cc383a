"""Spend limits (docs/credits.md, "Spend limits") through the HTTP API, on
SQLite and PostgreSQL: a wallet's monthly limit, an API key's daily and
monthly limits (across the wallets it spends), a team member's cap; each
refuses with 402 ``spend_limit_reached`` naming its ``limit`` and when it
resets, counts only what was charged or is still held, and resets at the
boundary of its period."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import audit_log, generations
from plasmaart.platform import Platform
from tests.integration.test_generations_api import drain
from tests.integration.test_teams import accept, create_team, invite
from tests.support.accounts import TestUser, make_user

FEB_1 = "2026-02-01T00:00:00+00:00"
_prompts = iter(range(10**6))


def submit(
    client: TestClient, auth: dict[str, str], *, team_id: str | None = None, **sandbox: Any
) -> Any:
    """One flux-dev image (5 credits), a fresh prompt each time."""
    body: dict[str, Any] = {
        "model": "flux-dev",
        "prompt": f"a lighthouse at dusk, take {next(_prompts)}",
        "params": {"sandbox": {"delay_s": 0, **sandbox}},
    }
    if team_id is not None:
        body["team_id"] = team_id
    return client.post("/v1/generations", json=body, headers=auth)


def accepted(client: TestClient, auth: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    answer = submit(client, auth, **kwargs)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def refused(
    client: TestClient, auth: dict[str, str], limit: str, resets_at: str, **kwargs: Any
) -> dict[str, Any]:
    answer = submit(client, auth, **kwargs)
    assert answer.status_code == 402, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = answer.json()
    assert (problem["code"], problem["limit"], problem["resets_at"]) == (
        "spend_limit_reached",
        limit,
        resets_at,
    )
    return problem


def set_limit(
    client: TestClient, user: TestUser, monthly: int | None, team_id: str | None = None
) -> Any:
    query = "" if team_id is None else f"?team_id={team_id}"
    return client.put(
        f"/v1/spend-limit{query}", json={"monthly_credits": monthly}, headers=user.auth
    )


def new_key(client: TestClient, user: TestUser, **limits: int | None) -> dict[str, Any]:
    answer = client.post("/v1/api-keys", json={"name": "robot", **limits}, headers=user.auth)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def bearer(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}"}


def jobs_held(client: TestClient, user: TestUser) -> int:
    return int(client.get("/v1/balance", headers=user.auth).json()["held"])


# -- the wallet's monthly limit ---------------------------------------------------


def test_the_spend_limit_api(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    assert client.get("/v1/spend-limit", headers=sam.auth).json() == {
        "monthly_credits": None,
        "spent": 0,
        "resets_at": "2026-02-01T00:00:00Z",
    }
    answer = set_limit(client, sam, 20)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"monthly_credits": 20, "spent": 0, "resets_at": "2026-02-01T00:00:00Z"}
    accepted(client, sam.auth)
    assert client.get("/v1/spend-limit", headers=sam.auth).json()["spent"] == 5
    for bad in ({"monthly_credits": 0}, {"monthly_credits": -3}, {"monthly_credits": "7"},
                {"monthly_credits": True}, {"monthly_credits": 2.5}, {"monthly_credits": 10**13},
                {}, {"monthly_credits": 5, "other": 1}):  # fmt: skip
        refusal = client.put("/v1/spend-limit", json=bad, headers=sam.auth)
        assert (refusal.status_code, refusal.json()["code"]) == (422, "invalid_input"), bad
    assert client.get("/v1/spend-limit", headers=sam.auth).json()["monthly_credits"] == 20
    cleared = set_limit(client, sam, None)
    assert cleared.json() == {
        "monthly_credits": None,
        "spent": 5,
        "resets_at": "2026-02-01T00:00:00Z",
    }
    # Each change is in the audit log, with what it replaced (a refused one is not).
    with platform.db.read() as conn:
        changes = conn.execute(
            select(audit_log.c.actor, audit_log.c.target, audit_log.c.data)
            .where(audit_log.c.action == "credits.spend_limit")
            .order_by(audit_log.c.id)
        ).all()
    assert [(a, t, json.loads(d)) for a, t, d in changes] == [
        (sam.id, sam.wallet_id, {"before": None, "after": 20}),
        (sam.id, sam.wallet_id, {"before": 20, "after": None}),
    ]
    assert client.get("/v1/spend-limit").status_code == 401


def test_a_wallet_limit_refuses_counts_only_what_is_spent_and_resets_with_the_month(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    # Purchased credits too: the plan's monthly ones end with January.
    sam = make_user(platform, "sam@example.com", plan="starter", credits=100)
    assert set_limit(client, sam, 12).status_code == 200
    first = accepted(client, sam.auth)
    accepted(client, sam.auth)
    problem = refused(client, sam.auth, "wallet_monthly", FEB_1)
    assert (problem["cap"], problem["spent"], problem["status"]) == (12, 10, 402)
    assert "is 12" in problem["detail"]
    assert "2026-02-01 00:00 UTC" in problem["detail"]
    # The refusal wrote nothing: still two jobs held.
    assert jobs_held(client, sam) == 10
    # A quote says so, and holds nothing.
    quote = client.post(
        "/v1/quotes", json={"model": "flux-dev", "prompt": "a quote"}, headers=sam.auth
    ).json()
    assert (quote["allowed"], quote["credits"]) == (False, 5)
    assert "monthly spend limit" in quote["reason"]
    # A canceled job gave its credits back: they no longer count.
    canceled = client.post(f"/v1/generations/{first['id']}/cancel", headers=sam.auth)
    assert canceled.json()["status"] == "canceled"
    failing = accepted(client, sam.auth, fail=True)
    refused(client, sam.auth, "wallet_monthly", FEB_1)
    # ... nor does one that failed; the two others succeed and are charged.
    assert drain(platform) == 2
    assert client.get(f"/v1/generations/{failing['id']}", headers=sam.auth).json()["status"] == (
        "failed"
    )
    assert client.get("/v1/spend-limit", headers=sam.auth).json()["spent"] == 5
    accepted(client, sam.auth)
    refused(client, sam.auth, "wallet_monthly", FEB_1)
    # The last minute of January still counts January; February starts afresh.
    clock.set(datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC))
    refused(client, sam.auth, "wallet_monthly", FEB_1)
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))
    assert client.get("/v1/spend-limit", headers=sam.auth).json() == {
        "monthly_credits": 12,
        "spent": 0,
        "resets_at": "2026-03-01T00:00:00Z",
    }
    accepted(client, sam.auth)
    accepted(client, sam.auth)
    refused(client, sam.auth, "wallet_monthly", "2026-03-01T00:00:00+00:00")


def test_a_limit_below_what_was_spent_refuses_until_the_month_ends(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    accepted(client, sam.auth)
    accepted(client, sam.auth)
    assert set_limit(client, sam, 6).json()["spent"] == 10
    problem = refused(client, sam.auth, "wallet_monthly", FEB_1)
    assert (problem["cap"], problem["spent"]) == (6, 10)
    assert set_limit(client, sam, None).status_code == 200
    accepted(client, sam.auth)


# -- API keys -----------------------------------------------------------------------


def test_api_keys_carry_limits_and_show_what_they_spent(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    key = new_key(client, sam, daily_credit_limit=10, monthly_credit_limit=15)
    assert (key["daily_credit_limit"], key["monthly_credit_limit"]) == (10, 15)
    assert (key["spent_today"], key["spent_this_month"]) == (0, 0)
    plain = new_key(client, sam)
    assert (plain["daily_credit_limit"], plain["monthly_credit_limit"]) == (None, None)
    accepted(client, bearer(key))
    listed = {k["id"]: k for k in client.get("/v1/api-keys", headers=sam.auth).json()["data"]}
    assert (listed[key["id"]]["spent_today"], listed[key["id"]]["spent_this_month"]) == (5, 5)
    assert listed[plain["id"]]["spent_today"] == 0
    assert "key" not in listed[key["id"]]
    for bad in ({"daily_credit_limit": 0}, {"monthly_credit_limit": -1},
                {"daily_credit_limit": "5"}, {"monthly_credit_limit": True},
                {"daily_credit_limit": 1.5}):  # fmt: skip
        answer = client.post("/v1/api-keys", json={"name": "bad", **bad}, headers=sam.auth)
        assert (answer.status_code, answer.json()["code"]) == (422, "invalid_input"), bad
    changed = client.patch(
        f"/v1/api-keys/{key['id']}",
        json={"daily_credit_limit": None, "monthly_credit_limit": 40},
        headers=sam.auth,
    )
    assert changed.status_code == 200, changed.text
    assert {k: changed.json()[k] for k in ("daily_credit_limit", "monthly_credit_limit")} == {
        "daily_credit_limit": None,
        "monthly_credit_limit": 40,
    }
    assert changed.json()["spent_this_month"] == 5
    # Nobody else's key, and no unknown one.
    eve = make_user(platform, "eve@example.com")
    limits = {"daily_credit_limit": 1, "monthly_credit_limit": 1}
    other = client.patch(f"/v1/api-keys/{key['id']}", json=limits, headers=eve.auth)
    assert (other.status_code, other.json()["code"]) == (404, "not_found")
    unknown = client.patch("/v1/api-keys/key_nope", json=limits, headers=sam.auth)
    assert unknown.status_code == 404
    partial = client.patch(
        f"/v1/api-keys/{key['id']}", json={"daily_credit_limit": 3}, headers=sam.auth
    )
    assert partial.status_code == 422
    # A revoked key's limits no longer change.
    assert client.delete(f"/v1/api-keys/{plain['id']}", headers=sam.auth).status_code == 200
    revoked = client.patch(f"/v1/api-keys/{plain['id']}", json=limits, headers=sam.auth)
    assert (revoked.status_code, revoked.json()["code"]) == (422, "invalid_input")


def test_a_keys_daily_then_monthly_limit_refuses_and_resets(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    key = new_key(client, sam, daily_credit_limit=10, monthly_credit_limit=15)
    robot = bearer(key)
    first = accepted(client, robot)
    accepted(client, robot)
    problem = refused(client, robot, "key_daily", "2026-01-02T00:00:00+00:00")
    assert (problem["cap"], problem["spent"]) == (10, 10)
    # The job records the key it was submitted with.
    assert _api_key_of(platform, first["id"]) == key["id"]
    # The user's other credentials are not limited by this key.
    assert _api_key_of(platform, accepted(client, sam.auth)["id"]) != key["id"]
    quote = client.post(
        "/v1/quotes", json={"model": "flux-dev", "prompt": "a quote"}, headers=robot
    ).json()
    assert quote["allowed"] is False
    assert "daily limit" in quote["reason"]
    clock.advance(timedelta(days=1))
    accepted(client, robot)
    problem = refused(client, robot, "key_monthly", FEB_1)
    assert (problem["cap"], problem["spent"]) == (15, 15)
    listed = {k["id"]: k for k in client.get("/v1/api-keys", headers=sam.auth).json()["data"]}
    assert (listed[key["id"]]["spent_today"], listed[key["id"]]["spent_this_month"]) == (5, 15)
    # A change of the limits holds at once (the cached principal is dropped).
    raised = {"daily_credit_limit": 10, "monthly_credit_limit": 20}
    assert client.patch(f"/v1/api-keys/{key['id']}", json=raised, headers=sam.auth).is_success
    accepted(client, robot)
    refused(client, robot, "key_daily", "2026-01-03T00:00:00+00:00")


def test_a_keys_limit_spans_its_personal_and_team_wallets(
    client: TestClient, platform: Platform
) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    team_id = create_team(client, owner)["id"]
    bob = make_user(platform, "bob@example.com", plan="starter")
    accept(client, bob, invite(client, owner, team_id, "bob@example.com")["token"])
    key = new_key(client, bob, daily_credit_limit=10)
    robot = bearer(key)
    accepted(client, robot)
    accepted(client, robot, team_id=team_id)
    refused(client, robot, "key_daily", "2026-01-02T00:00:00+00:00", team_id=team_id)
    refused(client, robot, "key_daily", "2026-01-02T00:00:00+00:00")


# -- team members' caps and team wallets ------------------------------------------


def test_a_members_cap_is_a_spend_limit_reached(client: TestClient, platform: Platform) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    team_id = create_team(client, owner)["id"]
    bob = make_user(platform, "bob@example.com")
    accept(client, bob, invite(client, owner, team_id, "bob@example.com")["token"])
    capped = client.patch(
        f"/v1/teams/{team_id}/members/{bob.id}",
        json={"monthly_credit_cap": 7},
        headers=owner.auth,
    )
    assert capped.status_code == 200, capped.text
    accepted(client, bob.auth, team_id=team_id)
    problem = refused(client, bob.auth, "member_monthly", FEB_1, team_id=team_id)
    assert (problem["cap"], problem["spent"]) == (7, 5)
    assert "your monthly cap" in problem["detail"]


def test_only_a_teams_owner_sets_its_wallets_limit(client: TestClient, platform: Platform) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    team_id = create_team(client, owner)["id"]
    bob = make_user(platform, "bob@example.com")
    accept(client, bob, invite(client, owner, team_id, "bob@example.com")["token"])
    eve = make_user(platform, "eve@example.com")
    answer = set_limit(client, owner, 5, team_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["monthly_credits"] == 5
    # The team's wallet is its owner's.
    assert client.get("/v1/spend-limit", headers=owner.auth).json()["monthly_credits"] == 5
    for user, status, code in ((bob, 403, "forbidden"), (eve, 404, "not_found")):
        put = set_limit(client, user, 100, team_id)
        assert (put.status_code, put.json()["code"]) == (status, code)
        got = client.get(f"/v1/spend-limit?team_id={team_id}", headers=user.auth)
        assert (got.status_code, got.json()["code"]) == (status, code)
    assert client.get("/v1/spend-limit", headers=owner.auth).json()["monthly_credits"] == 5
    # The member's team submissions spend the team's wallet, within its limit.
    accepted(client, bob.auth, team_id=team_id)
    refused(client, bob.auth, "wallet_monthly", FEB_1, team_id=team_id)
    # Bob's own wallet has no limit.
    assert client.get("/v1/spend-limit", headers=bob.auth).json()["monthly_credits"] is None


# -- helpers -----------------------------------------------------------------------


def _api_key_of(platform: Platform, generation_id: str) -> str | None:
    with platform.db.read() as conn:
        found: str | None = conn.execute(
            select(generations.c.api_key_id).where(generations.c.id == generation_id)
        ).scalar_one()
    return found

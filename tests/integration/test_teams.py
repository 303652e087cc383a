"""Studio teams through the HTTP API: create, invite, accept, seats, caps,
leaving and removal, and the rules behind them (tested without a database)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from plasmaart.catalog import load_catalog
from plasmaart.clock import ManualClock
from plasmaart.controls.limits import within as within_cap
from plasmaart.db.tables import audit_log, invitations, subscriptions
from plasmaart.errors import InvalidInput
from plasmaart.generation.service import TEAM_CANCEL_ROLES, may_cancel
from plasmaart.platform import Platform
from plasmaart.teams.service import (
    INVITATION_LIFETIME,
    cheapest_team_plan,
    invitation_email,
    invitation_is_pending,
    monthly_credit_cap,
    plan_allows_teams,
    seats_left,
    team_name,
)
from tests.support.accounts import TestUser as Caller
from tests.support.accounts import make_user

TEAM_TABLES = ("teams", "team_members", "invitations", "audit_log")


def counts(platform: Platform) -> dict[str, int]:
    with platform.db.read() as conn:
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in TEAM_TABLES
        }


def create_team(client: TestClient, owner: Caller, name: str = "Night Shift") -> dict[str, Any]:
    answer = client.post("/v1/teams", json={"name": name}, headers=owner.auth)
    assert answer.status_code == 201, answer.text
    team: dict[str, Any] = answer.json()
    return team


def invite(client: TestClient, owner: Caller, team_id: str, email: str) -> dict[str, Any]:
    answer = client.post(
        f"/v1/teams/{team_id}/invitations", json={"email": email}, headers=owner.auth
    )
    assert answer.status_code == 201, answer.text
    invitation: dict[str, Any] = answer.json()
    return invitation


def accept(client: TestClient, user: Caller, token: str) -> dict[str, Any]:
    answer = client.post(f"/v1/invitations/{token}/accept", headers=user.auth)
    assert answer.status_code == 200, answer.text
    team: dict[str, Any] = answer.json()
    return team


def members(client: TestClient, user: Caller, team_id: str) -> dict[str, dict[str, Any]]:
    answer = client.get(f"/v1/teams/{team_id}/members", headers=user.auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["next_cursor"] is None
    return {member["email"]: member for member in answer.json()["data"]}


def refused(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


def team_of(platform: Platform, client: TestClient) -> tuple[Caller, dict[str, Any]]:
    owner = make_user(platform, "owner@example.com", plan="studio")
    return owner, create_team(client, owner)


def team_with_member(
    platform: Platform, client: TestClient
) -> tuple[Caller, Caller, dict[str, Any]]:
    owner, team = team_of(platform, client)
    bob = make_user(platform, "bob@example.com")
    accept(client, bob, invite(client, owner, team["id"], "bob@example.com")["token"])
    return owner, bob, team


def audit_actions(platform: Platform, team_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.data)
            .where(audit_log.c.target == team_id)
            .order_by(audit_log.c.id)
        ).all()
    return [(row.actor, row.action, json.loads(row.data)) for row in rows]


# -- the whole story ------------------------------------------------------


def test_studio_owner_fills_the_seats_and_no_more(client: TestClient, platform: Platform) -> None:
    owner, team = team_of(platform, client)
    assert team["name"] == "Night Shift"
    assert team["owner_id"] == owner.id
    assert team["seats"] == {"used": 1, "pending": 0, "total": 5}
    # The team spends the owner's wallet.
    with platform.db.read() as conn:
        assert platform.teams.team_wallet(conn, team["id"]) == owner.wallet_id

    bob = make_user(platform, "bob@example.com")
    cara = make_user(platform, "cara@example.com", plan="pro")
    to_bob = invite(client, owner, team["id"], "Bob@Example.com ")
    to_cara = invite(client, owner, team["id"], "cara@example.com")
    assert to_bob["email"] == "bob@example.com"
    assert to_bob["token"] != to_cara["token"]
    expires = datetime.fromisoformat(to_bob["expires_at"])
    assert expires == platform.clock.now() + timedelta(days=7)

    # The token is stored only as its SHA-256.
    with platform.db.read() as conn:
        stored = conn.execute(
            select(invitations.c.token_hash).where(invitations.c.id == to_bob["id"])
        ).scalar_one()
    assert stored == hashlib.sha256(to_bob["token"].encode()).hexdigest()
    assert to_bob["token"] not in stored

    joined = accept(client, bob, to_bob["token"])
    assert joined["id"] == team["id"]
    assert joined["seats"] == {"used": 3, "pending": 1, "total": 5}
    accept(client, cara, to_cara["token"])

    listed = members(client, bob, team["id"])
    assert list(listed) == ["owner@example.com", "bob@example.com", "cara@example.com"]
    assert listed["owner@example.com"]["role"] == "owner"
    assert listed["bob@example.com"] == {
        "user_id": bob.id,
        "email": "bob@example.com",
        "role": "member",
        "monthly_credit_cap": None,
        "joined_at": listed["bob@example.com"]["joined_at"],
    }

    # Two more invitations fill the five seats (the owner counts).
    invite(client, owner, team["id"], "dan@example.com")
    invite(client, owner, team["id"], "eve@example.com")
    seats = client.get(f"/v1/teams/{team['id']}", headers=owner.auth).json()["seats"]
    assert seats == {"used": 5, "pending": 2, "total": 5}

    before = counts(platform)
    sixth = refused(
        client.post(
            f"/v1/teams/{team['id']}/invitations",
            json={"email": "fay@example.com"},
            headers=owner.auth,
        ),
        409,
        "seats_exhausted",
    )
    assert sixth["seats_total"] == 5
    assert counts(platform) == before

    # /v1/me lists the team, with each user's role in it.
    assert client.get("/v1/me", headers=owner.auth).json()["teams"] == [
        {"id": team["id"], "name": "Night Shift", "role": "owner"}
    ]
    assert client.get("/v1/me", headers=cara.auth).json()["teams"] == [
        {"id": team["id"], "name": "Night Shift", "role": "member"}
    ]
    outsider = make_user(platform, "zed@example.com")
    assert client.get("/v1/me", headers=outsider.auth).json()["teams"] == []

    actions = audit_actions(platform, team["id"])
    assert [action for _, action, _ in actions] == [
        "team.create",
        "team.invite",
        "team.invite",
        "team.join",
        "team.join",
        "team.invite",
        "team.invite",
    ]
    assert all(actor == owner.id for actor, action, _ in actions if action != "team.join")
    assert {actor for actor, action, _ in actions if action == "team.join"} == {bob.id, cara.id}
    assert actions[1][2] == {"email": "bob@example.com", "invitation_id": to_bob["id"]}


def test_service_answers_what_generation_needs(client: TestClient, platform: Platform) -> None:
    owner, bob, team = team_with_member(platform, client)
    client.patch(
        f"/v1/teams/{team['id']}/members/{bob.id}",
        json={"monthly_credit_cap": 300},
        headers=owner.auth,
    )
    stranger = make_user(platform, "zed@example.com")
    with platform.db.read() as conn:
        member = platform.teams.membership(conn, team["id"], bob.id)
        assert member is not None
        assert (member.role, member.monthly_credit_cap) == ("member", 300)
        boss = platform.teams.membership(conn, team["id"], owner.id)
        assert boss is not None
        assert (boss.role, boss.monthly_credit_cap) == ("owner", None)
        assert platform.teams.membership(conn, team["id"], stranger.id) is None
        assert platform.teams.team_wallet(conn, team["id"]) == owner.wallet_id
        assert [(m.team.id, m.role) for m in platform.teams.teams_of(conn, bob.id)] == [
            (team["id"], "member")
        ]
        assert platform.teams.teams_of(conn, stranger.id) == []


# -- who may do what -------------------------------------------------------


def test_only_studio_may_create_a_team(client: TestClient, platform: Platform) -> None:
    pro = make_user(platform, "pro@example.com", plan="pro")
    free = make_user(platform, "free@example.com")
    before = counts(platform)
    for user in (pro, free):
        body = refused(
            client.post("/v1/teams", json={"name": "Ours"}, headers=user.auth), 403, "forbidden"
        )
        assert body["required_plan"] == "studio"
        plan = "Pro" if user is pro else "Free"
        assert body["detail"] == f"teams are not part of the {plan} plan; Studio includes them"
    assert counts(platform) == before
    assert client.get("/v1/me", headers=pro.auth).json()["teams"] == []


def test_one_team_per_owner(client: TestClient, platform: Platform) -> None:
    owner, _team = team_of(platform, client)
    before = counts(platform)
    refused(
        client.post("/v1/teams", json={"name": "Second"}, headers=owner.auth),
        409,
        "already_owns_team",
    )
    assert counts(platform) == before


def test_team_names_are_checked(client: TestClient, platform: Platform) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    before = counts(platform)
    for body in ({"name": "   "}, {"name": ""}, {"name": "x" * 101}, {}, {"name": "A", "x": 1}):
        refused(client.post("/v1/teams", json=body, headers=owner.auth), 422, "invalid_input")
    assert counts(platform) == before
    assert create_team(client, owner, "  Padded  ")["name"] == "Padded"


def test_members_cannot_do_what_only_the_owner_may(client: TestClient, platform: Platform) -> None:
    owner, bob, team = team_with_member(platform, client)
    cara = make_user(platform, "cara@example.com")
    to_cara = invite(client, owner, team["id"], "cara@example.com")
    accept(client, cara, to_cara["token"])
    pending = invite(client, owner, team["id"], "dan@example.com")
    base = f"/v1/teams/{team['id']}"
    before = counts(platform)
    refused(
        client.post(f"{base}/invitations", json={"email": "x@example.com"}, headers=bob.auth),
        403,
        "forbidden",
    )
    refused(client.get(f"{base}/invitations", headers=bob.auth), 403, "forbidden")
    refused(
        client.delete(f"{base}/invitations/{pending['id']}", headers=bob.auth), 403, "forbidden"
    )
    refused(
        client.patch(f"{base}/members/{bob.id}", json={"monthly_credit_cap": 9}, headers=bob.auth),
        403,
        "forbidden",
    )
    refused(client.delete(f"{base}/members/{cara.id}", headers=bob.auth), 403, "forbidden")
    refused(client.delete(f"{base}/members/{owner.id}", headers=bob.auth), 403, "forbidden")
    assert counts(platform) == before
    # But a member may see the team and its members.
    assert client.get(base, headers=bob.auth).status_code == 200
    assert len(members(client, bob, team["id"])) == 3


def test_non_members_get_404_everywhere(client: TestClient, platform: Platform) -> None:
    owner, bob, team = team_with_member(platform, client)
    pending = invite(client, owner, team["id"], "dan@example.com")
    stranger = make_user(platform, "zed@example.com", plan="studio")
    base = f"/v1/teams/{team['id']}"
    before = counts(platform)
    for team_path in (base, "/v1/teams/team_unknown"):
        calls = [
            client.get(team_path, headers=stranger.auth),
            client.get(f"{team_path}/members", headers=stranger.auth),
            client.get(f"{team_path}/invitations", headers=stranger.auth),
            client.post(
                f"{team_path}/invitations", json={"email": "y@example.com"}, headers=stranger.auth
            ),
            client.delete(f"{team_path}/invitations/{pending['id']}", headers=stranger.auth),
            client.delete(f"{team_path}/members/{bob.id}", headers=stranger.auth),
            client.delete(f"{team_path}/members/{stranger.id}", headers=stranger.auth),
            client.patch(
                f"{team_path}/members/{bob.id}",
                json={"monthly_credit_cap": 1},
                headers=stranger.auth,
            ),
        ]
        for answer in calls:
            body = refused(answer, 404, "not_found")
            assert "bob@example.com" not in json.dumps(body)
    assert counts(platform) == before
    assert client.get(base).status_code == 401


# -- invitations ------------------------------------------------------------


def test_accept_refuses_every_token_that_is_not_yours(
    client: TestClient, platform: Platform
) -> None:
    owner, team = team_of(platform, client)
    bob = make_user(platform, "bob@example.com")
    mallory = make_user(platform, "mallory@example.com")
    to_bob = invite(client, owner, team["id"], "bob@example.com")
    to_cara = invite(client, owner, team["id"], "cara@example.com")
    before = counts(platform)
    # Another account (the owner's too) is told the invitation is for another
    # address; an unknown token is an invalid link.
    refused(
        client.post(f"/v1/invitations/{to_bob['token']}/accept", headers=mallory.auth),
        403,
        "invitation_for_another_address",
    )
    refused(
        client.post("/v1/invitations/pa_inv_nothing/accept", headers=bob.auth),
        400,
        "invalid_token",
    )
    refused(
        client.post(f"/v1/invitations/{to_bob['token']}/accept", headers=owner.auth),
        403,
        "invitation_for_another_address",
    )
    assert client.post(f"/v1/invitations/{to_bob['token']}/accept").status_code == 401
    assert counts(platform) == before

    accept(client, bob, to_bob["token"])
    # A used token is gone.
    refused(
        client.post(f"/v1/invitations/{to_bob['token']}/accept", headers=bob.auth),
        400,
        "invalid_token",
    )

    # A revoked one too, and its seat is free again at once.
    cara = make_user(platform, "cara@example.com")
    listed = client.get(f"/v1/teams/{team['id']}/invitations", headers=owner.auth).json()
    assert [(i["id"], i["email"]) for i in listed["data"]] == [(to_cara["id"], "cara@example.com")]
    assert "token" not in listed["data"][0]
    revoked = client.delete(
        f"/v1/teams/{team['id']}/invitations/{to_cara['id']}", headers=owner.auth
    )
    assert revoked.status_code == 204
    refused(
        client.post(f"/v1/invitations/{to_cara['token']}/accept", headers=cara.auth),
        400,
        "invalid_token",
    )
    refused(
        client.delete(f"/v1/teams/{team['id']}/invitations/{to_cara['id']}", headers=owner.auth),
        404,
        "not_found",
    )
    seats = client.get(f"/v1/teams/{team['id']}", headers=owner.auth).json()["seats"]
    assert seats == {"used": 2, "pending": 0, "total": 5}
    assert [action for _, action, _ in audit_actions(platform, team["id"])][-1] == (
        "team.invitation_revoke"
    )


def test_expired_invitations_are_gone_and_free_their_seat(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    owner, team = team_of(platform, client)
    bob = make_user(platform, "bob@example.com")
    old = invite(client, owner, team["id"], "bob@example.com")
    clock.advance(timedelta(days=6, hours=23))
    seats = client.get(f"/v1/teams/{team['id']}", headers=owner.auth).json()["seats"]
    assert seats["pending"] == 1
    clock.advance(timedelta(hours=1))
    before = counts(platform)
    refused(
        client.post(f"/v1/invitations/{old['token']}/accept", headers=bob.auth),
        400,
        "invalid_token",
    )
    assert counts(platform) == before
    seats = client.get(f"/v1/teams/{team['id']}", headers=owner.auth).json()["seats"]
    assert seats == {"used": 1, "pending": 0, "total": 5}
    # The address may be invited again, and the new token works.
    fresh = invite(client, owner, team["id"], "bob@example.com")
    assert accept(client, bob, fresh["token"])["seats"]["used"] == 2


def test_duplicate_and_malformed_invitations_are_refused(
    client: TestClient, platform: Platform
) -> None:
    owner, _bob, team = team_with_member(platform, client)
    invite(client, owner, team["id"], "cara@example.com")
    path = f"/v1/teams/{team['id']}/invitations"
    before = counts(platform)
    for email, status, code in (
        ("BOB@example.com", 409, "already_member"),
        ("owner@example.com", 409, "already_member"),
        (" Cara@Example.com", 409, "already_invited"),
        ("not-an-address", 422, "invalid_input"),
    ):
        refused(client.post(path, json={"email": email}, headers=owner.auth), status, code)
    assert counts(platform) == before


def test_accept_rechecks_the_seats_of_the_owners_plan_now(
    client: TestClient, platform: Platform
) -> None:
    owner, team = team_of(platform, client)
    bob = make_user(platform, "bob@example.com")
    to_bob = invite(client, owner, team["id"], "bob@example.com")
    # The owner's subscription lapses: Free has one seat, which the owner holds.
    with platform.db.write() as conn:
        conn.execute(
            update(subscriptions)
            .where(subscriptions.c.wallet_id == owner.wallet_id)
            .values(status="canceled")
        )
    before = counts(platform)
    refused(
        client.post(f"/v1/invitations/{to_bob['token']}/accept", headers=bob.auth),
        409,
        "seats_exhausted",
    )
    refused(
        client.post(
            f"/v1/teams/{team['id']}/invitations",
            json={"email": "cara@example.com"},
            headers=owner.auth,
        ),
        409,
        "seats_exhausted",
    )
    assert counts(platform) == before
    assert client.get("/v1/me", headers=bob.auth).json()["teams"] == []


# -- caps, leaving, removal ------------------------------------------------


def test_owner_sets_and_clears_caps(client: TestClient, platform: Platform) -> None:
    owner, bob, team = team_with_member(platform, client)
    path = f"/v1/teams/{team['id']}/members/{bob.id}"
    capped = client.patch(path, json={"monthly_credit_cap": 500}, headers=owner.auth)
    assert capped.status_code == 200, capped.text
    assert capped.json()["monthly_credit_cap"] == 500
    assert capped.json()["user_id"] == bob.id
    assert members(client, bob, team["id"])["bob@example.com"]["monthly_credit_cap"] == 500
    zero = client.patch(path, json={"monthly_credit_cap": 0}, headers=owner.auth)
    assert zero.json()["monthly_credit_cap"] == 0

    before = counts(platform)
    for body in (
        {"monthly_credit_cap": -1},
        {"monthly_credit_cap": "5"},
        {"monthly_credit_cap": True},
        {"monthly_credit_cap": 1.5},
        {"monthly_credit_cap": 10**13},
        {},
        {"monthly_credit_cap": 5, "role": "owner"},
    ):
        refused(client.patch(path, json=body, headers=owner.auth), 422, "invalid_input")
    stranger = make_user(platform, "zed@example.com")
    refused(
        client.patch(
            f"/v1/teams/{team['id']}/members/{stranger.id}",
            json={"monthly_credit_cap": 5},
            headers=owner.auth,
        ),
        404,
        "not_found",
    )
    assert counts(platform) == before

    cleared = client.patch(path, json={"monthly_credit_cap": None}, headers=owner.auth)
    assert cleared.json()["monthly_credit_cap"] is None
    assert members(client, owner, team["id"])["bob@example.com"]["monthly_credit_cap"] is None
    caps = [
        (actor, data)
        for actor, action, data in audit_actions(platform, team["id"])
        if action == "team.member_cap"
    ]
    assert caps == [
        (owner.id, {"user_id": bob.id, "before": None, "after": 500}),
        (owner.id, {"user_id": bob.id, "before": 500, "after": 0}),
        (owner.id, {"user_id": bob.id, "before": 0, "after": None}),
    ]


def test_members_leave_and_the_owner_removes_but_stays(
    client: TestClient, platform: Platform
) -> None:
    owner, bob, team = team_with_member(platform, client)
    cara = make_user(platform, "cara@example.com")
    accept(client, cara, invite(client, owner, team["id"], "cara@example.com")["token"])
    base = f"/v1/teams/{team['id']}/members"

    left = client.delete(f"{base}/{bob.id}", headers=bob.auth)
    assert left.status_code == 204
    assert client.get("/v1/me", headers=bob.auth).json()["teams"] == []
    refused(client.get(base, headers=bob.auth), 404, "not_found")
    assert list(members(client, owner, team["id"])) == ["owner@example.com", "cara@example.com"]

    before = counts(platform)
    refused(client.delete(f"{base}/{owner.id}", headers=owner.auth), 409, "owner_not_removable")
    refused(client.delete(f"{base}/{bob.id}", headers=owner.auth), 404, "not_found")
    assert counts(platform) == before

    assert client.delete(f"{base}/{cara.id}", headers=owner.auth).status_code == 204
    assert list(members(client, owner, team["id"])) == ["owner@example.com"]
    seats = client.get(f"/v1/teams/{team['id']}", headers=owner.auth).json()["seats"]
    assert seats == {"used": 1, "pending": 0, "total": 5}

    removals = [
        (actor, action, data["user_id"])
        for actor, action, data in audit_actions(platform, team["id"])
        if action in ("team.leave", "team.member_remove")
    ]
    assert removals == [
        (bob.id, "team.leave", bob.id),
        (owner.id, "team.member_remove", cara.id),
    ]


def test_members_are_paged_in_joining_order(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    owner, team = team_of(platform, client)
    joined = []
    for name in ("bob", "cara", "dan"):
        user = make_user(platform, f"{name}@example.com")
        clock.advance(timedelta(minutes=1))
        accept(client, user, invite(client, owner, team["id"], user.email)["token"])
        joined.append(user.email)
    path = f"/v1/teams/{team['id']}/members"
    first = client.get(path, params={"limit": 3}, headers=owner.auth).json()
    assert [m["email"] for m in first["data"]] == ["owner@example.com", *joined[:2]]
    assert first["next_cursor"]
    second = client.get(
        path, params={"limit": 3, "cursor": first["next_cursor"]}, headers=owner.auth
    ).json()
    assert [m["email"] for m in second["data"]] == joined[2:]
    assert second["next_cursor"] is None
    refused(
        client.get(path, params={"cursor": "garbage"}, headers=owner.auth), 422, "invalid_input"
    )
    refused(client.get(path, params={"limit": 0}, headers=owner.auth), 422, "invalid_input")


# -- the rules, without a database -----------------------------------------


def test_seats_left_never_goes_negative() -> None:
    assert seats_left(5, 1, 0) == 4
    assert seats_left(5, 3, 2) == 0
    assert seats_left(1, 3, 1) == 0  # the owner's plan shrank under the team


def test_an_invitation_is_pending_until_accepted_revoked_or_expired() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    expires = now + INVITATION_LIFETIME
    assert invitation_is_pending(accepted_at=None, revoked_at=None, expires_at=expires, now=now)
    assert not invitation_is_pending(accepted_at=now, revoked_at=None, expires_at=expires, now=now)
    assert not invitation_is_pending(accepted_at=None, revoked_at=now, expires_at=expires, now=now)
    assert not invitation_is_pending(
        accepted_at=None, revoked_at=None, expires_at=expires, now=expires
    )


def test_caps_and_what_they_allow() -> None:
    assert monthly_credit_cap(None) is None
    assert monthly_credit_cap(0) == 0
    assert monthly_credit_cap(1200) == 1200
    for bad in (-1, True, 10**13):
        with pytest.raises(InvalidInput):
            monthly_credit_cap(bad)
    assert within_cap(None, 10**9, 800)
    assert within_cap(1000, 200, 800)
    assert not within_cap(1000, 201, 800)
    assert not within_cap(0, 0, 1)


def test_names_addresses_and_which_plans_have_teams() -> None:
    assert team_name("  Night Shift ") == "Night Shift"
    with pytest.raises(InvalidInput):
        team_name(" ")
    assert invitation_email(" Bob@Example.COM ") == "bob@example.com"
    with pytest.raises(InvalidInput):
        invitation_email("bob@localhost")
    catalog = load_catalog()
    assert [plan.id for plan in catalog.plans if plan_allows_teams(plan)] == ["studio"]
    cheapest = cheapest_team_plan(catalog)
    assert cheapest is not None
    assert cheapest.id == "studio"


def test_who_may_cancel_a_generation() -> None:
    # The submitter always; in a team, also whoever runs it (the owner); no one else.
    assert may_cancel("usr_ann", "usr_ann", None, frozenset())
    assert may_cancel("usr_ann", "usr_ann", "team_a", frozenset())
    assert may_cancel("usr_own", "usr_ann", "team_a", frozenset({"team_a"}))
    assert not may_cancel("usr_ben", "usr_ann", "team_a", frozenset())
    assert not may_cancel("usr_own", "usr_ann", "team_a", frozenset({"team_b"}))
    assert not may_cancel("usr_own", "usr_ann", None, frozenset({"team_a"}))
    assert frozenset({"owner"}) == TEAM_CANCEL_ROLES

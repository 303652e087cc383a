"""The authorization matrix: every route of the app, called by five callers
(anonymous, the owner of the resource, an unrelated user, a member of the
owner's team, an admin), each getting exactly what ``ROWS`` says.

The rules the table spells out:

* anonymous gets 401 ``unauthenticated`` everywhere but the public routes
  (operations, docs, catalog reads, sign-up, login);
* another user's resources answer 404 ``not_found``, never 403;
* under a team, members may read; what only the owner may do is 403
  ``forbidden`` for a member and 404 for everyone outside the team;
* admin routes are 404 for everybody but admins;
* an admin acting on somebody's personal resources through the ordinary
  routes (API keys, notifications, team membership) gets 404 like anyone.

Every refusal is problem+json with the expected ``code``, names nothing of the
owner's that the request did not already name, and changes no row of any
table; reads change nothing either. User-scoped answers are about the caller.

``test_every_route_has_a_row`` fails for any route of the app without a row,
so a new endpoint cannot land without its authorization rows.

Each test builds its own world and runs the whole table, in order, as one of
the callers (so a row that mutates only affects later rows of that column,
and the table is ordered for that); failures are collected and reported
together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.bootstrap import Platform
from plasmaart.catalog import PlanSpec, plan_allows_model
from plasmaart.db.tables import api_keys, notifications, team_members
from plasmaart.web.problems import PROBLEM_JSON
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.matrix import (
    CALLERS,
    FORBIDDEN,
    NOT_FOUND,
    UNAUTHENTICATED,
    Caller,
    Refusal,
    Row,
    changes,
    coverage_problems,
    snapshot,
)

SAFE_METHODS = frozenset({"GET", "HEAD"})
# A model that only Pro and Studio include: whether it is ``available``
# depends on who asks.
PREMIUM_MODEL = "veo3"
NEW_CAP = 100
ADMIN_GRANT = 5


@dataclass(frozen=True)
class World:
    """A Studio ``owner`` with a team (``member`` joined, ``invitee`` and
    pending@example.com invited), a spare API key and a notification; an
    unrelated ``other`` on Studio too, with a notification of their own;
    an ``admin``. Everybody holds some credits. Studio has 5 seats: the owner,
    the member and the two pending invitations leave one for the invitation
    row to take."""

    owner: TestUser
    other: TestUser
    member: TestUser
    admin: TestUser
    invitee: TestUser
    team_id: str
    spare_key_id: str  # the owner's, not the one the owner calls with
    invitation_id: str  # pending, for pending@example.com
    accept_token: str  # pending, for the invitee
    notification_id: str  # the owner's

    def caller(self, caller: Caller, row: Row) -> TestUser | None:
        if caller == "anonymous":
            return None
        user: TestUser = getattr(self, row.owner_as if caller == "owner" else caller)
        return user

    def owner_markers(self) -> dict[str, str]:
        """What identifies the owner's personal data: nobody else may see it."""
        return {
            "owner id": self.owner.id,
            "owner e-mail": self.owner.email,
            "owner wallet": self.owner.wallet_id,
            "owner spare key id": self.spare_key_id,
            "owner notification id": self.notification_id,
        }


def build_world(platform: Platform) -> World:
    owner = make_user(platform, "owner@example.com", plan="studio", credits=700)
    other = make_user(platform, "other@example.com", plan="studio", credits=11)
    member = make_user(platform, "member@example.com", credits=22)
    admin = make_user(platform, "admin@example.com", admin=True, credits=33)
    invitee = make_user(platform, "invitee@example.com")
    teams, notify = platform.teams, platform.notifications
    with platform.db.write() as conn:
        team = teams.create_team(conn, platform.accounts.get(conn, owner.id), "Night Shift")
        joining = teams.invite(conn, team.id, owner.id, member.email)
        accept = teams.invite(conn, team.id, owner.id, invitee.email)
        pending = teams.invite(conn, team.id, owner.id, "pending@example.com")
        spare = platform.credentials.create_api_key(conn, owner.id, "spare")
        mine = notify.notify(conn, owner.id, "catalog.change", "Price change", "Veo 3 costs more.")
        notify.notify(conn, other.id, "catalog.change", "New model", "Try Wan Pro.")
    with platform.db.write() as conn:
        teams.accept_invitation(conn, joining.token, platform.accounts.get(conn, member.id))
    return World(
        owner=owner,
        other=other,
        member=member,
        admin=admin,
        invitee=invitee,
        team_id=team.id,
        spare_key_id=spare.key.id,
        invitation_id=pending.invitation.id,
        accept_token=accept.token,
        notification_id=mine.id,
    )


@dataclass(frozen=True)
class Reply:
    """What came back: for an event stream, only its first chunk."""

    status_code: int
    content_type: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass(frozen=True)
class Answer:
    """A successful answer, for a row's ``check``."""

    platform: Platform
    world: World
    caller: TestUser | None
    response: Reply

    @property
    def body(self) -> Any:
        return self.response.json()

    @property
    def me(self) -> TestUser:
        assert self.caller is not None, "a check about the caller on a public row"
        return self.caller

    def plan(self) -> PlanSpec:
        if self.caller is None:
            return self.platform.catalog.default_plan
        with self.platform.db.read() as conn:
            return self.platform.billing.current_plan(conn, self.caller.wallet_id)

    def available(self) -> int:
        with self.platform.db.read() as conn:
            return self.platform.ledger.balance(conn, self.me.wallet_id).available


# -- checks of successful answers ------------------------------------------


def is_caller(answer: Answer) -> None:
    assert (answer.body["id"], answer.body["email"]) == (answer.me.id, answer.me.email)


def models_for_callers_plan(answer: Answer) -> None:
    # API.md: ``available`` is for the caller's plan (Free without authentication).
    plan = answer.plan()
    body = answer.body
    models = body.get("data", [body])
    for model in models:
        spec = answer.platform.catalog.model(model["id"])
        assert model["available"] is plan_allows_model(plan, spec), (
            f"{model['id']}: available={model['available']} for a caller on {plan.id}"
        )


def signed_up(answer: Answer) -> None:
    assert answer.body["user"]["email"] == "newcomer@example.com"


def logged_in_as_owner(answer: Answer) -> None:
    assert answer.body["user"]["id"] == answer.world.owner.id


def keys_of(answer: Answer) -> set[str]:
    with answer.platform.db.read() as conn:
        rows = conn.execute(select(api_keys.c.id).where(api_keys.c.user_id == answer.me.id))
        return {row.id for row in rows}


def key_is_callers(answer: Answer) -> None:
    assert answer.body["id"] in keys_of(answer)


def lists_own_keys(answer: Answer) -> None:
    assert {key["id"] for key in answer.body["data"]} == keys_of(answer)


def spare_key_revoked(answer: Answer) -> None:
    assert answer.body["id"] == answer.world.spare_key_id
    assert answer.body["revoked_at"] is not None


def me_with_teams(answer: Answer) -> None:
    is_caller(answer)
    with answer.platform.db.read() as conn:
        mine = answer.platform.teams.teams_of(conn, answer.me.id)
    assert [(t["id"], t["role"]) for t in answer.body["teams"]] == [
        (m.team.id, m.role) for m in mine
    ]
    assert answer.body["balance"]["available"] == answer.available()


def team_owned_by_caller(answer: Answer) -> None:
    assert answer.body["owner_id"] == answer.me.id


def the_team(answer: Answer) -> None:
    assert answer.body["id"] == answer.world.team_id


def invited_fresh(answer: Answer) -> None:
    assert (answer.body["team_id"], answer.body["email"]) == (
        answer.world.team_id,
        "fresh@example.com",
    )


def lists_pending(answer: Answer) -> None:
    ids = {invitation["id"] for invitation in answer.body["data"]}
    assert answer.world.invitation_id in ids


def invitee_joined(answer: Answer) -> None:
    the_team(answer)
    with answer.platform.db.read() as conn:
        role = conn.execute(
            select(team_members.c.role).where(
                team_members.c.team_id == answer.world.team_id,
                team_members.c.user_id == answer.me.id,
            )
        ).scalar_one()
    assert role == "member"


def lists_members(answer: Answer) -> None:
    ids = {member["user_id"] for member in answer.body["data"]}
    assert {answer.world.owner.id, answer.world.member.id} <= ids


def member_capped(answer: Answer) -> None:
    assert (answer.body["user_id"], answer.body["monthly_credit_cap"]) == (
        answer.world.member.id,
        NEW_CAP,
    )


def own_balance(answer: Answer) -> None:
    assert answer.body["available"] == answer.available()


def own_ledger(answer: Answer) -> None:
    # API.md: the amounts of a wallet's entries add up to its available balance.
    assert answer.body["next_cursor"] is None
    assert sum(entry["amount"] for entry in answer.body["data"]) == answer.available()


def no_usage(answer: Answer) -> None:
    assert answer.body == {"data": []}  # nobody generated anything


def usage_csv(answer: Answer) -> None:
    assert answer.response.content_type.startswith("text/csv")
    assert answer.response.text.splitlines()[0].startswith("time,generation_id,")


def event_stream(answer: Answer) -> None:
    assert answer.response.content_type.startswith("text/event-stream")
    assert answer.response.text.startswith("retry: ")


def own_notifications(answer: Answer) -> None:
    with answer.platform.db.read() as conn:
        rows = conn.execute(
            select(notifications.c.id).where(notifications.c.user_id == answer.me.id)
        )
        theirs = {row.id for row in rows}
    assert {item["id"] for item in answer.body["data"]} == theirs


def notification_read(answer: Answer) -> None:
    assert answer.body["id"] == answer.world.notification_id
    assert answer.body["read_at"] is not None


def finds_owner(answer: Answer) -> None:
    assert answer.world.owner.id in {user["id"] for user in answer.body["data"]}


def owner_suspended(answer: Answer) -> None:
    assert (answer.body["id"], answer.body["status"]) == (answer.world.owner.id, "suspended")


def owner_reinstated(answer: Answer) -> None:
    assert (answer.body["id"], answer.body["status"]) == (answer.world.owner.id, "active")


def owner_granted(answer: Answer) -> None:
    assert (answer.body["user_id"], answer.body["amount"]) == (answer.world.owner.id, ADMIN_GRANT)


def json_document(answer: Answer) -> None:
    assert answer.body["info"]["title"] == "PlasmaArt API"


# -- the table ---------------------------------------------------------------

U, F, N = UNAUTHENTICATED, FORBIDDEN, NOT_FOUND
TEAM = "/v1/teams/{w.team_id}"

# Columns: anonymous, owner, other user, team member, admin. Rows run in this
# order within a column: what removes or revokes comes after what needs it.
ROWS: tuple[Row, ...] = (
    # operations and docs: public
    Row("GET /healthz", (200, 200, 200, 200, 200)),
    Row("GET /readyz", (200, 200, 200, 200, 200)),
    Row("GET /metrics", (200, 200, 200, 200, 200)),
    Row("GET /openapi.json", (200, 200, 200, 200, 200), check=json_document),
    Row("GET /docs", (200, 200, 200, 200, 200)),
    Row("GET /docs/oauth2-redirect", (200, 200, 200, 200, 200)),
    Row("GET /redoc", (200, 200, 200, 200, 200)),
    # the catalog: public; ``available`` follows the caller's plan
    Row("GET /v1/models", (200, 200, 200, 200, 200), check=models_for_callers_plan),
    Row(
        "GET /v1/models/{model_id}",
        (200, 200, 200, 200, 200),
        url=f"/v1/models/{PREMIUM_MODEL}",
        check=models_for_callers_plan,
    ),
    Row("GET /v1/plans", (200, 200, 200, 200, 200)),
    Row("GET /v1/credit-packs", (200, 200, 200, 200, 200)),
    # sign-up and login: public (they answer about the body, not the caller)
    Row(
        "POST /v1/auth/signup",
        (201, 201, 201, 201, 201),
        body={"email": "newcomer@example.com", "password": "another long password"},
        check=signed_up,
    ),
    Row(
        "POST /v1/auth/login",
        (200, 200, 200, 200, 200),
        body={"email": "owner@example.com", "password": PASSWORD},
        check=logged_in_as_owner,
    ),
    Row("POST /v1/auth/logout", (U, 204, 204, 204, 204)),
    # the caller's own account and keys
    Row("GET /v1/me", (U, 200, 200, 200, 200), about_caller=True, check=me_with_teams),
    Row(
        "PATCH /v1/me/settings",
        (U, 200, 200, 200, 200),
        body={"remove_watermark": False},
        about_caller=True,
        check=is_caller,
    ),
    Row(
        "POST /v1/api-keys",
        (U, 201, 201, 201, 201),
        body={"name": "matrix"},
        about_caller=True,
        check=key_is_callers,
    ),
    Row("GET /v1/api-keys", (U, 200, 200, 200, 200), about_caller=True, check=lists_own_keys),
    Row(
        "DELETE /v1/api-keys/{key_id}",
        (U, 200, N, N, N),
        url="/v1/api-keys/{w.spare_key_id}",
        check=spare_key_revoked,
    ),
    # teams: the owner already has one; Free plans have none (403 + required_plan)
    Row(
        "POST /v1/teams",
        (U, Refusal(409, "already_owns_team"), 201, F, F),
        body={"name": "Day Shift"},
        check=team_owned_by_caller,
    ),
    Row("GET /v1/teams/{team_id}", (U, 200, N, 200, N), url=TEAM, check=the_team),
    Row(
        "POST /v1/teams/{team_id}/invitations",
        (U, 201, N, F, N),
        url=TEAM + "/invitations",
        body={"email": "fresh@example.com"},
        check=invited_fresh,
    ),
    Row(
        "GET /v1/teams/{team_id}/invitations",
        (U, 200, N, F, N),
        url=TEAM + "/invitations",
        check=lists_pending,
    ),
    Row(
        "DELETE /v1/teams/{team_id}/invitations/{invitation_id}",
        (U, 204, N, F, N),
        url=TEAM + "/invitations/{w.invitation_id}",
    ),
    # the token is the invitee's: only they may accept it
    Row(
        "POST /v1/invitations/{token}/accept",
        (U, 200, N, N, N),
        url="/v1/invitations/{w.accept_token}/accept",
        owner_as="invitee",
        check=invitee_joined,
    ),
    Row(
        "GET /v1/teams/{team_id}/members",
        (U, 200, N, 200, N),
        url=TEAM + "/members",
        check=lists_members,
    ),
    Row(
        "PATCH /v1/teams/{team_id}/members/{user_id}",
        (U, 200, N, F, N),
        url=TEAM + "/members/{w.member.id}",
        body={"monthly_credit_cap": NEW_CAP},
        check=member_capped,
    ),
    # a member may not remove others; nobody removes the owner
    Row(
        "DELETE /v1/teams/{team_id}/members/{user_id}",
        (U, Refusal(409, "owner_not_removable"), N, F, N),
        url=TEAM + "/members/{w.owner.id}",
    ),
    # the owner removes the member, or the member leaves
    Row(
        "DELETE /v1/teams/{team_id}/members/{user_id}",
        (U, 204, N, 204, N),
        url=TEAM + "/members/{w.member.id}",
    ),
    # credits: the caller's own wallet
    Row("GET /v1/balance", (U, 200, 200, 200, 200), about_caller=True, check=own_balance),
    Row("GET /v1/ledger", (U, 200, 200, 200, 200), about_caller=True, check=own_ledger),
    Row(
        "GET /v1/usage",
        (U, 200, 200, 200, 200),
        url="/v1/usage?group_by=day",
        about_caller=True,
        check=no_usage,
    ),
    Row("GET /v1/usage.csv", (U, 200, 200, 200, 200), about_caller=True, check=usage_csv),
    # events and notifications: the caller's own
    Row("GET /v1/events", (U, 200, 200, 200, 200), stream=True, check=event_stream),
    Row(
        "GET /v1/notifications",
        (U, 200, 200, 200, 200),
        about_caller=True,
        check=own_notifications,
    ),
    Row(
        "POST /v1/notifications/{notification_id}/read",
        (U, 200, N, N, N),
        url="/v1/notifications/{w.notification_id}/read",
        check=notification_read,
    ),
    # admin: 404 for everybody else
    Row("GET /v1/admin/users", (U, N, N, N, 200), url="/v1/admin/users?q=owner", check=finds_owner),
    Row(
        "POST /v1/admin/users/{user_id}/suspend",
        (U, N, N, N, 200),
        url="/v1/admin/users/{w.owner.id}/suspend",
        body={"reason": "authorization matrix"},
        check=owner_suspended,
    ),
    Row(
        "POST /v1/admin/users/{user_id}/reinstate",
        (U, N, N, N, 200),
        url="/v1/admin/users/{w.owner.id}/reinstate",
        check=owner_reinstated,
    ),
    Row(
        "POST /v1/admin/users/{user_id}/credits",
        (U, N, N, N, 200),
        url="/v1/admin/users/{w.owner.id}/credits",
        body={"amount": ADMIN_GRANT, "reason": "authorization matrix"},
        check=owner_granted,
    ),
)


# -- running it --------------------------------------------------------------


def call(client: TestClient, row: Row, url: str, headers: dict[str, str]) -> Reply:
    """The request, answered in full; an event stream only up to its first
    chunk (it never ends), then closed."""
    try:
        with client.stream(row.method, url, headers=headers, json=row.body) as response:
            if row.stream and response.status_code == 200:
                content = next(response.iter_bytes())
            else:
                content = response.read()
            content_type = response.headers.get("content-type", "")
            return Reply(response.status_code, content_type, content.decode())
    finally:
        # Sign-up and login set session cookies: never let them authenticate
        # the next request (above all the anonymous caller's).
        client.cookies.clear()


def judge(
    platform: Platform, world: World, caller: Caller, row: Row, client: TestClient
) -> list[str]:
    """What is wrong with ``caller``'s answer to ``row``; nothing if it is right."""
    user = world.caller(caller, row)
    url = row.target(world)
    request = f"{row.method} {url}" + (f" {json.dumps(row.body)}" if row.body else "")
    before = snapshot(platform)
    response = call(client, row, url, {} if user is None else user.auth)
    after = snapshot(platform)
    expected = row.expected(caller)
    text = response.text
    said = f"{request} as {caller} -> {response.status_code} {text[:300]}"
    wanted = expected.status if isinstance(expected, Refusal) else expected
    if response.status_code != wanted:
        return [f"{said}\n    expected {expected}"]
    problems = []
    refused = isinstance(expected, Refusal)
    if refused or row.method in SAFE_METHODS:
        problems += [f"{said}\n    wrote {change}" for change in changes(before, after)]
    # Never the owner's identifiers in a refusal, nor in someone else's
    # answer about themselves, unless the request itself named them.
    acting_owner = caller == "owner" and row.owner_as == "owner"
    if refused or (row.about_caller and not acting_owner):
        problems += [
            f"{said}\n    shows the {what}"
            for what, value in world.owner_markers().items()
            if value in text and value not in request
        ]
    if isinstance(expected, Refusal):
        body = response.json() if response.content_type == PROBLEM_JSON else {}
        if response.content_type != PROBLEM_JSON or body.get("code") != expected.code:
            problems.append(f"{said}\n    expected {expected} as {PROBLEM_JSON}")
    elif row.check is not None:
        try:
            row.check(Answer(platform, world, user, response))
        except AssertionError as failure:
            reason = str(failure).splitlines()[0]
            problems.append(f"{said}\n    check {row.check.__name__} failed: {reason}")
    return problems


@pytest.mark.parametrize("caller", CALLERS)
def test_matrix(caller: Caller, platform: Platform, client: TestClient) -> None:
    world = build_world(platform)
    problems = [problem for row in ROWS for problem in judge(platform, world, caller, row, client)]
    assert not problems, f"{len(problems)} wrong answer(s) for {caller}:\n" + "\n".join(problems)


def test_every_route_has_a_row(platform: Platform, client: TestClient) -> None:
    world = build_world(platform)
    assert isinstance(client.app, FastAPI)
    problems = coverage_problems(client.app, ROWS, world)
    assert not problems, "the authorization matrix is incomplete:\n" + "\n".join(problems)


def test_coverage_notices_a_new_route(platform: Platform, client: TestClient) -> None:
    """The completeness check itself: a route without a row, a row without a
    route, and a row whose request lands elsewhere are all reported."""
    world = build_world(platform)
    app = client.app
    assert isinstance(app, FastAPI)
    app.add_api_route("/v1/matrix-probe", lambda: {}, methods=["GET"])
    stale = Row("GET /v1/gone", (U, 200, 200, 200, 200))
    misrouted = Row("GET /v1/usage", (U, 200, 200, 200, 200), url="/v1/usage.csv")
    problems = coverage_problems(app, (*ROWS, stale, misrouted), world)
    assert problems == [
        "no authorization row for GET /v1/matrix-probe: add one to "
        "tests/integration/test_authorization.py",
        "row for GET /v1/gone, which the app does not route (renamed or removed?)",
        "row GET /v1/usage: GET /v1/usage.csv is routed to GET /v1/usage.csv",
    ]

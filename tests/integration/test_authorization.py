"""The authorization matrix: every route of the app, called by five callers
(anonymous, the owner of the resource, an unrelated user, a member of the
owner's team, an admin), each getting exactly what ``ROWS`` says.

The rules the table spells out:

* anonymous gets 401 ``unauthenticated`` everywhere but the public routes
  (operations, docs, catalog reads, sign-up, login) and the file downloads,
  which answer 404 without credentials or a valid signed link, and the file
  to anybody holding one;
* another user's resources answer 404 ``not_found``, never 403;
* under a team, members may read; what only the owner may do is 403
  ``forbidden`` for a member and 404 for everyone outside the team;
* admin routes are 404 for everybody but admins;
* an admin acting on somebody's personal resources through the ordinary
  routes (API keys, notifications, team membership, generations, uploads)
  gets 404 like anyone; only generated outputs may an admin download;
* a suspended account is read-only (``SUSPENDED``, the owner suspended): it
  reads and downloads as the owner would, logs in and out and cancels its
  subscription; every other write is 403 ``account_suspended``; admin routes
  stay 404 for it and public routes answer it as anybody.

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

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from plasmaart.catalog import PlanSpec, plan_allows_model
from plasmaart.db.tables import (
    api_keys,
    generation_outputs,
    generations,
    notifications,
    sessions,
    team_members,
    uploads,
    webhook_deliveries,
    webhook_endpoints,
)
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.notify.email import Letter, compose
from plasmaart.platform import Platform
from plasmaart.web.problems import PROBLEM_JSON
from plasmaart.worker import Worker
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.matrix import (
    CALLERS,
    FORBIDDEN,
    NOT_FOUND,
    UNAUTHENTICATED,
    Caller,
    Expect,
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
# The world's finished generations: one Flux Schnell image each, at once
# (16:9, the sandbox's smallest image, to keep building the world quick).
WORLD_MODEL = "flux-schnell"
AT_ONCE = {"sandbox": {"delay_s": 0}}
WORLD_PARAMS = {"aspect_ratio": "16:9", **AT_ONCE}
# A tiny real PNG (3x2, one frame) for the upload rows.
UPLOAD_SIZE = (3, 2)
# What ``POST /v1/me/password`` sets (after the rows that log in with PASSWORD).
MATRIX_PASSWORD = "the matrix's new password"
INVALID_TOKEN = Refusal(400, "invalid_token")


@dataclass(frozen=True)
class World:
    """A Studio ``owner`` with a team (``member`` joined, ``invitee`` and
    pending@example.com invited), a spare API key and a notification; an
    unrelated ``other`` on Studio too, with a notification of their own;
    an ``admin``. Everybody holds some credits. Studio has 5 seats: the owner,
    the member and the two pending invitations leave one for the invitation
    row to take.

    The owner has also generated: a personal image and one for the team (both
    succeeded, one output each, run by a worker), a personal job still queued
    (to cancel), a team job still queued (which the member may read but not
    cancel), and an uploaded image. ``*_link`` are the signed download
    URLs the API hands out, which work without authentication."""

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
    generation_id: str  # the owner's, personal, succeeded
    output_id: str  # its output
    team_generation_id: str  # submitted by the owner under the team, succeeded
    team_output_id: str  # its output
    queued_generation_id: str  # the owner's, personal, still queued
    team_queued_generation_id: str  # submitted by the owner under the team, still queued
    upload_id: str  # the owner's
    output_link: str  # signed URL of ``output_id``
    upload_link: str  # signed URL of ``upload_id``
    session_id: str  # a session of the owner's (``GET /v1/sessions``)
    payment_id: str  # the owner's Studio subscription's payment (it has a receipt)
    mail_name: str  # a message of the mail folder (the admin's Mail page)
    webhook_endpoint_id: str = ""  # the owner's webhook endpoint
    webhook_delivery_id: str = ""  # a failed delivery to it

    def caller(self, caller: Caller, row: Row) -> TestUser | None:
        if caller == "anonymous":
            return None
        user: TestUser = getattr(self, row.owner_as if caller == "owner" else caller)
        return user

    @property
    def misdirected_link(self) -> str:
        """The personal output's signature on the team output's path: a link
        opens only the file it was signed for."""
        query = self.output_link.partition("?")[2]
        return f"/v1/outputs/{self.team_output_id}/content?{query}"

    def owner_markers(self) -> dict[str, str]:
        """What identifies the owner's personal data: nobody else may see it."""
        return {
            "owner id": self.owner.id,
            "owner e-mail": self.owner.email,
            "owner wallet": self.owner.wallet_id,
            "owner spare key id": self.spare_key_id,
            "owner notification id": self.notification_id,
            "owner generation id": self.generation_id,
            "owner output id": self.output_id,
            "owner queued generation id": self.queued_generation_id,
            "owner upload id": self.upload_id,
            "owner session id": self.session_id,
            "owner payment id": self.payment_id,
            "owner webhook endpoint id": self.webhook_endpoint_id,
            "owner webhook delivery id": self.webhook_delivery_id,
        }


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


def generate(platform: Platform, user: TestUser, team_id: str | None = None) -> Generation:
    with platform.db.write() as conn:
        return platform.generations.submit(
            conn,
            platform.accounts.get(conn, user.id),
            GenerationRequest(WORLD_MODEL, "a lighthouse", team_id=team_id, params=WORLD_PARAMS),
        )


def output_of(platform: Platform, generation_id: str) -> str:
    with platform.db.read() as conn:
        found: str = conn.execute(
            select(generation_outputs.c.id).where(
                generation_outputs.c.generation_id == generation_id
            )
        ).scalar_one()
    return found


def build_world(platform: Platform, client: TestClient) -> World:
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
        session = platform.credentials.open_session(conn, owner.id, user_agent="matrix")
        mine = notify.notify(conn, owner.id, "catalog.change", "Price change", "Veo 3 costs more.")
        notify.notify(conn, other.id, "catalog.change", "New model", "Try Wan Pro.")
    with platform.db.write() as conn:
        teams.accept_invitation(conn, joining.token, platform.accounts.get(conn, member.id))
    personal = generate(platform, owner)
    for_team = generate(platform, owner, team.id)
    worker = Worker(platform, concurrency=2)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() == 2
    queued = generate(platform, owner)
    team_queued = generate(platform, owner, team.id)
    output_id = output_of(platform, personal.id)
    shown = client.get(f"/v1/generations/{personal.id}", headers=owner.auth)
    uploaded = client.post(
        "/v1/uploads",
        headers=owner.auth,
        files={"file": ("red.png", png(UPLOAD_SIZE), "image/png")},
    )
    assert (shown.status_code, uploaded.status_code) == (200, 201), (shown.text, uploaded.text)
    assert shown.json()["status"] == "succeeded"
    with platform.db.read() as conn:
        [subscribed] = platform.billing.payments.history(conn, owner.id, limit=10)
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
        generation_id=personal.id,
        output_id=output_id,
        team_generation_id=for_team.id,
        team_output_id=output_of(platform, for_team.id),
        queued_generation_id=queued.id,
        team_queued_generation_id=team_queued.id,
        upload_id=uploaded.json()["id"],
        output_link=shown.json()["outputs"][0]["url"],
        upload_link=uploaded.json()["url"],
        session_id=session.id,
        payment_id=subscribed.id,
        mail_name=mail_in_folder(platform),
        **webhook_of(platform, owner),
    )


def webhook_of(platform: Platform, owner: TestUser) -> dict[str, str]:
    """An endpoint of the owner's with a failed delivery (written as the
    dispatcher writes it)."""
    endpoints = platform.webhook_endpoints
    url = endpoints.check_url("https://93.184.215.14/matrix")
    with platform.db.write() as conn:
        endpoint = endpoints.create(conn, owner.id, url, ["payment.failed"])
        event = platform.webhook_events.emit(
            conn, cause_key="matrix", user_id=owner.id, type="payment.failed", data={}
        )
        now = platform.clock.now()
        conn.execute(
            webhook_deliveries.insert().values(
                id="wd_matrix",
                event_id=event,
                endpoint_id=endpoint.id,
                url=endpoint.url,
                status="failed",
                attempts=1,
                next_attempt_at=now,
                last_status_code=500,
                created_at=now,
            )
        )
    return {"webhook_endpoint_id": endpoint.id, "webhook_delivery_id": "wd_matrix"}


def mail_in_folder(platform: Platform) -> str:
    """A message written to the mail folder, as mail is without SMTP."""
    letter = Letter("someone@example.com", "Matrix mail", "A message for the Mail page.")
    platform.mail_folder.send(
        compose(
            letter,
            sender="noreply@example.com",
            support_email=platform.settings.support_email,
            message_id="<matrix-mail@plasmaart.test>",
            now=platform.clock.now(),
        )
    )
    return platform.mail_folder.messages()[0].name


@dataclass(frozen=True)
class UploadRow(Row):
    """A multipart request: ``files`` (field -> (name, bytes, type)) instead
    of a JSON body."""

    files: tuple[tuple[str, tuple[str, bytes, str]], ...] = field(default=())


@dataclass(frozen=True)
class Reply:
    """What came back: for an event stream, only its first chunk. ``text`` is
    the content as UTF-8, undecodable bytes (a PNG's) replaced."""

    status_code: int
    content_type: str
    content: bytes
    location: str = ""  # where a redirect points (redirects are not followed)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def summary(self) -> str:
        """The start of the answer, for a failure message (a file only by its size)."""
        if self.content_type.startswith(("image/", "video/")):
            return f"<{len(self.content)} bytes of {self.content_type}>"
        return self.text[:300]

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
            return self.platform.catalogs.base.default_plan
        with self.platform.db.read() as conn:
            return self.platform.billing.plans.plan_of(conn, self.caller.wallet_id)

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
        spec = answer.platform.catalogs.base.model(model["id"])
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


def lists_own_sessions(answer: Answer) -> None:
    with answer.platform.db.read() as conn:
        rows = conn.execute(select(sessions.c.id).where(sessions.c.user_id == answer.me.id))
        mine = {row.id for row in rows}
    assert {s["id"] for s in answer.body["data"]} == mine


def session_revoked(answer: Answer) -> None:
    with answer.platform.db.read() as conn:
        left = conn.execute(select(sessions.c.id).where(sessions.c.id == answer.world.session_id))
        assert left.all() == []


def password_changed(answer: Answer) -> None:
    assert answer.body["user"]["id"] == answer.me.id
    with answer.platform.db.write() as conn:
        answer.platform.accounts.authenticate(conn, answer.me.email, MATRIX_PASSWORD)


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


def export_is_callers(answer: Answer) -> None:
    """The zip holds the caller's data, and nothing that names the owner
    (unless the caller is the owner)."""
    zipped = zipfile.ZipFile(io.BytesIO(answer.response.content))
    assert json.loads(zipped.read("profile.json"))["id"] == answer.me.id
    inside = b"".join(zipped.read(name) for name in zipped.namelist()).decode(errors="replace")
    if answer.me.id != answer.world.owner.id:
        shown = [what for what, value in answer.world.owner_markers().items() if value in inside]
        assert not shown, f"another user's export shows the {shown}"


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


def resent_pending(answer: Answer) -> None:
    assert answer.body["id"] == answer.world.invitation_id
    assert answer.body["status"] == "pending"
    assert answer.body["token"].startswith("pa_inv_")


def shows_invitation(answer: Answer) -> None:
    body = answer.body
    assert (body["team_id"], body["email"]) == (answer.world.team_id, answer.world.invitee.email)
    assert body["team_name"] == "Night Shift"


def invitation_declined(answer: Answer) -> None:
    shows_invitation(answer)
    assert answer.body["status"] == "declined"


def invitation_page(answer: Answer) -> None:
    assert answer.response.content_type.startswith("text/html")
    assert "Night Shift" in answer.response.text


def mail_html_part(answer: Answer) -> None:
    # Only admins get the message's HTML part; everyone else a bare 404.
    if answer.response.status_code == 404:
        assert answer.response.text == "Not found"
    else:
        assert "A message for the Mail page." in answer.response.text


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


def own_alerts(answer: Answer) -> None:
    assert answer.body["wallet_id"] == answer.me.wallet_id
    assert answer.body["available"] == answer.available()


def team_alerts(answer: Answer) -> None:
    assert (answer.body["wallet_id"], answer.body["team_id"]) == (
        answer.world.owner.wallet_id,
        answer.world.team_id,
    )


def own_ledger(answer: Answer) -> None:
    # API.md: the amounts of a wallet's entries add up to its available balance.
    assert answer.body["next_cursor"] is None
    assert sum(entry["amount"] for entry in answer.body["data"]) == answer.available()


def own_usage(answer: Answer) -> None:
    # Only the owner's wallet paid for anything: the personal and the team
    # image (a team spends its owner's wallet). Queued jobs are not usage.
    paid = (2, 2, 2) if answer.me.id == answer.world.owner.id else None
    rows = [(row["generations"], row["outputs"], row["credits"]) for row in answer.body["data"]]
    assert rows == ([] if paid is None else [paid])


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


def lists_abuse_flags(answer: Answer) -> None:
    assert answer.body == {"data": [], "next_cursor": None}


def owner_suspended(answer: Answer) -> None:
    assert (answer.body["id"], answer.body["status"]) == (answer.world.owner.id, "suspended")


def owner_reinstated(answer: Answer) -> None:
    assert (answer.body["id"], answer.body["status"]) == (answer.world.owner.id, "active")


def owner_granted(answer: Answer) -> None:
    assert (answer.body["user_id"], answer.body["amount"]) == (answer.world.owner.id, ADMIN_GRANT)


def visible_generations(answer: Answer) -> None:
    # The caller's own and their teams' generations, and nobody else's.
    world = answer.world
    expected = {
        world.owner.id: {
            world.generation_id,
            world.team_generation_id,
            world.queued_generation_id,
            world.team_queued_generation_id,
        },
        world.member.id: {world.team_generation_id, world.team_queued_generation_id},
    }.get(answer.me.id, set())
    assert {generation["id"] for generation in answer.body["data"]} == expected


def the_generation(answer: Answer) -> None:
    body = answer.body
    assert (body["id"], body["status"], body["credits_charged"], body["team_id"]) == (
        answer.world.generation_id,
        "succeeded",
        1,
        None,
    )
    assert [output["id"] for output in body["outputs"]] == [answer.world.output_id]


def the_team_generation(answer: Answer) -> None:
    body = answer.body
    assert (body["id"], body["status"], body["team_id"]) == (
        answer.world.team_generation_id,
        "succeeded",
        answer.world.team_id,
    )
    assert [output["id"] for output in body["outputs"]] == [answer.world.team_output_id]


def stored(answer: Answer, table: Any, row_id: str) -> bytes:
    with answer.platform.db.read() as conn:
        key = conn.execute(select(table.c.storage_key).where(table.c.id == row_id)).scalar_one()
    return answer.platform.storage.get(key)


def personal_output_file(answer: Answer) -> None:
    assert answer.response.content_type == "image/png"
    assert answer.response.content == stored(answer, generation_outputs, answer.world.output_id)


def team_output_file(answer: Answer) -> None:
    assert answer.response.content_type == "image/png"
    wanted = stored(answer, generation_outputs, answer.world.team_output_id)
    assert answer.response.content == wanted


def upload_file(answer: Answer) -> None:
    assert answer.response.content_type == "image/png"
    assert answer.response.content == stored(answer, uploads, answer.world.upload_id)


def quoted_without_hold(answer: Answer) -> None:
    # One Flux Schnell image: 1 credit, and the balance is still what the quote saw.
    available = answer.available()
    assert answer.body == {
        "credits": 1,
        "available": available,
        "available_after": available - 1,
        "allowed": True,
        "reason": None,
    }


def queued_for_caller(answer: Answer) -> None:
    body = answer.body
    assert (body["status"], body["credits_held"], body["balance_after"]) == (
        "queued",
        1,
        answer.available(),
    )
    with answer.platform.db.read() as conn:
        owner = conn.execute(
            select(generations.c.user_id).where(generations.c.id == body["id"])
        ).scalar_one()
    assert owner == answer.me.id


def uploaded_by_caller(answer: Answer) -> None:
    body = answer.body
    assert (body["content_type"], body["width"], body["height"]) == ("image/png", *UPLOAD_SIZE)
    with answer.platform.db.read() as conn:
        owner = conn.execute(
            select(uploads.c.user_id).where(uploads.c.id == body["id"])
        ).scalar_one()
    assert owner == answer.me.id


def queued_canceled(answer: Answer) -> None:
    body = answer.body
    assert (body["id"], body["status"], body["credits_charged"]) == (
        answer.world.queued_generation_id,
        "canceled",
        0,
    )


def team_queued_canceled(answer: Answer) -> None:
    body = answer.body
    assert (body["id"], body["status"], body["team_id"]) == (
        answer.world.team_queued_generation_id,
        "canceled",
        answer.world.team_id,
    )


def json_document(answer: Answer) -> None:
    assert answer.body["info"]["title"] == "PlasmaArt API"


def own_subscription(answer: Answer) -> None:
    with answer.platform.db.read() as conn:
        mine = answer.platform.billing.plans.subscription(conn, answer.me.wallet_id)
    expected = ("free", "none") if mine is None else (mine.plan, mine.status)
    assert (answer.body["plan"], answer.body["status"]) == expected


def previews_pro(answer: Answer) -> None:
    # Studio -> Pro: at the period end, nothing now; Free: subscribing, at once.
    expected = {"studio": ("downgrade", 0), "free": ("subscribe", 4900)}
    with answer.platform.db.read() as conn:
        plan = answer.platform.billing.plans.plan_of(conn, answer.me.wallet_id).id
    assert (answer.body["change"], answer.body["amount_cents"]) == expected[plan]


def subscribed_to_starter(answer: Answer) -> None:
    assert (answer.body["plan"], answer.body["status"]) == ("starter", "active")


def pro_now_or_at_period_end(answer: Answer) -> None:
    # Studio -> Pro is a downgrade (pending); Starter -> Pro an upgrade (at once).
    assert "pro" in (answer.body["plan"], answer.body["pending_plan"])


def canceling_at_period_end(answer: Answer) -> None:
    assert answer.body["cancel_at_period_end"] is True


def pack_bought(answer: Answer) -> None:
    assert (answer.body["credits"], answer.body["balance"]) == (1000, answer.available())


def own_payments(answer: Answer) -> None:
    with answer.platform.db.read() as conn:
        mine = answer.platform.billing.payments.history(conn, answer.me.id, limit=200)
    assert {payment["id"] for payment in answer.body["data"]} == {payment.id for payment in mine}


def owners_receipt(answer: Answer) -> None:
    assert answer.response.content_type.startswith("text/html")
    with answer.platform.db.read() as conn:
        receipt = answer.platform.billing.receipts.receipt(
            conn, answer.me.id, answer.world.payment_id
        )
    assert receipt.number in answer.response.text


def owner_card_set(answer: Answer) -> None:
    assert answer.body == {
        "user_id": answer.world.owner.id,
        "declines": False,
        "requires_action": False,
    }


def own_topup(answer: Answer) -> None:
    assert answer.body["wallet_id"] == answer.me.wallet_id


def team_topup(answer: Answer) -> None:
    # A team spends its owner's wallet: the owner's auto top-up.
    assert answer.body["wallet_id"] == answer.world.owner.wallet_id


def topup_saved(answer: Answer) -> None:
    assert (answer.body["enabled"], answer.body["threshold"]) == (True, 0)


def endpoints_of(answer: Answer) -> set[str]:
    with answer.platform.db.read() as conn:
        rows = conn.execute(
            select(webhook_endpoints.c.id).where(webhook_endpoints.c.user_id == answer.me.id)
        )
        return {row.id for row in rows}


def endpoint_is_callers(answer: Answer) -> None:
    assert answer.body["id"] in endpoints_of(answer)
    assert answer.body["secret"].startswith("whsec_")


def lists_own_endpoints(answer: Answer) -> None:
    assert {e["id"] for e in answer.body["data"]} == endpoints_of(answer)


def the_endpoint(answer: Answer) -> None:
    assert answer.body["id"] == answer.world.webhook_endpoint_id
    assert "secret" not in answer.body


def replayed(answer: Answer) -> None:
    assert (answer.body["status"], answer.body["attempts"]) == ("pending", 0)
    assert answer.body["id"] != answer.world.webhook_delivery_id


def a_secret(answer: Answer) -> None:
    assert answer.body["secret"].startswith("whsec_")


def dashboard_page(answer: Answer) -> None:
    # The dashboard's pages: anonymous visitors are sent to log in (and back);
    # anybody else gets the page, about themselves.
    if answer.caller is None:
        assert answer.response.location.startswith("/login?next=%2F"), answer.response.location
        return
    assert answer.response.content_type.startswith("text/html")
    assert answer.me.email in answer.response.text


def admin_page_or_none(answer: Answer) -> None:
    # Like the admin API: the page does not exist for anybody but admins.
    if answer.caller is None or answer.response.status_code == 200:
        dashboard_page(answer)
    else:
        assert answer.response.status_code == 404
        assert "Page not found" in answer.response.text


def sign_in_page(answer: Answer) -> None:
    # Signed-in callers go straight on (to /, as no next= was given).
    if answer.caller is None:
        assert 'data-auth="' in answer.response.text
    else:
        assert answer.response.location == "/"


def queue_and_credit_stats(answer: Answer) -> None:
    body = answer.body
    assert body["queue_depth"] == body["jobs_by_state"]["queued"] >= 1
    assert body["credits_consumed"] >= 2  # the world's two images
    assert body["credits_granted"] > 0


def audits_the_grant(answer: Answer) -> None:
    # The admin's grant of an earlier row, newest first.
    entry = answer.body["data"][0]
    assert (entry["actor"], entry["action"], entry["subject"]) == (
        answer.me.id,
        "credits.adjust",
        answer.world.owner.id,
    )


def clock_moved_a_day(answer: Answer) -> None:
    assert answer.body["offset_days"] == 1


def already_verified(answer: Answer) -> None:
    # The world's users are made verified, as ``users create`` makes them.
    assert answer.body == {"email": answer.me.email, "verification": "already_verified"}


def change_pending(answer: Answer) -> None:
    assert (answer.body["id"], answer.body["email"]) == (answer.me.id, answer.me.email)
    assert answer.body["pending_email"] == "moved@example.com"


def verify_page(answer: Answer) -> None:
    assert "data-verify-token" in answer.response.text


# -- the table ---------------------------------------------------------------

U, F, N = UNAUTHENTICATED, FORBIDDEN, NOT_FOUND
W = Refusal(403, "invitation_for_another_address")
WRONG_PASSWORD = Refusal(403, "wrong_password")
TEAM = "/v1/teams/{w.team_id}"
# An auto top-up that never runs (nothing is below 0 credits).
TOPUP = {"enabled": True, "threshold": 0, "pack": "pack-1000", "monthly_cap_cents": 1200}
ONE_IMAGE = {"model": WORLD_MODEL, "prompt": "a matrix", "params": AT_ONCE}

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
    Row("GET /v1/catalog/changes", (200, 200, 200, 200, 200)),
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
    # address verification: the link is public (a forged one is refused alike)
    Row(
        "POST /v1/auth/verify-email",
        (Refusal(400, "invalid_token"),) * 5,
        body={"token": "forged-link-token"},
    ),
    Row(
        "POST /v1/auth/verify-email/resend",
        (U, 202, 202, 202, 202),
        about_caller=True,
        check=already_verified,
    ),
    # the caller's own account and keys
    Row("GET /v1/me", (U, 200, 200, 200, 200), about_caller=True, check=me_with_teams),
    Row(
        "PATCH /v1/me/settings",
        (U, 200, 200, 200, 200),
        body={"remove_watermark": False},
        about_caller=True,
        check=is_caller,
    ),
    # two-factor: its state is readable with any credential; changing it
    # needs a login session, so API keys (every caller here) are forbidden
    Row("GET /v1/me/2fa", (U, 200, 200, 200, 200), about_caller=True),
    Row("POST /v1/me/2fa", (U, F, F, F, F)),
    Row("POST /v1/me/2fa/confirm", (U, F, F, F, F), body={"code": "123456"}),
    Row("POST /v1/me/2fa/recovery-codes", (U, F, F, F, F), body={"code": "123456"}),
    Row("DELETE /v1/me/2fa", (U, F, F, F, F), body={"code": "123456"}),
    # leaving: only ever the caller's own account (no user id in the path);
    # the deletion is judged with a wrong password, which deletes nothing
    Row(
        "GET /v1/me/export",
        (U, 200, 200, 200, 200),
        about_caller=True,
        check=export_is_callers,
        counted_in="auth_throttle",
    ),
    Row(
        "DELETE /v1/me",
        (U, WRONG_PASSWORD, WRONG_PASSWORD, WRONG_PASSWORD, WRONG_PASSWORD),
        body={"password": "not anybody's password"},
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
        "PATCH /v1/me",
        (U, 202, 202, 202, 202),
        body={"email": "moved@example.com", "password": PASSWORD},
        about_caller=True,
        check=change_pending,
    ),
    # a key's spend limits: the key's owner only (before its revocation)
    Row(
        "PATCH /v1/api-keys/{key_id}",
        (U, 200, N, N, N),
        url="/v1/api-keys/{w.spare_key_id}",
        body={"daily_credit_limit": 900_000, "monthly_credit_limit": None},
    ),
    Row(
        "DELETE /v1/api-keys/{key_id}",
        (U, 200, N, N, N),
        url="/v1/api-keys/{w.spare_key_id}",
        check=spare_key_revoked,
    ),
    # outbound webhooks: the caller's own endpoints; anybody else's are 404
    Row(
        "POST /v1/webhook-endpoints",
        (U, 201, 201, 201, 201),
        body={"url": "https://93.184.215.14/mine", "events": ["topup.failed"]},
        about_caller=True,
        check=endpoint_is_callers,
    ),
    Row(
        "GET /v1/webhook-endpoints",
        (U, 200, 200, 200, 200),
        about_caller=True,
        check=lists_own_endpoints,
    ),
    Row(
        "GET /v1/webhook-endpoints/{endpoint_id}",
        (U, 200, N, N, N),
        url="/v1/webhook-endpoints/{w.webhook_endpoint_id}",
        check=the_endpoint,
    ),
    Row(
        "PATCH /v1/webhook-endpoints/{endpoint_id}",
        (U, 200, N, N, N),
        url="/v1/webhook-endpoints/{w.webhook_endpoint_id}",
        body={"description": "matrix"},
        check=the_endpoint,
    ),
    Row(
        "POST /v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        (U, 200, N, N, N),
        url="/v1/webhook-endpoints/{w.webhook_endpoint_id}/rotate-secret",
        check=a_secret,
    ),
    Row(
        "GET /v1/webhook-endpoints/{endpoint_id}/deliveries",
        (U, 200, N, N, N),
        url="/v1/webhook-endpoints/{w.webhook_endpoint_id}/deliveries",
    ),
    Row(
        "POST /v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay",
        (U, 202, N, N, N),
        url="/v1/webhook-endpoints/{w.webhook_endpoint_id}/deliveries/{w.webhook_delivery_id}"
        "/replay",
        check=replayed,
    ),
    Row(
        "DELETE /v1/webhook-endpoints/{endpoint_id}",
        (U, 200, N, N, N),
        url="/v1/webhook-endpoints/{w.webhook_endpoint_id}",
        check=the_endpoint,
    ),
    # the account's own secret, made on first use (the one write of that read)
    Row(
        "GET /v1/webhook-secret",
        (U, 200, 200, 200, 200),
        about_caller=True,
        check=a_secret,
        counted_in="webhook_secrets",
    ),
    Row(
        "POST /v1/webhook-secret/rotate", (U, 200, 200, 200, 200), about_caller=True, check=a_secret
    ),
    # password reset: public, the same answer for any address; a forged link
    Row(
        "POST /v1/auth/password-reset",
        (202, 202, 202, 202, 202),
        body={"email": "owner@example.com"},
    ),
    Row(
        "POST /v1/auth/password-reset/confirm",
        (INVALID_TOKEN,) * 5,
        body={"token": "forged-matrix-token", "password": "another long password"},
    ),
    # the caller's own sessions and password (after the login row: it changes it)
    Row("GET /v1/sessions", (U, 200, 200, 200, 200), about_caller=True, check=lists_own_sessions),
    Row(
        "DELETE /v1/sessions/{session_id}",
        (U, 204, N, N, N),
        url="/v1/sessions/{w.session_id}",
        check=session_revoked,
    ),
    Row(
        "POST /v1/me/password",
        (U, 200, 200, 200, 200),
        body={"current_password": PASSWORD, "new_password": MATRIX_PASSWORD},
        about_caller=True,
        check=password_changed,
    ),
    # generations: the caller's own and their teams'; admins get nobody's
    # here (they have the admin routes), and a member not the owner's own
    Row(
        "GET /v1/generations",
        (U, 200, 200, 200, 200),
        about_caller=True,
        check=visible_generations,
    ),
    Row(
        "GET /v1/generations/{generation_id}",
        (U, 200, N, N, N),
        url="/v1/generations/{w.generation_id}",
        check=the_generation,
    ),
    Row(
        "GET /v1/generations/{generation_id}",
        (U, 200, N, 200, N),
        url="/v1/generations/{w.team_generation_id}",
        check=the_team_generation,
    ),
    # downloads: 404 without credentials or a valid signature; admins may
    # fetch any output; a signed link opens its one file for anybody
    Row(
        "GET /v1/outputs/{output_id}/content",
        (N, 200, N, N, 200),
        url="/v1/outputs/{w.output_id}/content",
        check=personal_output_file,
    ),
    Row(
        "GET /v1/outputs/{output_id}/content",
        (N, 200, N, 200, 200),
        url="/v1/outputs/{w.team_output_id}/content",
        check=team_output_file,
    ),
    Row(
        "GET /v1/outputs/{output_id}/content",
        (200, 200, 200, 200, 200),
        url="{w.output_link}",
        check=personal_output_file,
    ),
    Row(
        "GET /v1/outputs/{output_id}/content",
        (N, 200, N, 200, 200),
        url="{w.misdirected_link}",
        check=team_output_file,
    ),
    Row(
        "GET /v1/uploads/{upload_id}/content",
        (N, 200, N, N, N),
        url="/v1/uploads/{w.upload_id}/content",
        check=upload_file,
    ),
    Row(
        "GET /v1/uploads/{upload_id}/content",
        (200, 200, 200, 200, 200),
        url="{w.upload_link}",
        check=upload_file,
    ),
    # quoting holds nothing; submitting and uploading are the caller's own
    Row(
        "POST /v1/quotes",
        (U, 200, 200, 200, 200),
        body=ONE_IMAGE,
        about_caller=True,
        check=quoted_without_hold,
    ),
    Row(
        "POST /v1/generations",
        (U, 201, 201, 201, 201),
        body=ONE_IMAGE,
        about_caller=True,
        check=queued_for_caller,
    ),
    UploadRow(
        "POST /v1/uploads",
        (U, 201, 201, 201, 201),
        files=(("file", ("tiny.png", png(UPLOAD_SIZE), "image/png")),),
        about_caller=True,
        check=uploaded_by_caller,
    ),
    Row(
        "POST /v1/generations/{generation_id}/cancel",
        (U, 200, N, N, N),
        url="/v1/generations/{w.queued_generation_id}/cancel",
        check=queued_canceled,
    ),
    # a team's job: its submitter and the team's owner cancel it, a member
    # (who reads it) may not
    Row(
        "POST /v1/generations/{generation_id}/cancel",
        (U, 200, N, F, N),
        url="/v1/generations/{w.team_queued_generation_id}/cancel",
        check=team_queued_canceled,
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
        "POST /v1/teams/{team_id}/invitations/{invitation_id}/resend",
        (U, 200, N, F, N),
        url=TEAM + "/invitations/{w.invitation_id}/resend",
        check=resent_pending,
    ),
    Row(
        "DELETE /v1/teams/{team_id}/invitations/{invitation_id}",
        (U, 204, N, F, N),
        url=TEAM + "/invitations/{w.invitation_id}",
    ),
    # whoever holds the token sees the invitation (it was mailed to them)
    Row(
        "GET /v1/invitations/{token}",
        (200, 200, 200, 200, 200),
        url="/v1/invitations/{w.accept_token}",
        owner_as="invitee",
        check=shows_invitation,
    ),
    Row(
        "GET /invitations",
        (200, 200, 200, 200, 200),
        url="/invitations?token={w.accept_token}",
        owner_as="invitee",
        check=invitation_page,
    ),
    # the token is the invitee's: only their address may accept it; another
    # account is told the invitation is for another address
    Row(
        "POST /v1/invitations/{token}/accept",
        (U, 200, W, W, W),
        url="/v1/invitations/{w.accept_token}/accept",
        owner_as="invitee",
        check=invitee_joined,
    ),
    # declining needs only the token; once accepted, it is used up
    Row(
        "POST /v1/invitations/{token}/decline",
        (200, Refusal(400, "invalid_token"), 200, 200, 200),
        url="/v1/invitations/{w.accept_token}/decline",
        owner_as="invitee",
        check=invitation_declined,
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
    # balance alerts: the caller's own wallet, or (team_id) the team's, for its
    # owner only (before the member leaves)
    Row("GET /v1/balance-alerts", (U, 200, 200, 200, 200), about_caller=True, check=own_alerts),
    Row(
        "GET /v1/balance-alerts",
        (U, 200, N, F, N),
        url="/v1/balance-alerts?team_id={w.team_id}",
        check=team_alerts,
    ),
    Row(
        "PUT /v1/balance-alerts",
        (U, 200, 200, 200, 200),
        body={"alerts": [{"credits": 25}], "expiry_notice_days": 7},
        about_caller=True,
        check=own_alerts,
    ),
    Row(
        "PUT /v1/balance-alerts",
        (U, 200, N, F, N),
        url="/v1/balance-alerts?team_id={w.team_id}",
        body={"alerts": [{"percent": 10}]},
        check=team_alerts,
    ),
    # a team wallet's auto top-up is its owner's to see and set
    Row(
        "GET /v1/auto-topup",
        (U, 200, N, F, N),
        url="/v1/auto-topup?team_id={w.team_id}",
        check=team_topup,
    ),
    Row(
        "PUT /v1/auto-topup",
        (U, 200, N, F, N),
        url="/v1/auto-topup?team_id={w.team_id}",
        body=TOPUP,
        check=topup_saved,
    ),
    # the team's wallet's spend limit: its owner's (while the member is in)
    Row("GET /v1/spend-limit", (U, 200, N, F, N), url="/v1/spend-limit?team_id={w.team_id}"),
    Row(
        "PUT /v1/spend-limit",
        (U, 200, N, F, N),
        url="/v1/spend-limit?team_id={w.team_id}",
        body={"monthly_credits": 900_000},
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
    # spend limits: the caller's own wallet, or the team's for its owner only
    Row("GET /v1/spend-limit", (U, 200, 200, 200, 200), about_caller=True),
    Row(
        "PUT /v1/spend-limit",
        (U, 200, 200, 200, 200),
        body={"monthly_credits": 900_000},
        about_caller=True,
    ),
    Row("GET /v1/ledger", (U, 200, 200, 200, 200), about_caller=True, check=own_ledger),
    Row(
        "GET /v1/usage",
        (U, 200, 200, 200, 200),
        url="/v1/usage?group_by=day",
        about_caller=True,
        check=own_usage,
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
    # billing: the caller's own subscription, purchases and payments. The
    # owner and the other user are on Studio, the member and the admin on Free.
    Row("GET /v1/subscription", (U, 200, 200, 200, 200), about_caller=True, check=own_subscription),
    Row(
        "POST /v1/subscription/preview",
        (U, 200, 200, 200, 200),
        body={"plan": "pro"},
        about_caller=True,
        check=previews_pro,
    ),
    Row(
        "POST /v1/subscription",
        (U, Refusal(409, "already_subscribed"), Refusal(409, "already_subscribed"), 201, 201),
        body={"plan": "starter"},
        about_caller=True,
        check=subscribed_to_starter,
    ),
    Row(
        "PATCH /v1/subscription",
        (U, 200, 200, 200, 200),
        body={"plan": "pro"},
        about_caller=True,
        check=pro_now_or_at_period_end,
    ),
    # nobody is past due
    Row(
        "POST /v1/subscription/pay",
        (
            U,
            Refusal(409, "nothing_to_pay"),
            Refusal(409, "nothing_to_pay"),
            Refusal(409, "nothing_to_pay"),
            Refusal(409, "nothing_to_pay"),
        ),
    ),
    Row(
        "DELETE /v1/subscription",
        (U, 200, 200, 200, 200),
        about_caller=True,
        check=canceling_at_period_end,
    ),
    Row(
        "POST /v1/credit-purchases",
        (U, 201, 201, 201, 201),
        body={"pack": "pack-1000"},
        about_caller=True,
        check=pack_bought,
    ),
    Row("GET /v1/auto-topup", (U, 200, 200, 200, 200), about_caller=True, check=own_topup),
    Row(
        "PUT /v1/auto-topup",
        (U, 200, 200, 200, 200),
        body=TOPUP,
        about_caller=True,
        check=topup_saved,
    ),
    Row("GET /v1/payments", (U, 200, 200, 200, 200), about_caller=True, check=own_payments),
    # a receipt is the payer's alone: a team member sees the wallet, not its
    # owner's payments; nobody else (an admin included) learns it exists
    Row(
        "GET /v1/payments/{payment_id}/receipt",
        (U, 200, N, N, N),
        url="/v1/payments/{w.payment_id}/receipt",
        check=owners_receipt,
    ),
    # Stripe's: the portal is refused under sandbox billing, whoever asks;
    # the webhook is public (its signature authenticates it) and absent here.
    Row(
        "POST /v1/billing/portal",
        (
            U,
            Refusal(409, "billing_portal_unavailable"),
            Refusal(409, "billing_portal_unavailable"),
            Refusal(409, "billing_portal_unavailable"),
            Refusal(409, "billing_portal_unavailable"),
        ),
    ),
    Row("POST /v1/webhooks/stripe", (N, N, N, N, N), body={"id": "evt_matrix"}),
    # fal's webhook: public too (fal's signature authenticates it), and
    # absent unless the provider is fal.
    Row("POST /v1/webhooks/fal", (N, N, N, N, N), body={"request_id": "req_matrix"}),
    # the dashboard's pages: 303 to /login for anonymous visitors, the page
    # (about the caller) for everybody else; /admin is 404 but for admins;
    # the team page lists the team's members, so it is not about the caller
    *(
        Row(f"GET {path}", (303, 200, 200, 200, 200), about_caller=True, check=dashboard_page)
        for path in (
            "/",
            "/create",
            "/generations",
            "/usage",
            "/billing",
            "/settings",
            "/notifications",
            "/webhooks",
            "/credits",
        )
    ),
    Row("GET /team", (303, 200, 200, 200, 200), check=dashboard_page),
    Row("GET /admin", (303, 404, 404, 404, 200), check=admin_page_or_none),
    Row("GET /login", (200, 303, 303, 303, 303), check=sign_in_page),
    # password reset's pages: public (a link that does not work, without a token)
    Row("GET /forgot-password", (200, 200, 200, 200, 200)),
    Row("GET /reset-password", (200, 200, 200, 200, 200), url="/reset-password?token=forged"),
    Row("GET /signup", (200, 303, 303, 303, 303), check=sign_in_page),
    Row("GET /verify-email", (200, 200, 200, 200, 200), check=verify_page),
    Row("GET /goodbye", (200, 200, 200, 200, 200)),
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
    Row("GET /v1/admin/abuse", (U, N, N, N, 200), check=lists_abuse_flags),
    # announced catalog changes (the world's clock is at 2026-01-01)
    Row(
        "POST /v1/admin/catalog/changes",
        (U, N, N, N, 201),
        body={
            "target": "model",
            "id": "flux-dev",
            "field": "credits",
            "value": 6,
            "effective_at": "2026-03-01T00:00:00Z",
        },
    ),
    Row("GET /v1/admin/catalog/changes", (U, N, N, N, 200)),
    # an unknown change: 404 for the admin too, for the others as for any admin route
    Row(
        "DELETE /v1/admin/catalog/changes/{change_id}",
        (U, N, N, N, N),
        url="/v1/admin/catalog/changes/chg_unknown",
    ),
    Row("GET /v1/admin/stats", (U, N, N, N, 200), check=queue_and_credit_stats),
    Row(
        "GET /v1/admin/audit",
        (U, N, N, N, 200),
        url="/v1/admin/audit?action=credits.adjust",
        check=audits_the_grant,
    ),
    Row("GET /admin/audit", (303, 404, 404, 404, 200), check=admin_page_or_none),
    Row("GET /admin/mail", (303, 404, 404, 404, 200), check=admin_page_or_none),
    Row(
        "GET /admin/mail/{name}",
        (303, 404, 404, 404, 200),
        url="/admin/mail/{w.mail_name}",
        check=admin_page_or_none,
    ),
    Row(
        "GET /admin/mail/{name}/html",
        (404, 404, 404, 404, 200),
        url="/admin/mail/{w.mail_name}/html",
        check=mail_html_part,
    ),
    # the sandbox's controls; the clock moves last, as it moves time for every row
    Row(
        "POST /v1/admin/users/{user_id}/billing/sandbox-card",
        (U, N, N, N, 200),
        url="/v1/admin/users/{w.owner.id}/billing/sandbox-card",
        body={"declines": False},
        check=owner_card_set,
    ),
    Row(
        "POST /v1/admin/clock/advance",
        (U, N, N, N, 200),
        body={"days": 1},
        check=clock_moved_a_day,
    ),
)


# -- a suspended caller -------------------------------------------------------

S = Refusal(403, "account_suspended")


def label(row: Row) -> str:
    """What tells a row from the others of its route: the URL it calls."""
    return row.route if row.url is None else f"{row.route} {row.url}"


# What the owner gets once suspended (and the invitee, for the invitation's
# row), row by row (keyed by ``label``): every row of ``ROWS`` has exactly one
# entry (``test_every_row_has_a_suspended_expectation``).
SUSPENDED: dict[str, Expect] = {
    "GET /healthz": 200,
    "GET /readyz": 200,
    "GET /metrics": 200,
    "GET /openapi.json": 200,
    "GET /docs": 200,
    "GET /docs/oauth2-redirect": 200,
    "GET /redoc": 200,
    "GET /v1/models": 200,
    f"GET /v1/models/{{model_id}} /v1/models/{PREMIUM_MODEL}": 200,
    "GET /v1/plans": 200,
    "GET /v1/catalog/changes": 200,
    "GET /v1/credit-packs": 200,
    # public: they answer about the body; logging in now works when suspended
    "POST /v1/auth/signup": 201,
    "POST /v1/auth/login": 200,
    "POST /v1/auth/logout": 204,
    "POST /v1/auth/verify-email": Refusal(400, "invalid_token"),
    "POST /v1/auth/verify-email/resend": S,
    "PATCH /v1/me": S,
    "GET /v1/me": 200,
    "PATCH /v1/me/settings": S,
    "GET /v1/me/2fa": 200,
    "POST /v1/me/2fa": S,
    "POST /v1/me/2fa/confirm": S,
    "POST /v1/me/2fa/recovery-codes": S,
    "DELETE /v1/me/2fa": S,
    "GET /v1/me/export": 200,
    "GET /goodbye": 200,
    "DELETE /v1/me": S,
    "POST /v1/api-keys": S,
    "GET /v1/api-keys": 200,
    "PATCH /v1/api-keys/{key_id} /v1/api-keys/{w.spare_key_id}": S,
    "DELETE /v1/api-keys/{key_id} /v1/api-keys/{w.spare_key_id}": S,
    # webhooks: read, never changed
    "POST /v1/webhook-endpoints": S,
    "GET /v1/webhook-endpoints": 200,
    "GET /v1/webhook-endpoints/{endpoint_id} /v1/webhook-endpoints/{w.webhook_endpoint_id}": 200,
    "PATCH /v1/webhook-endpoints/{endpoint_id} /v1/webhook-endpoints/{w.webhook_endpoint_id}": S,
    "POST /v1/webhook-endpoints/{endpoint_id}/rotate-secret "
    "/v1/webhook-endpoints/{w.webhook_endpoint_id}/rotate-secret": S,
    "GET /v1/webhook-endpoints/{endpoint_id}/deliveries "
    "/v1/webhook-endpoints/{w.webhook_endpoint_id}/deliveries": 200,
    "POST /v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay "
    "/v1/webhook-endpoints/{w.webhook_endpoint_id}/deliveries/{w.webhook_delivery_id}/replay": S,
    "DELETE /v1/webhook-endpoints/{endpoint_id} /v1/webhook-endpoints/{w.webhook_endpoint_id}": S,
    "GET /v1/webhook-secret": 200,
    "POST /v1/webhook-secret/rotate": S,
    "GET /webhooks": 200,
    "GET /credits": 200,
    "POST /v1/auth/password-reset": 202,
    "POST /v1/auth/password-reset/confirm": INVALID_TOKEN,
    "GET /v1/sessions": 200,
    # the suspension ended every session of the account: none left to revoke
    # (revoking one stays allowed, as a new password is: securing the account)
    "DELETE /v1/sessions/{session_id} /v1/sessions/{w.session_id}": N,
    "POST /v1/me/password": 200,
    "GET /v1/generations": 200,
    "GET /v1/generations/{generation_id} /v1/generations/{w.generation_id}": 200,
    "GET /v1/generations/{generation_id} /v1/generations/{w.team_generation_id}": 200,
    # downloads: what was paid for stays the owner's to download
    "GET /v1/outputs/{output_id}/content /v1/outputs/{w.output_id}/content": 200,
    "GET /v1/outputs/{output_id}/content /v1/outputs/{w.team_output_id}/content": 200,
    "GET /v1/outputs/{output_id}/content {w.output_link}": 200,
    "GET /v1/outputs/{output_id}/content {w.misdirected_link}": 200,
    "GET /v1/uploads/{upload_id}/content /v1/uploads/{w.upload_id}/content": 200,
    "GET /v1/uploads/{upload_id}/content {w.upload_link}": 200,
    "POST /v1/quotes": S,
    "POST /v1/generations": S,
    "POST /v1/uploads": S,
    "POST /v1/generations/{generation_id}/cancel /v1/generations/{w.queued_generation_id}/cancel": (
        S
    ),
    "POST /v1/generations/{generation_id}/cancel "
    "/v1/generations/{w.team_queued_generation_id}/cancel": S,
    "POST /v1/teams": S,
    "GET /v1/teams/{team_id} " + TEAM: 200,
    "POST /v1/teams/{team_id}/invitations " + TEAM + "/invitations": S,
    "GET /v1/teams/{team_id}/invitations " + TEAM + "/invitations": 200,
    "DELETE /v1/teams/{team_id}/invitations/{invitation_id} "
    + TEAM
    + "/invitations/{w.invitation_id}": S,
    "POST /v1/teams/{team_id}/invitations/{invitation_id}/resend "
    + TEAM
    + "/invitations/{w.invitation_id}/resend": S,
    # the token opens the invitation and declines it, without an account
    "GET /v1/invitations/{token} /v1/invitations/{w.accept_token}": 200,
    "GET /invitations /invitations?token={w.accept_token}": 200,
    "POST /v1/invitations/{token}/accept /v1/invitations/{w.accept_token}/accept": S,
    "POST /v1/invitations/{token}/decline /v1/invitations/{w.accept_token}/decline": 200,
    "GET /v1/teams/{team_id}/members " + TEAM + "/members": 200,
    "PATCH /v1/teams/{team_id}/members/{user_id} " + TEAM + "/members/{w.member.id}": S,
    "DELETE /v1/teams/{team_id}/members/{user_id} " + TEAM + "/members/{w.owner.id}": S,
    "DELETE /v1/teams/{team_id}/members/{user_id} " + TEAM + "/members/{w.member.id}": S,
    "GET /v1/balance": 200,
    "GET /v1/spend-limit": 200,
    "PUT /v1/spend-limit": S,
    "GET /v1/spend-limit /v1/spend-limit?team_id={w.team_id}": 200,
    "PUT /v1/spend-limit /v1/spend-limit?team_id={w.team_id}": S,
    "GET /v1/ledger": 200,
    "GET /v1/usage /v1/usage?group_by=day": 200,
    "GET /v1/usage.csv": 200,
    "GET /v1/balance-alerts": 200,
    "GET /v1/balance-alerts /v1/balance-alerts?team_id={w.team_id}": 200,
    "PUT /v1/balance-alerts": S,
    "PUT /v1/balance-alerts /v1/balance-alerts?team_id={w.team_id}": S,
    "GET /v1/events": 200,
    "GET /v1/notifications": 200,
    "POST /v1/notifications/{notification_id}/read /v1/notifications/{w.notification_id}/read": S,
    "GET /v1/subscription": 200,
    "POST /v1/subscription": S,
    "PATCH /v1/subscription": S,
    "POST /v1/subscription/pay": S,
    # a suspended account changes no plan: nothing to preview
    "POST /v1/subscription/preview": S,
    # the one write of the account's billing it keeps: ending its subscription
    "DELETE /v1/subscription": 200,
    "POST /v1/credit-purchases": S,
    "GET /v1/auto-topup": 200,
    "GET /v1/auto-topup /v1/auto-topup?team_id={w.team_id}": 200,
    "PUT /v1/auto-topup": S,
    "PUT /v1/auto-topup /v1/auto-topup?team_id={w.team_id}": S,
    "GET /v1/payments": 200,
    "GET /v1/payments/{payment_id}/receipt /v1/payments/{w.payment_id}/receipt": 200,
    # the portal could change the plan or withdraw the stop: refused first
    "POST /v1/billing/portal": S,
    "POST /v1/webhooks/stripe": N,
    "POST /v1/webhooks/fal": N,
    # the dashboard: every page, read-only (its banner says why)
    "GET /": 200,
    "GET /create": 200,
    "GET /generations": 200,
    "GET /usage": 200,
    "GET /billing": 200,
    "GET /settings": 200,
    "GET /notifications": 200,
    "GET /team": 200,
    "GET /admin": 404,
    "GET /login": 303,
    "GET /forgot-password": 200,
    "GET /reset-password /reset-password?token=forged": 200,
    "GET /signup": 303,
    "GET /verify-email": 200,
    # admin routes do not exist for it, suspended or not
    "GET /v1/admin/users /v1/admin/users?q=owner": N,
    "POST /v1/admin/users/{user_id}/suspend /v1/admin/users/{w.owner.id}/suspend": N,
    "POST /v1/admin/users/{user_id}/reinstate /v1/admin/users/{w.owner.id}/reinstate": N,
    "POST /v1/admin/users/{user_id}/credits /v1/admin/users/{w.owner.id}/credits": N,
    "GET /v1/admin/abuse": N,
    "POST /v1/admin/catalog/changes": N,
    "GET /v1/admin/catalog/changes": N,
    "DELETE /v1/admin/catalog/changes/{change_id} /v1/admin/catalog/changes/chg_unknown": N,
    "GET /v1/admin/stats": N,
    "GET /v1/admin/audit /v1/admin/audit?action=credits.adjust": N,
    "GET /admin/audit": 404,
    "GET /admin/mail": 404,
    "GET /admin/mail/{name} /admin/mail/{w.mail_name}": 404,
    "GET /admin/mail/{name}/html /admin/mail/{w.mail_name}/html": 404,
    "POST /v1/admin/users/{user_id}/billing/sandbox-card "
    "/v1/admin/users/{w.owner.id}/billing/sandbox-card": N,
    "POST /v1/admin/clock/advance": N,
}


def as_suspended(row: Row) -> Row:
    """``row`` with the owner's column holding what the suspended owner gets."""
    owner = CALLERS.index("owner")
    expect = list(row.expect)
    expect[owner] = SUSPENDED[label(row)]
    return replace(row, expect=(expect[0], expect[1], expect[2], expect[3], expect[4]))


# -- running it --------------------------------------------------------------


def call(client: TestClient, row: Row, url: str, headers: dict[str, str]) -> Reply:
    """The request, answered in full; an event stream only up to its first
    chunk (it never ends), then closed."""
    files = dict(row.files) if isinstance(row, UploadRow) else None
    try:
        with client.stream(
            row.method, url, headers=headers, json=row.body, files=files, follow_redirects=False
        ) as response:
            if row.stream and response.status_code == 200:
                content = next(response.iter_bytes())
            else:
                content = response.read()
            content_type = response.headers.get("content-type", "")
            location = response.headers.get("location", "")
            return Reply(response.status_code, content_type, content, location)
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
    said = f"{request} as {caller} -> {response.status_code} {response.summary}"
    wanted = expected.status if isinstance(expected, Refusal) else expected
    if response.status_code != wanted:
        return [f"{said}\n    expected {expected}"]
    problems = []
    refused = isinstance(expected, Refusal)
    if refused or row.method in SAFE_METHODS:
        problems += [
            f"{said}\n    wrote {change}"
            for change in changes(before, after)
            if refused or not change.startswith(f"{row.counted_in}: ")
        ]
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
    world = build_world(platform, client)
    problems = [problem for row in ROWS for problem in judge(platform, world, caller, row, client)]
    assert not problems, f"{len(problems)} wrong answer(s) for {caller}:\n" + "\n".join(problems)


def test_matrix_suspended(platform: Platform, client: TestClient) -> None:
    """The table as the owner once suspended (the invitee too, for the
    invitation's row): a suspended account is read-only."""
    world = build_world(platform, client)
    for user in (world.owner, world.invitee):
        suspended = client.post(
            f"/v1/admin/users/{user.id}/suspend",
            json={"reason": "authorization matrix"},
            headers=world.admin.auth,
        )
        assert suspended.status_code == 200, suspended.text
    problems = [
        problem
        for row in ROWS
        for problem in judge(platform, world, "owner", as_suspended(row), client)
    ]
    assert not problems, f"{len(problems)} wrong answer(s) for suspended:\n" + "\n".join(problems)


def test_every_row_has_a_suspended_expectation() -> None:
    labels = [label(row) for row in ROWS]
    assert len(labels) == len(set(labels)), "two rows call the same URL: tell them apart"
    assert sorted(set(labels) - set(SUSPENDED)) == [], "rows without a SUSPENDED expectation"
    assert sorted(set(SUSPENDED) - set(labels)) == [], "SUSPENDED names rows that do not exist"


def test_every_route_has_a_row(platform: Platform, client: TestClient) -> None:
    world = build_world(platform, client)
    assert isinstance(client.app, FastAPI)
    problems = coverage_problems(client.app, ROWS, world)
    assert not problems, "the authorization matrix is incomplete:\n" + "\n".join(problems)


def test_coverage_notices_a_new_route(platform: Platform, client: TestClient) -> None:
    """The completeness check itself: a route without a row, a row without a
    route, and a row whose request lands elsewhere are all reported."""
    world = build_world(platform, client)
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

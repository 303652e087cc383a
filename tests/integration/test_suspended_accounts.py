"""What suspension means for a user (DESIGN.md §5): a suspended account is
read-only. It logs in, sees why it is suspended and how to reach support,
reads its balance, ledger, payments and generations, downloads its outputs,
cancels its subscription and logs out; every other write is refused with
``account_suspended`` and writes nothing. No renewal is charged while it is
suspended: the subscription ends at its period end unless the account is
reinstated first, and a cancellation of the customer's own survives the
reinstatement. On the sandbox backend here; Stripe's side is in
``test_billing_stripe.py``."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from plasmaart.billing.repository import Subscription
from plasmaart.billing.tasks import run_billing_clock
from plasmaart.clock import ManualClock
from plasmaart.db.tables import generation_outputs, notification_outbox
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.web.auth import SUSPENDED_MAY_WRITE
from plasmaart.worker import Worker
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.matrix import app_routes, changes, snapshot

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
PROBLEM = "application/problem+json"
REASON = "prompt flood"
SUPPORT = "neonstudioscontact@gmail.com"
ONE_IMAGE = {
    "model": "flux-schnell",
    "prompt": "a lighthouse",
    "params": {"aspect_ratio": "16:9", "sandbox": {"delay_s": 0}},
}


# -- helpers -------------------------------------------------------------------


def suspend(client: TestClient, admin: TestUser, user: TestUser) -> None:
    answer = client.post(
        f"/v1/admin/users/{user.id}/suspend", json={"reason": REASON}, headers=admin.auth
    )
    assert (answer.status_code, answer.json()["status"]) == (200, "suspended"), answer.text


def reinstate(client: TestClient, admin: TestUser, user: TestUser) -> None:
    answer = client.post(f"/v1/admin/users/{user.id}/reinstate", headers=admin.auth)
    assert (answer.status_code, answer.json()["status"]) == (200, "active"), answer.text


def log_in(client: TestClient, user: TestUser) -> dict[str, str]:
    """Log in with the password; the headers a session's writes need."""
    answer = client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"]["status"] == "suspended"
    return {"X-CSRF-Token": client.cookies["pa_csrf"]}


def generate_one(platform: Platform, user: TestUser, team_id: str | None = None) -> str:
    """A finished generation of ``user``'s (one image, run by a worker)."""
    params = ONE_IMAGE["params"]
    assert isinstance(params, dict)
    with platform.db.write() as conn:
        generation = platform.generations.submit(
            conn,
            platform.accounts.get(conn, user.id),
            GenerationRequest("flux-schnell", "a lighthouse", team_id=team_id, params=params),
        )
    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() == 1
    return generation.id


def subscription(platform: Platform, user: TestUser) -> Subscription:
    with platform.db.read() as conn:
        found = platform.billing.plans.subscription(conn, user.wallet_id)
    assert found is not None
    return found


def plan_now(platform: Platform, user: TestUser) -> str:
    with platform.db.read() as conn:
        return platform.billing.plans.plan_of(conn, user.wallet_id).id


def payments(platform: Platform, user: TestUser) -> list[tuple[str, str, int]]:
    """(kind, status, amount) of the user's payments, oldest first."""
    with platform.db.read() as conn:
        found = platform.billing.payments.history(conn, user.id, limit=200)
    return [(p.kind, p.status, p.amount_cents) for p in reversed(found)]


def renewal_notices(platform: Platform, user: TestUser) -> int:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(notification_outbox.c.id).where(
                notification_outbox.c.user_id == user.id,
                notification_outbox.c.kind == "billing.renewed",
            )
        ).all()
    return len(rows)


def run_clock(platform: Platform) -> dict[str, int]:
    report = run_billing_clock(platform.db, platform.billing)
    return {step: count for step, count in report.steps.items() if count}


def books_balance(platform: Platform) -> None:
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


# -- logging in and reading ----------------------------------------------------


def test_a_suspended_user_logs_in_and_reads_everything_of_theirs(
    platform: Platform, client: TestClient
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="starter", credits=50)
    generation_id = generate_one(platform, eve)
    suspend(client, admin, eve)

    # The API key still reads; the session needs a fresh login (suspending
    # ends the sessions), which now succeeds.
    session = log_in(client, eve)
    me = client.get("/v1/me").json()
    assert (me["status"], me["status_reason"], me["support_email"]) == (
        "suspended",
        REASON,
        SUPPORT,
    )
    with platform.db.read() as conn:
        balance = platform.ledger.balance(conn, eve.wallet_id)
        paid = [p.id for p in platform.billing.payments.history(conn, eve.id, limit=200)]
        output_id = conn.execute(
            select(generation_outputs.c.id).where(
                generation_outputs.c.generation_id == generation_id
            )
        ).scalar_one()
    assert balance.available == 2000 + 50 - 1
    for via in ("session", "api_key"):
        headers = {} if via == "session" else eve.auth
        cookies = dict(client.cookies) if via == "session" else {}
        client.cookies.clear()
        client.cookies.update(cookies)
        assert client.get("/v1/balance", headers=headers).json()["available"] == balance.available
        ledger = client.get("/v1/ledger", headers=headers).json()["data"]
        assert sum(entry["amount"] for entry in ledger) == balance.available
        listed = client.get("/v1/payments", headers=headers).json()["data"]
        assert [payment["id"] for payment in listed] == paid
        shown = client.get("/v1/generations", headers=headers).json()["data"]
        assert [g["id"] for g in shown] == [generation_id]
        one = client.get(f"/v1/generations/{generation_id}", headers=headers).json()
        assert (one["status"], [o["id"] for o in one["outputs"]]) == ("succeeded", [output_id])
        # The download: by its own route, and by the signed link the API hands out.
        stored = client.get(f"/v1/outputs/{output_id}/content", headers=headers)
        signed = client.get(one["outputs"][0]["url"], headers=headers)
        for download in (stored, signed):
            assert (download.status_code, download.headers["content-type"]) == (200, "image/png")
        assert stored.content == signed.content
        csv = client.get("/v1/usage.csv", headers=headers)
        assert csv.status_code == 200
        assert generation_id in csv.text
        state = client.get("/v1/subscription", headers=headers).json()
        assert (state["plan"], state["status"], state["cancel_reason"]) == (
            "starter",
            "active",
            "account_suspended",
        )
        models = client.get("/v1/models", headers=headers)
        assert models.status_code == 200
    assert session["X-CSRF-Token"]


# -- writing -----------------------------------------------------------------------


WRITES: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/v1/generations", ONE_IMAGE),
    ("POST", "/v1/quotes", ONE_IMAGE),
    ("POST", "/v1/credit-purchases", {"pack": "pack-1000"}),
    ("POST", "/v1/subscription", {"plan": "pro"}),
    ("PATCH", "/v1/subscription", {"plan": "pro"}),
    ("PATCH", "/v1/subscription", {"plan": "studio"}),
    ("POST", "/v1/subscription/pay", None),
    ("POST", "/v1/billing/portal", None),
    ("POST", "/v1/api-keys", {"name": "another"}),
    ("PATCH", "/v1/me/settings", {"remove_watermark": True}),
    ("POST", "/v1/teams", {"name": "Day Shift"}),
    ("POST", "/v1/teams/{team}/invitations", {"email": "fresh@example.com"}),
    ("DELETE", "/v1/api-keys/{key}", None),
    ("POST", "/v1/generations/{queued}/cancel", None),
)


@pytest.mark.parametrize("via", ["api_key", "session"])
def test_a_suspended_account_cannot_write_and_a_refusal_writes_nothing(
    platform: Platform, client: TestClient, via: str
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="studio", credits=50)
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, eve.id), "Night")
        spare = platform.credentials.create_api_key(conn, eve.id, "spare")
    with platform.db.write() as conn:
        queued = platform.generations.submit(
            conn,
            platform.accounts.get(conn, eve.id),
            GenerationRequest("flux-schnell", "a queue", params={"aspect_ratio": "16:9"}),
        )
    suspend(client, admin, eve)
    headers = log_in(client, eve) if via == "session" else eve.auth
    if via == "api_key":
        client.cookies.clear()
    names = {"team": team.id, "key": spare.key.id, "queued": queued.id}
    for method, path, body in WRITES:
        url = path.format(**names)
        before = snapshot(platform)
        answer = client.request(method, url, json=body, headers=headers)
        after = snapshot(platform)
        said = f"{method} {url} as {via}: {answer.status_code} {answer.text[:200]}"
        assert (answer.status_code, answer.headers["content-type"]) == (403, PROBLEM), said
        problem = answer.json()
        assert (problem["code"], problem["support_email"]) == ("account_suspended", SUPPORT), said
        assert changes(before, after) == [], said
    upload = client.post(
        "/v1/uploads", headers=headers, files={"file": ("red.png", png(), "image/png")}
    )
    assert (upload.status_code, upload.json()["code"]) == (403, "account_suspended")
    # The suspension itself canceled the queued job and released its credits.
    assert client.get(f"/v1/generations/{queued.id}", headers=headers).json()["status"] == (
        "canceled"
    )
    books_balance(platform)


def test_a_suspended_member_cannot_spend_their_teams_credits(
    platform: Platform, client: TestClient
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    owner = make_user(platform, "owner@example.com", plan="studio")
    eve = make_user(platform, "eve@example.com")
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, owner.id), "Night")
        invitation = platform.teams.invite(conn, team.id, owner.id, eve.email)
    with platform.db.write() as conn:
        platform.teams.accept_invitation(
            conn, invitation.token, platform.accounts.get(conn, eve.id)
        )
    suspend(client, admin, eve)
    before = snapshot(platform)
    answer = client.post(
        "/v1/generations", json={**ONE_IMAGE, "team_id": team.id}, headers=eve.auth
    )
    assert (answer.status_code, answer.json()["code"]) == (403, "account_suspended")
    assert changes(before, snapshot(platform)) == []
    # Reading the team is still theirs.
    assert client.get(f"/v1/teams/{team.id}", headers=eve.auth).status_code == 200


def test_a_suspended_user_cancels_their_subscription_and_logs_out(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="starter")
    clock.set(JAN_1 + timedelta(days=9))
    suspend(client, admin, eve)
    session = log_in(client, eve)
    stopping = client.get("/v1/subscription").json()
    assert (stopping["cancel_at_period_end"], stopping["cancel_reason"]) == (
        True,
        "account_suspended",
    )
    canceled = client.delete("/v1/subscription", headers=session)
    assert canceled.status_code == 200, canceled.text
    assert (canceled.json()["cancel_at_period_end"], canceled.json()["cancel_reason"]) == (
        True,
        "requested",
    )
    # Reinstating does not undo the customer's own cancellation.
    reinstate(client, admin, eve)
    kept = client.get("/v1/subscription", headers=eve.auth).json()
    assert (kept["cancel_at_period_end"], kept["cancel_reason"]) == (True, "requested")
    clock.set(FEB_1 + timedelta(hours=1))
    assert run_clock(platform) == {"canceled": 1}
    assert payments(platform, eve) == [("subscription", "succeeded", 1900)]
    assert plan_now(platform, eve) == "free"
    # Logging out works while suspended too.
    suspend(client, admin, eve)
    session = log_in(client, eve)
    assert client.post("/v1/auth/logout", headers=session).status_code == 204
    assert client.get("/v1/me").status_code == 401


# -- renewal while suspended ---------------------------------------------------------


def test_no_renewal_is_charged_while_suspended(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="starter")
    clock.set(JAN_1 + timedelta(days=9))
    suspend(client, admin, eve)
    stopped = subscription(platform, eve)
    assert (stopped.status, stopped.stops_for_suspension, stopped.cancel_at_period_end) == (
        "active",
        True,
        False,
    )
    assert plan_now(platform, eve) == "starter"  # the paid period is theirs
    # Past the period end, before the clock ran: Free already.
    clock.set(FEB_1 + timedelta(hours=1))
    assert plan_now(platform, eve) == "free"
    moved = client.post("/v1/admin/clock/advance", json={"days": 1}, headers=admin.auth)
    assert (moved.json()["renewed"], moved.json()["canceled"]) == (0, 1)
    ended = subscription(platform, eve)
    assert (ended.status, ended.stops_for_suspension, ended.cancel_at_period_end) == (
        "canceled",
        False,
        False,
    )
    assert payments(platform, eve) == [("subscription", "succeeded", 1900)]
    assert renewal_notices(platform, eve) == 0
    # The month's credits expired with the period; nothing new was granted.
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, eve.wallet_id).available == 0
    # Reinstated later: the subscription stays ended, nothing is charged.
    reinstate(client, admin, eve)
    clock.set(MAR_1 + timedelta(days=2))
    assert run_clock(platform) == {}
    assert payments(platform, eve) == [("subscription", "succeeded", 1900)]
    assert plan_now(platform, eve) == "free"
    books_balance(platform)


def test_reinstating_before_the_period_end_renews_normally(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="pro")
    # A downgrade scheduled before the suspension is kept through it.
    assert client.patch("/v1/subscription", json={"plan": "starter"}, headers=eve.auth).json()[
        "pending_plan"
    ] == ("starter")
    clock.set(JAN_1 + timedelta(days=9))
    suspend(client, admin, eve)
    clock.set(JAN_1 + timedelta(days=20))
    reinstate(client, admin, eve)
    back = client.get("/v1/subscription", headers=eve.auth).json()
    assert (back["cancel_at_period_end"], back["cancel_reason"], back["pending_plan"]) == (
        False,
        None,
        "starter",
    )
    clock.set(FEB_1 + timedelta(hours=1))
    assert run_clock(platform) == {"downgraded": 1}
    renewed = subscription(platform, eve)
    assert (renewed.status, renewed.plan, renewed.current_period_end) == (
        "active",
        "starter",
        MAR_1,
    )
    assert payments(platform, eve) == [
        ("subscription", "succeeded", 4900),
        ("renewal", "succeeded", 1900),
    ]
    assert renewal_notices(platform, eve) == 1
    books_balance(platform)


def test_reinstating_after_the_period_end_but_before_the_clock_ran_charges_nothing(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="starter")
    suspend(client, admin, eve)
    clock.set(FEB_1 + timedelta(hours=1))
    reinstate(client, admin, eve)
    assert subscription(platform, eve).status == "canceled"
    assert run_clock(platform) == {}
    assert payments(platform, eve) == [("subscription", "succeeded", 1900)]


def test_a_past_due_subscription_ends_when_the_account_is_suspended(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="starter")
    declines = client.post(
        f"/v1/admin/users/{eve.id}/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    assert declines.status_code == 200
    clock.set(FEB_1 + timedelta(hours=1))
    assert run_clock(platform) == {"payment_failed": 1}
    assert subscription(platform, eve).status == "past_due"
    # Paying the unpaid renewal is a charge: ended instead of left to retry.
    suspend(client, admin, eve)
    assert subscription(platform, eve).status == "canceled"
    assert plan_now(platform, eve) == "free"
    assert run_clock(platform) == {}
    assert [status for _kind, status, _amount in payments(platform, eve)] == [
        "succeeded",
        "failed",
    ]


def test_every_way_of_suspending_stops_the_renewal(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    """Fair use's automatic suspension goes through the same use case as an admin's."""
    eve = make_user(platform, "eve@example.com", plan="starter")
    assessment = None
    for n in range(5):
        with platform.db.write() as conn:
            assessment = platform.fairuse.record_clawback(
                conn,
                eve.id,
                payment_id=f"pay_{n}",
                credits_clawed_back=10,
                credits_spent=5,
                reason="dispute",
            )
        if assessment.suspended_now:
            break
    assert assessment is not None
    assert assessment.suspended_now
    assert subscription(platform, eve).stops_for_suspension
    clock.set(FEB_1 + timedelta(hours=1))
    assert run_clock(platform) == {"canceled": 1}
    assert payments(platform, eve) == [("subscription", "succeeded", 1900)]
    # The account logs in, read-only.
    log_in(client, eve)
    assert client.get("/v1/me").json()["status_reason"].startswith("automatic: abuse score")


# -- the dashboard -------------------------------------------------------------------


def buttons(html: str, label: str) -> list[str]:
    """The opening tags of the buttons whose text starts with ``label``."""
    return re.findall(r"<button[^>]*>\s*" + re.escape(label), html)


def test_the_dashboard_of_a_suspended_account_is_read_only(
    platform: Platform, client: TestClient
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    eve = make_user(platform, "eve@example.com", plan="starter", credits=50)
    generation_id = generate_one(platform, eve)
    suspend(client, admin, eve)
    log_in(client, eve)
    pages = {}
    for path in ("/", "/create", "/generations", "/usage", "/billing", "/settings", "/team"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert 'id="suspended-note"' in page.text, path
        assert f"Reason: {REASON}." in page.text, path
        assert f"mailto:{SUPPORT}" in page.text, path
        pages[path] = page.text
    assert "Generating is unavailable while your account is suspended" in pages["/create"]
    assert all("disabled" in tag for tag in buttons(pages["/create"], "Generate"))
    assert generation_id in pages["/generations"]
    assert "/v1/outputs/" in pages["/generations"]
    # Billing: the payments, a working cancel button, and nothing to buy.
    billing = pages["/billing"]
    assert "Starter plan" in billing
    assert "Ends on February 01, 2026 without renewing" in billing
    cancel = buttons(billing, "Cancel plan")
    assert len(cancel) == 1
    assert "disabled" not in cancel[0]
    for label in ("Buy", "Upgrade to Pro", "Upgrade to Studio"):
        found = buttons(billing, label)
        assert found, label
        assert all("disabled" in tag for tag in found), label
    assert all("disabled" in tag for tag in buttons(pages["/settings"], "Create key"))
    # The login page sends a logged-in suspended user on, like anybody.
    assert client.get("/login", follow_redirects=False).headers["location"] == "/"
    # Reinstated: no banner, the buttons work again.
    reinstate(client, admin, eve)
    log_in_again = client.post("/v1/auth/login", json={"email": eve.email, "password": PASSWORD})
    assert log_in_again.status_code == 200
    page = client.get("/create").text
    assert 'id="suspended-note"' not in page
    assert not any("disabled" in tag for tag in buttons(page, "Generate"))


def test_the_writes_a_suspended_account_may_make_are_routes_of_the_app(
    client: TestClient,
) -> None:
    """``SUSPENDED_MAY_WRITE`` names routes by their path: a renamed route
    must not silently drop out of it (nor a typo go unnoticed)."""
    app = client.app
    assert isinstance(app, FastAPI)
    routes = {route.key for route in app_routes(app)}
    assert sorted(SUSPENDED_MAY_WRITE - routes) == []
    assert all(key.split(" ", 1)[0] not in {"GET", "HEAD"} for key in SUSPENDED_MAY_WRITE)

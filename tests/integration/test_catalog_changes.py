"""Announced catalog changes, on SQLite and PostgreSQL: scheduled with notice,
refused without it, applied to new requests only at the effective time (a
job keeps its quoted price; a plan change waits for each subscriber's next
period), and announced to every affected user once, plus once a day before."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.billing.tasks import run_billing_clock
from plasmaart.changes import service as catalog_service
from plasmaart.clock import ManualClock
from plasmaart.db.tables import audit_log, catalog_changes, notification_outbox, notifications
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker, run_notifications
from tests.support.accounts import TestUser, make_user

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
PROBLEM = "application/problem+json"
FAST = {"sandbox": {"delay_s": 0}}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def schedule(client: TestClient, admin: TestUser, **body: Any) -> Any:
    return client.post("/v1/admin/catalog/changes", json=body, headers=admin.auth)


def change_notices(platform: Platform, user: TestUser) -> list[dict[str, Any]]:
    with platform.db.read() as conn:
        page = platform.notifications.list(conn, user.id, limit=100)
    return [n.data for n in page.items if n.kind == "catalog.change"]


def count(platform: Platform, table: Any) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_price_change_announced_14_days_ahead(
    platform: Platform, client: TestClient, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Users are worked through in batches: several here.
    monkeypatch.setattr(catalog_service, "USER_BATCH", 2)
    admin = make_user(platform, "admin@example.com", admin=True)
    # Veo3 is in the video-premium tier: Pro and Studio only.
    carol = make_user(platform, "carol@example.com", plan="pro")
    sven = make_user(platform, "sven@example.com", plan="studio")
    alice = make_user(platform, "alice@example.com", plan="starter")
    bob = make_user(platform, "bob@example.com")
    effective = JAN_1 + timedelta(days=14)

    made = schedule(
        client,
        admin,
        target="model",
        id="Veo3",
        field="credits",
        value=900,
        effective_at=iso(effective),
    )
    assert made.status_code == 201, made.text
    change = made.json()
    assert (change["target_id"], change["previous"], change["value"]) == ("veo3", 800, 900)
    assert change["status"] == "scheduled"

    public = client.get("/v1/catalog/changes").json()["data"]
    assert [(c["id"], c["field"], c["previous"], c["value"]) for c in public] == [
        (change["id"], "credits", 800, 900)
    ]
    assert public[0]["effective_at"].startswith("2026-01-15T00:00:00")
    veo3 = client.get("/v1/models/veo3").json()
    assert veo3["credits"] == 800
    assert veo3["upcoming_change"]["to"] == 900
    assert veo3["upcoming_change"]["from"] == 800
    assert client.get("/v1/models/flux-dev").json()["upcoming_change"] is None

    # The worker announces it: every affected user once, nobody else.
    run_notifications(platform, "worker-1")
    run_notifications(platform, "worker-2")
    for user in (carol, sven):
        assert [n["stage"] for n in change_notices(platform, user)] == ["announced"]
    assert change_notices(platform, alice) == []
    assert change_notices(platform, bob) == []

    # A day before: once more, even with two workers at it together.
    clock.set(effective - timedelta(hours=23))
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def one_worker(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            run_notifications(platform, name)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=one_worker, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    run_notifications(platform, "worker-1")
    for user in (carol, sven):
        assert sorted(n["stage"] for n in change_notices(platform, user)) == [
            "announced",
            "reminder",
        ]
    assert change_notices(platform, alice) == change_notices(platform, bob) == []

    # In force: the new price, and no longer upcoming.
    clock.set(effective)
    assert client.get("/v1/models/veo3").json()["credits"] == 900
    assert client.get("/v1/models/veo3").json()["upcoming_change"] is None
    assert client.get("/v1/catalog/changes").json()["data"] == []
    listed = client.get("/v1/admin/catalog/changes", headers=admin.auth).json()["data"]
    assert [c["status"] for c in listed] == ["in_force"]
    run_notifications(platform, "worker-1")
    assert len(change_notices(platform, carol)) == 2


def test_a_job_queued_before_the_change_is_charged_the_old_price(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    kai = make_user(platform, "kai@example.com", plan="starter")
    effective = JAN_1 + timedelta(days=14)
    made = schedule(
        client,
        admin,
        target="model",
        id="flux-dev",
        field="credits",
        value=7,
        effective_at=iso(effective),
    )
    assert made.status_code == 201, made.text
    request = GenerationRequest("flux-dev", "a lighthouse", num_outputs=2, params=FAST)
    clock.set(effective - timedelta(seconds=1))
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, kai.id)
        before = platform.generations.submit(conn, user, request)
    assert (before.credits_per_output, before.credits_held) == (5, 10)

    clock.set(effective)  # the change is in force; the job has not started
    with platform.db.read() as conn:
        assert platform.generations.quote(conn, user, request).credits == 14
    with platform.db.write() as conn:
        after = platform.generations.submit(conn, user, request)
    assert (after.credits_per_output, after.credits_held) == (7, 14)

    runner = Worker(platform)
    runner.runner.sleep = lambda _seconds: None
    assert runner.drain() == 2
    with platform.db.read() as conn:
        done_before = platform.generations.get(conn, user, before.id)
        done_after = platform.generations.get(conn, user, after.id)
        assert check_ledger(conn) == []
        balance = platform.ledger.balance(conn, kai.wallet_id)
    assert (done_before.status, done_before.credits_charged) == ("succeeded", 10)
    assert (done_after.status, done_after.credits_charged) == ("succeeded", 14)
    assert (balance.available, balance.held) == (2000 - 24, 0)


def test_a_withdrawn_model_takes_no_new_jobs(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    kai = make_user(platform, "kai@example.com", plan="starter")
    effective = JAN_1 + timedelta(days=20)
    made = schedule(
        client,
        admin,
        target="model",
        id="seedream-v3",
        field="available",
        value=False,
        effective_at=iso(effective),
    )
    assert made.status_code == 201, made.text
    body = {"model": "seedream-v3", "prompt": "a fern", "params": FAST}
    queued = client.post("/v1/generations", json=body, headers=kai.auth)
    assert queued.status_code == 201, queued.text
    clock.set(effective)
    assert client.get("/v1/models/seedream-v3", headers=kai.auth).json()["available"] is False
    refused = client.post("/v1/generations", json=body, headers=kai.auth)
    assert refused.status_code == 403, refused.text
    runner = Worker(platform)
    runner.runner.sleep = lambda _seconds: None
    assert runner.drain() == 1
    done = client.get(f"/v1/generations/{queued.json()['id']}", headers=kai.auth).json()
    assert (done["status"], done["credits_charged"]) == ("succeeded", 6)


def test_a_plan_change_applies_from_each_subscribers_next_period(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    kai = make_user(platform, "kai@example.com", plan="starter")  # period Jan 1 - Feb 1
    free = make_user(platform, "free@example.com")
    effective = JAN_1 + timedelta(days=20)
    for field, value in (("monthly_credits", 2500), ("price_cents", 2100)):
        made = schedule(
            client,
            admin,
            target="plan",
            id="starter",
            field=field,
            value=value,
            effective_at=iso(effective),
        )
        assert made.status_code == 201, made.text
    run_notifications(platform, "worker-1")
    notices = change_notices(platform, kai)
    assert sorted(n["field"] for n in notices) == ["monthly_credits", "price_cents"]
    assert change_notices(platform, free) == []

    clock.set(effective + timedelta(days=1))
    plans = {p["id"]: p for p in client.get("/v1/plans").json()["data"]}
    assert (plans["starter"]["monthly_credits"], plans["starter"]["price_cents"]) == (2500, 2100)
    with platform.db.read() as conn:
        # Kai's current period started on the old terms and keeps them.
        assert platform.billing.plans.plan_of(conn, kai.wallet_id).monthly_credits == 2000
    # A new subscriber starts on the new terms at once.
    newcomer = make_user(platform, "new@example.com", plan="starter")
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, newcomer.wallet_id).available == 2500

    clock.set(FEB_1)
    run_billing_clock(platform.db, platform.billing)
    with platform.db.read() as conn:
        assert platform.billing.plans.plan_of(conn, kai.wallet_id).monthly_credits == 2500
        assert platform.ledger.balance(conn, kai.wallet_id).available == 2500
        assert check_ledger(conn) == []
    payments = client.get("/v1/payments", headers=kai.auth).json()["data"]
    amounts = sorted((p["kind"], p["amount_cents"]) for p in payments)
    assert amounts == [("renewal", 2100), ("subscription", 1900)]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        # 13 days: inside the notice period
        ({"effective_at": iso(JAN_1 + timedelta(days=13))}, 422, "notice_period", None),
        ({"effective_at": iso(JAN_1 - timedelta(days=1))}, 422, "invalid_input", "effective_at"),
        ({"effective_at": "2026-03-01T00:00:00"}, 422, "invalid_input", "effective_at"),
        ({"id": "no-such-model"}, 422, "invalid_input", "id"),
        ({"target": "plan", "id": "platinum", "field": "price_cents"}, 422, "invalid_input", "id"),
        ({"target": "pack"}, 422, "invalid_input", "target"),
        ({"field": "provider_model"}, 422, "invalid_input", "field"),
        ({"value": "9"}, 422, "invalid_input", "value"),
        ({"value": True}, 422, "invalid_input", "value"),
        ({"value": 0}, 422, "invalid_input", "value"),
        ({"value": 5}, 422, "invalid_input", "value"),  # what it already costs
        (
            {"target": "plan", "id": "pro", "field": "price_cents", "value": -100},
            422,
            "invalid_input",
            "value",
        ),
        (
            {"target": "plan", "id": "pro", "field": "name", "value": "Pro+"},
            422,
            "invalid_input",
            "field",
        ),
    ],
)
def test_refusals_write_nothing(
    platform: Platform,
    client: TestClient,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    make_user(platform, "carol@example.com", plan="pro")
    audits = count(platform, audit_log)
    messages = count(platform, notification_outbox)  # carol's receipt
    request = {
        "target": "model",
        "id": "flux-dev",
        "field": "credits",
        "value": 6,
        "effective_at": iso(JAN_1 + timedelta(days=30)),
        **body,
    }
    response = schedule(client, admin, **request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["code"] == code
    if field is not None:
        assert problem["errors"][0]["field"] == field
        assert problem["errors"][0]["message"]
    else:
        assert problem["earliest_effective_at"].startswith("2026-01-15")
    run_notifications(platform, "worker-1")
    assert count(platform, catalog_changes) == 0
    assert count(platform, notification_outbox) == messages
    assert count(platform, notifications) == 0
    assert count(platform, audit_log) == audits


def test_a_change_is_withdrawn_only_before_it_takes_effect(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    carol = make_user(platform, "carol@example.com", plan="pro")
    first, second, third = (
        schedule(
            client,
            admin,
            target="model",
            id=model,
            field="credits",
            value=9,
            effective_at=iso(JAN_1 + timedelta(days=15)),
        ).json()
        for model in ("flux-dev", "flux-pro-v1.1", "imagen4-preview")
    )
    # Withdrawn before anybody heard of it: never announced.
    gone = client.delete(f"/v1/admin/catalog/changes/{first['id']}", headers=admin.auth)
    assert gone.status_code == 200, gone.text
    assert gone.json()["status"] == "canceled"
    again = client.delete(f"/v1/admin/catalog/changes/{first['id']}", headers=admin.auth)
    assert again.json()["status"] == "canceled"
    run_notifications(platform, "worker-1")
    announced = [(n["change_id"], n["stage"]) for n in change_notices(platform, carol)]
    assert sorted(announced) == sorted([(second["id"], "announced"), (third["id"], "announced")])

    # Withdrawn after its announcement: those told are told it is off.
    client.delete(f"/v1/admin/catalog/changes/{third['id']}", headers=admin.auth)
    run_notifications(platform, "worker-1")
    notices = change_notices(platform, carol)
    assert notices[0] == {"change_id": third["id"], "stage": "withdrawn"}
    assert len(notices) == 3

    clock.set(JAN_1 + timedelta(days=15))
    late = client.delete(f"/v1/admin/catalog/changes/{second['id']}", headers=admin.auth)
    assert late.status_code == 409
    assert late.json()["code"] == "change_in_force"
    assert client.get("/v1/models/flux-dev").json()["credits"] == 5
    assert client.get("/v1/models/imagen4-preview").json()["credits"] == 8
    assert client.get("/v1/models/flux-pro-v1.1").json()["credits"] == 9
    # The reminder window passed with the worker down: no late reminder, and
    # withdrawn changes are never reminded.
    run_notifications(platform, "worker-1")
    assert len(change_notices(platform, carol)) == 3
    admin_view = client.get("/v1/admin/catalog/changes", headers=admin.auth).json()["data"]
    assert sorted(c["status"] for c in admin_view) == ["canceled", "canceled", "in_force"]


def test_refusals_name_the_cheapest_plan_in_force(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    """Once Pro includes watermark removal and team seats, a refusal names
    Pro (the cheapest plan that has them now), as ``/v1/plans`` lists it,
    not the catalog file's Studio."""
    admin = make_user(platform, "admin@example.com", admin=True)
    bob = make_user(platform, "bob@example.com")
    effective = JAN_1 + timedelta(days=14)
    for field, value in (("watermark_removable", True), ("team_seats", 3)):
        made = schedule(
            client,
            admin,
            target="plan",
            id="pro",
            field=field,
            value=value,
            effective_at=iso(effective),
        )
        assert made.status_code == 201, made.text

    def required_plans() -> tuple[str, str]:
        watermark = client.patch(
            "/v1/me/settings", json={"remove_watermark": True}, headers=bob.auth
        )
        team = client.post("/v1/teams", json={"name": "Ours"}, headers=bob.auth)
        assert (watermark.status_code, team.status_code) == (403, 403), (watermark, team)
        return watermark.json()["required_plan"], team.json()["required_plan"]

    assert required_plans() == ("studio", "studio")
    clock.set(effective)
    plans = {p["id"]: p for p in client.get("/v1/plans").json()["data"]}
    assert (plans["pro"]["watermark_removable"], plans["pro"]["team_seats"]) == (True, 3)
    assert required_plans() == ("pro", "pro")


def test_one_service_answers_which_catalog(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    """``platform.catalogs``: ``base`` is the file as loaded, ``now`` and
    ``at`` the catalog in force, ``timeline`` the same for many moments from
    one read of the changes; the API serves ``now``."""
    admin = make_user(platform, "admin@example.com", admin=True)
    first, second = JAN_1 + timedelta(days=14), JAN_1 + timedelta(days=20)
    for value, effective in ((900, first), (1000, second)):
        made = schedule(
            client,
            admin,
            target="model",
            id="veo3",
            field="credits",
            value=value,
            effective_at=iso(effective),
        )
        assert made.status_code == 201, made.text
    catalogs = platform.catalogs
    with platform.db.read() as conn:
        timeline = catalogs.timeline(conn)
        assert catalogs.now(conn).model("veo3").credits == 800
        assert catalogs.at(conn, first).model("veo3").credits == 900
        assert catalogs.at(conn, second - timedelta(microseconds=1)).model("veo3").credits == 900
        assert catalogs.at(conn, second).model("veo3").credits == 1000
    assert [timeline.at(t).model("veo3").credits for t in (JAN_1, first, second)] == [
        800,
        900,
        1000,
    ]
    # The same catalog object for the same changes in force (built once).
    assert timeline.at(first) is timeline.at(second - timedelta(days=1))
    clock.set(second)
    with platform.db.read() as conn:
        assert catalogs.now(conn).model("veo3").credits == 1000
    assert catalogs.base.model("veo3").credits == 800
    assert client.get("/v1/models/veo3").json()["credits"] == 1000

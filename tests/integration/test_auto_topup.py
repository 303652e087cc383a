"""Auto top-up (docs/credits.md, Auto top-up) under sandbox billing, on
SQLite and PostgreSQL: a hold below the threshold starts one run, one in
flight per wallet; the worker charges it off-session and the pack's credits
are added (a purchase lot, a ``pack`` payment, its receipt mail); the
monthly cap, told once; three declines in a row turn it off with a notice
and a mail; a charge the bank wants authenticated mails a link and waits,
with no retry, until the customer pays or changes the settings; the team
owner alone sets a team wallet's; account deletion turns it off; every run
writes its webhook event."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.billing.backends import Paid
from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    auto_topups,
    lots,
    notification_outbox,
    payments,
    topup_runs,
    wallets,
    webhook_events,
)
from plasmaart.notify.email import StoredMail
from plasmaart.platform import Platform
from plasmaart.worker import Worker, outbox_delivery
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.platforms import running_platform, settings_for

JAN_10 = datetime(2026, 1, 10, tzinfo=UTC)
FEB_2 = datetime(2026, 2, 2, tzinfo=UTC)
PACK = "pack-1000"  # 1,000 credits for 1,200 cents
SETTINGS = {"enabled": True, "threshold": 1000, "pack": PACK, "monthly_cap_cents": 5000}


# -- helpers -------------------------------------------------------------------


def put(client: TestClient, who: TestUser, team_id: str | None = None, **body: Any) -> Any:
    query = "" if team_id is None else f"?team_id={team_id}"
    return client.put(f"/v1/auto-topup{query}", json={**SETTINGS, **body}, headers=who.auth)


def enable(client: TestClient, who: TestUser, **body: Any) -> dict[str, Any]:
    answer = put(client, who, **body)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def settings(client: TestClient, who: TestUser) -> dict[str, Any]:
    answer = client.get("/v1/auto-topup", headers=who.auth)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


_spent = 0


def spend(platform: Platform, who: TestUser, credits: int) -> int:
    """Hold ``credits`` and capture them; the available balance after."""
    global _spent
    _spent += 1
    with platform.db.write() as conn:
        hold = platform.ledger.hold(
            conn, who.wallet_id, credits, idempotency_key=f"spend:{_spent}:hold"
        )
        platform.ledger.capture(
            conn, hold.hold_id, credits, idempotency_key=f"spend:{_spent}:capture"
        )
    return available(platform, who)


def available(platform: Platform, who: TestUser) -> int:
    with platform.db.read() as conn:
        return platform.ledger.balance(conn, who.wallet_id).available


def runs(platform: Platform, who: TestUser) -> list[tuple[str, str | None]]:
    """(status, failure reason) of the wallet's runs, oldest first."""
    with platform.db.read() as conn:
        rows = conn.execute(
            select(topup_runs.c.status, topup_runs.c.failure_reason)
            .where(topup_runs.c.wallet_id == who.wallet_id)
            .order_by(topup_runs.c.created_at, topup_runs.c.id)
        ).all()
    return [(row.status, row.failure_reason) for row in rows]


def watch_below(platform: Platform, who: TestUser) -> int | None:
    with platform.db.read() as conn:
        found = conn.execute(
            select(wallets.c.watch_below).where(wallets.c.id == who.wallet_id)
        ).scalar_one()
    return None if found is None else int(found)


def charge(platform: Platform) -> None:
    """The worker's auto top-up task."""
    Worker(platform).charge_topups()


def kinds(platform: Platform, who: TestUser) -> list[str]:
    with platform.db.read() as conn:
        return list(
            conn.execute(
                select(notification_outbox.c.kind)
                .where(notification_outbox.c.user_id == who.id)
                .order_by(notification_outbox.c.created_at, notification_outbox.c.id)
            ).scalars()
        )


def events(platform: Platform, who: TestUser) -> list[dict[str, Any]]:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(webhook_events.c.type, webhook_events.c.payload)
            .where(webhook_events.c.user_id == who.id)
            .order_by(webhook_events.c.created_at, webhook_events.c.id)
        ).all()
    return [json.loads(row.payload) for row in rows]


def mails(platform: Platform, who: TestUser, subject: str) -> list[StoredMail]:
    outbox_delivery(platform).run("test")
    return [
        m for m in platform.mail_folder.messages() if m.to == who.email and subject in m.subject
    ]


def sandbox_card(platform: Platform, who: TestUser, **card: bool) -> None:
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(
            conn,
            who.id,
            declines=card.get("declines", False),
            requires_action=card.get("requires_action"),
        )


def refused(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


# -- the trigger and one run in flight -------------------------------------------


def test_a_spend_below_the_threshold_buys_one_pack_added_to_the_balance(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    clock.set(JAN_10)
    kai = make_user(platform, "kai@example.com", credits=1500)
    answer = enable(client, kai)
    assert answer["enabled"] is True
    assert answer["pack"] == PACK
    assert answer["failures"] == 0
    assert answer["spent_this_month_cents"] == 0
    assert answer["last_run"] is None
    assert watch_below(platform, kai) == 1000

    assert spend(platform, kai, 400) == 1100  # still above: nothing
    assert runs(platform, kai) == []
    assert spend(platform, kai, 200) == 900  # below: one run
    assert runs(platform, kai) == [("pending", None)]
    # In flight: the wallet watches nothing below, so further holds cost nothing.
    assert watch_below(platform, kai) is None
    assert spend(platform, kai, 300) == 600
    assert runs(platform, kai) == [("pending", None)]
    during = settings(client, kai)
    assert during["in_flight"] is True
    assert during["last_run"]["status"] == "pending"
    assert during["spent_this_month_cents"] == 1200  # a pending run counts against the cap

    charge(platform)
    # Added, never set: 600 left + 1,000 bought.
    assert available(platform, kai) == 1600
    assert runs(platform, kai) == [("succeeded", None)]
    assert watch_below(platform, kai) == 1000
    after = settings(client, kai)
    run = after["last_run"]
    assert after["in_flight"] is False
    assert after["failures"] == 0
    assert run["status"] == "succeeded"
    assert run["credits"] == 1000
    assert run["amount_cents"] == 1200
    assert run["currency"] == "usd"
    assert run["payment_id"] is not None
    assert run["finished_at"] is not None
    with platform.db.read() as conn:
        payment = conn.execute(select(payments).where(payments.c.id == run["payment_id"])).one()
        lot = conn.execute(select(lots).where(lots.c.id == payment.lot_id)).one()
    assert (payment.kind, payment.status, payment.pack_id) == ("pack", "succeeded", PACK)
    assert payment.amount_cents == 1200
    assert payment.receipt_number is not None
    assert (lot.source, lot.granted, lot.reference) == ("purchase", 1000, payment.id)
    # Its receipt, as every payment's; a second pass of the worker changes nothing.
    charge(platform)
    assert available(platform, kai) == 1600
    assert len(mails(platform, kai, "receipt")) == 1
    [event] = events(platform, kai)
    assert event["type"] == "topup.succeeded"
    assert event["data"] == {
        "run_id": run["id"],
        "wallet_id": kai.wallet_id,
        "pack": PACK,
        "credits": 1000,
        "amount_cents": 1200,
        "currency": "usd",
        "status": "succeeded",
        "failure_reason": None,
        "action_url": None,
    }

    # Below again later: a second run, a second receipt.
    assert spend(platform, kai, 700) == 900
    charge(platform)
    assert available(platform, kai) == 1900
    assert [status for status, _ in runs(platform, kai)] == ["succeeded", "succeeded"]
    assert len(mails(platform, kai, "receipt")) == 2
    assert settings(client, kai)["spent_this_month_cents"] == 2400


def test_a_run_ends_once_and_a_dead_workers_run_is_charged_again(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1100)
    enable(client, kai)
    spend(platform, kai, 200)
    with platform.db.read() as conn:
        run_id = conn.execute(select(topup_runs.c.id)).scalar_one()
    # A worker charged it, then died before recording: the run is still pending
    # and the next pass charges it again (the same idempotency key) and ends it.
    with platform.db.read() as conn:
        run = platform.auto_topups.view(conn, kai.wallet_id).last_run
        assert run is not None
        assert run.status == "pending"
        platform.auto_topups.charge(conn, run)
    charge(platform)
    with platform.db.write() as conn:
        # A late second ending (another worker) changes nothing.
        assert platform.auto_topups.finish(conn, run_id, Paid()) is None
    assert available(platform, kai) == 1900
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(payments)).scalar_one() == 1


def test_enabling_below_the_threshold_starts_a_run_now(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=300)
    platform.auto_topups.wake.clear()
    answer = enable(client, kai)
    assert answer["in_flight"] is True
    assert answer["last_run"]["status"] == "pending"
    # Its commit woke the worker's loop.
    assert platform.auto_topups.wake.is_set() is True
    charge(platform)
    assert available(platform, kai) == 1300
    assert runs(platform, kai) == [("succeeded", None)]


def test_turned_off_it_starts_nothing(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", credits=1500)
    enable(client, kai)
    off = enable(client, kai, enabled=False)
    assert off["enabled"] is False
    assert watch_below(platform, kai) is None
    spend(platform, kai, 1000)
    charge(platform)
    assert runs(platform, kai) == []
    assert available(platform, kai) == 500


# -- the cap ----------------------------------------------------------------------


def test_the_monthly_cap_stops_top_ups_and_says_so_once(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    clock.set(JAN_10)
    kai = make_user(platform, "kai@example.com", credits=1100)
    enable(client, kai, monthly_cap_cents=2000)  # room for one pack of 1,200
    spend(platform, kai, 200)
    charge(platform)
    assert available(platform, kai) == 1900
    assert spend(platform, kai, 1000) == 900  # below, but a second pack would cost 2,400
    assert spend(platform, kai, 100) == 800
    charge(platform)
    assert [status for status, _ in runs(platform, kai)] == ["succeeded"]
    assert kinds(platform, kai).count("topup.cap_reached") == 1
    [told] = mails(platform, kai, "monthly cap")
    assert "20.00 USD" in told.text
    assert "2026-01" in told.text
    assert settings(client, kai)["spent_this_month_cents"] == 1200

    # A new month: the cap starts again, and the next spend below buys.
    clock.set(FEB_2)
    assert settings(client, kai)["spent_this_month_cents"] == 0
    spend(platform, kai, 100)
    charge(platform)
    assert available(platform, kai) == 1700
    assert [status for status, _ in runs(platform, kai)] == ["succeeded", "succeeded"]


# -- failures ----------------------------------------------------------------------


def test_three_declines_in_a_row_turn_it_off_with_a_notice_and_a_mail(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1050)
    enable(client, kai)
    sandbox_card(platform, kai, declines=True)
    for attempt in (1, 2, 3):
        spend(platform, kai, 100)  # below the threshold each time
        charge(platform)
        assert len(runs(platform, kai)) == attempt
        assert runs(platform, kai)[-1][0] == "failed"
        state = settings(client, kai)
        assert state["failures"] == attempt
        assert state["enabled"] is (attempt < 3)
    assert available(platform, kai) == 750  # nothing was granted
    state = settings(client, kai)
    assert "3 failed top-ups in a row" in state["disabled_reason"]
    assert state["last_run"]["failure_reason"] == "the sandbox card declines (an admin set it to)"
    assert kinds(platform, kai) == ["topup.failed", "topup.failed", "topup.disabled"]
    [off] = mails(platform, kai, "auto top-up is off")
    assert "failed 3 times in a row" in off.text
    assert len(mails(platform, kai, "auto top-up failed")) == 2
    assert [e["type"] for e in events(platform, kai)] == ["topup.failed"] * 3
    assert events(platform, kai)[0]["data"]["failure_reason"].startswith("the sandbox card")
    # Off: no more runs, whatever the balance does.
    assert watch_below(platform, kai) is None
    spend(platform, kai, 100)
    charge(platform)
    assert len(runs(platform, kai)) == 3

    # Turned on again (the card fixed), the count starts over.
    sandbox_card(platform, kai, declines=False)
    again = enable(client, kai)
    assert again["failures"] == 0
    assert again["disabled_reason"] is None
    charge(platform)  # the balance (650) was below already: a run started at once
    assert available(platform, kai) == 1650


def test_a_success_resets_the_failures(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", credits=1050)
    enable(client, kai)
    sandbox_card(platform, kai, declines=True)
    for _ in range(2):
        spend(platform, kai, 100)
        charge(platform)
    assert settings(client, kai)["failures"] == 2
    sandbox_card(platform, kai, declines=False)
    spend(platform, kai, 100)
    charge(platform)
    assert settings(client, kai)["failures"] == 0
    assert available(platform, kai) == 1750


def test_authentication_required_mails_a_link_and_waits_without_retrying(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1100)
    enable(client, kai)
    sandbox_card(platform, kai, requires_action=True)
    spend(platform, kai, 200)
    charge(platform)
    run = settings(client, kai)["last_run"]
    assert run["status"] == "action_required"
    assert run["action_url"].endswith("/credits#auto-topup")
    assert "authentication" in run["failure_reason"]
    [asked] = mails(platform, kai, "confirm an auto top-up")
    assert run["action_url"] in asked.text
    [event] = events(platform, kai)
    assert event["type"] == "topup.failed"
    assert event["data"]["status"] == "action_required"
    assert event["data"]["action_url"] == run["action_url"]
    # No retry loop: more spending and more passes of the worker start nothing.
    assert watch_below(platform, kai) is None
    for _ in range(3):
        spend(platform, kai, 100)
        charge(platform)
    assert [status for status, _ in runs(platform, kai)] == ["action_required"]
    assert settings(client, kai)["failures"] == 0  # not a decline: it waits
    assert available(platform, kai) == 600

    # The customer pays the pack on-session (the link's buy-pack flow): the
    # wait ends and the threshold is watched again.
    bought = client.post("/v1/credit-purchases", json={"pack": PACK}, headers=kai.auth)
    assert bought.status_code == 201, bought.text
    assert available(platform, kai) == 1600
    assert watch_below(platform, kai) == 1000
    assert settings(client, kai)["in_flight"] is False
    spend(platform, kai, 700)
    sandbox_card(platform, kai, requires_action=False)
    charge(platform)
    assert [status for status, _ in runs(platform, kai)] == ["action_required", "succeeded"]
    assert available(platform, kai) == 1900


def test_changing_the_settings_ends_a_wait_for_authentication(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1100)
    enable(client, kai)
    sandbox_card(platform, kai, requires_action=True)
    spend(platform, kai, 200)
    charge(platform)
    assert settings(client, kai)["in_flight"] is True
    sandbox_card(platform, kai, requires_action=False)
    changed = enable(client, kai, threshold=950)
    # Saved with the balance (900) below: a new run at once.
    assert changed["in_flight"] is True
    assert changed["last_run"]["status"] == "pending"
    charge(platform)
    assert available(platform, kai) == 1900


# -- the settings --------------------------------------------------------------------


def test_settings_are_checked_and_a_refusal_writes_nothing(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=500)
    never = settings(client, kai)
    assert never["enabled"] is False
    assert never["pack"] is None
    assert never["last_run"] is None
    assert never["currency"] == "usd"
    refused(put(client, kai, pack="pack-7"), 422, "invalid_input")
    refused(put(client, kai, monthly_cap_cents=1199), 422, "invalid_input")
    refused(put(client, kai, threshold=-1), 422, "invalid_input")
    refused(put(client, kai, monthly_cap_cents=-5), 422, "invalid_input")
    answer = client.put("/v1/auto-topup", json={**SETTINGS, "extra": 1}, headers=kai.auth)
    refused(answer, 422, "invalid_input")
    refused(client.put("/v1/auto-topup", json=SETTINGS), 401, "unauthenticated")
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(auto_topups)).scalar_one() == 0
    # Off, a cap below the price is allowed (nothing can run).
    off = enable(client, kai, enabled=False, monthly_cap_cents=0)
    assert off["enabled"] is False
    assert off["monthly_cap_cents"] == 0
    assert runs(platform, kai) == []


def test_the_team_owner_alone_sets_the_team_wallets(platform: Platform, client: TestClient) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    team = client.post("/v1/teams", json={"name": "Night Shift"}, headers=owner.auth).json()
    bob = make_user(platform, "bob@example.com")
    invited = client.post(
        f"/v1/teams/{team['id']}/invitations",
        json={"email": "bob@example.com"},
        headers=owner.auth,
    ).json()
    accepted = client.post(f"/v1/invitations/{invited['token']}/accept", headers=bob.auth)
    assert accepted.status_code == 200, accepted.text
    stranger = make_user(platform, "eve@example.com")

    answer = put(client, owner, team_id=team["id"], threshold=500)
    assert answer.status_code == 200, answer.text
    assert answer.json()["wallet_id"] == owner.wallet_id  # a team spends its owner's wallet
    got = client.get(f"/v1/auto-topup?team_id={team['id']}", headers=owner.auth)
    assert got.json()["threshold"] == 500
    refused(put(client, bob, team_id=team["id"]), 403, "forbidden")
    refused(client.get(f"/v1/auto-topup?team_id={team['id']}", headers=bob.auth), 403, "forbidden")
    refused(put(client, stranger, team_id=team["id"]), 404, "not_found")
    refused(put(client, owner, team_id="team_nope"), 404, "not_found")
    assert settings(client, owner)["threshold"] == 500
    # Bob's own wallet is his own business.
    assert enable(client, bob)["wallet_id"] == bob.wallet_id

    # A member's generation spends the team wallet below its threshold: the
    # owner's top-up buys, and the owner pays.
    with platform.db.write() as conn:
        platform.ledger.hold(conn, owner.wallet_id, 10_700, idempotency_key="team-spend")
    charge(platform)
    with platform.db.read() as conn:
        payer = conn.execute(
            select(topup_runs.c.user_id, topup_runs.c.status).where(
                topup_runs.c.wallet_id == owner.wallet_id
            )
        ).one()
    assert tuple(payer) == (owner.id, "succeeded")


def test_deleting_the_account_turns_it_off_before_the_forfeit(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1500)
    enable(client, kai)
    deleted = client.request("DELETE", "/v1/me", json={"password": PASSWORD}, headers=kai.auth)
    assert deleted.status_code in (200, 204), deleted.text
    with platform.db.read() as conn:
        row = conn.execute(select(auto_topups)).one()
    assert row.enabled is False or row.enabled == 0
    assert row.disabled_reason == "account deleted"
    charge(platform)
    # The forfeit took the balance to 0, below the threshold: no run.
    assert runs(platform, kai) == []


def test_a_suspended_account_is_never_charged(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", credits=1100)
    admin = make_user(platform, "admin@example.com", admin=True)
    enable(client, kai)
    spend(platform, kai, 200)  # a run is pending
    with platform.db.write() as conn:
        platform.suspensions.suspend(conn, kai.id, actor=admin.id, reason="chargebacks")
    charge(platform)
    assert runs(platform, kai) == [("failed", "the account is suspended: nothing was charged")]
    assert available(platform, kai) == 900
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(payments)).scalar_one() == 0


def test_a_started_run_wakes_the_workers_of_other_processes(
    platform: Platform, client: TestClient, database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    """A worker in another process hears the start (NOTIFY on PostgreSQL, the
    file's peer sockets on SQLite) and charges at once."""
    with running_platform(settings_for(database_url, tmp_path / "other"), clock) as other:
        other.events.start(10)
        other.auto_topups.wake.clear()  # (a listener's start may wake it: a resync)
        kai = make_user(platform, "kai@example.com", credits=1100)
        enable(client, kai)
        spend(platform, kai, 200)
        assert other.auto_topups.wake.wait(10)
        Worker(other).charge_topups()
    assert available(platform, kai) == 1900

"""Balance alerts (docs/credits.md, "Balance alerts") on SQLite and PostgreSQL:
``/v1/balance-alerts``, each alert firing once per crossing in the ledger
operation's transaction (notice in the app and by mail, webhook event
``credits.low``), re-arming when the balance is back, percents of the plan's
monthly credits, the operator's default notice kept off wallets that have
alerts of their own, and the expiry notice's window per wallet."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    balance_alerts,
    notification_outbox,
    notifications,
    wallet_alerts,
    wallets,
    webhook_events,
)
from plasmaart.notify.notices import queue_expiry_notices, queue_low_balance_notices
from plasmaart.platform import Platform
from plasmaart.worker import run_notifications
from tests.support.accounts import TestUser, make_user

PROBLEM = "application/problem+json"


# -- helpers -------------------------------------------------------------------


def put_alerts(
    client: TestClient, user: TestUser, body: dict[str, Any], team_id: str | None = None
) -> Any:
    params = {} if team_id is None else {"team_id": team_id}
    return client.put("/v1/balance-alerts", json=body, headers=user.auth, params=params)


def set_alerts(client: TestClient, user: TestUser, *alerts: dict[str, int]) -> dict[str, Any]:
    answer = put_alerts(client, user, {"alerts": list(alerts)})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def get_alerts(client: TestClient, user: TestUser) -> dict[str, Any]:
    answer = client.get("/v1/balance-alerts", headers=user.auth)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


class Spender:
    """Holds and releases on one wallet, each in its own transaction."""

    def __init__(self, platform: Platform, user: TestUser) -> None:
        self.platform, self.user, self.count = platform, user, 0

    def hold(self, credits: int) -> str:
        self.count += 1
        with self.platform.db.write() as conn:
            return self.platform.ledger.hold(
                conn,
                self.user.wallet_id,
                credits,
                idempotency_key=f"spend:{self.user.id}:{self.count}",
            ).hold_id

    def release(self, hold_id: str) -> None:
        with self.platform.db.write() as conn:
            self.platform.ledger.release(conn, hold_id, idempotency_key=f"release:{hold_id}")

    def grant(self, credits: int) -> None:
        self.count += 1
        with self.platform.db.write() as conn:
            self.platform.ledger.grant(
                conn,
                self.user.wallet_id,
                credits,
                source="purchase",
                idempotency_key=f"grant:{self.user.id}:{self.count}",
            )


def low_notices(platform: Platform, user: TestUser) -> list[dict[str, Any]]:
    """The ``credits.low`` messages queued for ``user``, oldest first."""
    with platform.db.read() as conn:
        rows = conn.execute(
            select(
                notification_outbox.c.title, notification_outbox.c.body, notification_outbox.c.data
            )
            .where(
                notification_outbox.c.user_id == user.id,
                notification_outbox.c.kind == "credits.low",
            )
            .order_by(notification_outbox.c.created_at, notification_outbox.c.id)
        ).all()
    return [{"title": row.title, "body": row.body, **json.loads(row.data)} for row in rows]


def events(platform: Platform, user: TestUser, type: str) -> list[dict[str, Any]]:
    with platform.db.read() as conn:
        payloads = conn.execute(
            select(webhook_events.c.payload)
            .where(webhook_events.c.user_id == user.id, webhook_events.c.type == type)
            .order_by(webhook_events.c.created_at, webhook_events.c.id)
        ).scalars()
        return [json.loads(payload) for payload in payloads]


def watch_of(platform: Platform, user: TestUser) -> tuple[int | None, int | None]:
    with platform.db.read() as conn:
        row = conn.execute(
            select(wallets.c.watch_below, wallets.c.watch_above).where(
                wallets.c.id == user.wallet_id
            )
        ).one()
    return row.watch_below, row.watch_above


# -- firing once per crossing --------------------------------------------------


def test_an_alert_fires_once_per_crossing_and_rearms(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    answer = set_alerts(client, kai, {"credits": 50})
    (alert,) = answer["alerts"]
    assert (alert["threshold"], alert["armed"], alert["fired_at"]) == (50, True, None)
    # Armed: the ledger watches for a balance below 50, nothing above.
    assert watch_of(platform, kai) == (50, None)
    spend = Spender(platform, kai)

    first = spend.hold(60)  # 40 left: below 50
    assert [n["available"] for n in low_notices(platform, kai)] == [40]
    # Many more holds below it: still one notice.
    later = [spend.hold(5) for _ in range(4)]
    assert len(low_notices(platform, kai)) == 1
    fired = get_alerts(client, kai)["alerts"][0]
    assert (fired["armed"], fired["crossings"]) == (False, 1)
    assert fired["fired_at"] is not None
    # Fired: now it watches for the balance back at 50 or more.
    assert watch_of(platform, kai) == (None, 49)

    spend.release(first)  # 80: back above, armed again, nothing said
    assert get_alerts(client, kai)["alerts"][0]["armed"] is True
    assert len(low_notices(platform, kai)) == 1
    for hold_id in later:
        spend.release(hold_id)
    spend.hold(51)  # 49: the second crossing
    notices = low_notices(platform, kai)
    assert [n["available"] for n in notices] == [40, 49]
    assert notices[1]["title"] == "Your balance fell below 50 credits"
    assert get_alerts(client, kai)["alerts"][0]["crossings"] == 2
    assert len(events(platform, kai, "credits.low")) == 2


def test_an_alert_rearms_exactly_at_its_threshold(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    set_alerts(client, kai, {"credits": 50})
    spend = Spender(platform, kai)
    spend.hold(51)  # 49: fired
    spend.grant(1)  # exactly 50: "at or above" arms it
    assert get_alerts(client, kai)["alerts"][0]["armed"] is True
    spend.hold(1)
    assert [n["available"] for n in low_notices(platform, kai)] == [49, 49]


def test_a_grant_rearms_a_fired_alert(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    set_alerts(client, kai, {"credits": 50})
    spend = Spender(platform, kai)
    spend.hold(90)
    spend.grant(200)  # 210 available
    assert get_alerts(client, kai)["alerts"][0]["armed"] is True
    spend.hold(170)  # 40
    assert [n["available"] for n in low_notices(platform, kai)] == [10, 40]


def test_several_thresholds_crossed_at_once_each_fire_once(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    set_alerts(client, kai, {"credits": 20}, {"credits": 80}, {"credits": 50})
    spend = Spender(platform, kai)
    spend.hold(30)  # 70: only the 80 fires
    assert [n["threshold"] for n in low_notices(platform, kai)] == [80]
    spend.hold(60)  # 10: 50 and 20 at once, each its own notice
    assert sorted(n["threshold"] for n in low_notices(platform, kai)) == [20, 50, 80]
    spend.hold(5)
    assert len(low_notices(platform, kai)) == 3
    fired = sorted(e["data"]["threshold"] for e in events(platform, kai, "credits.low"))
    assert fired == [20, 50, 80]
    assert all(not a["armed"] for a in get_alerts(client, kai)["alerts"])


def test_an_alert_set_above_the_balance_starts_disarmed(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=30)
    (alert,) = set_alerts(client, kai, {"credits": 50})["alerts"]
    assert (alert["armed"], alert["fired_at"]) == (False, None)
    assert low_notices(platform, kai) == []  # saving never fires
    spend = Spender(platform, kai)
    spend.hold(5)  # 25: was already low, nothing said
    assert low_notices(platform, kai) == []
    spend.grant(40)  # 65: armed
    assert get_alerts(client, kai)["alerts"][0]["armed"] is True
    spend.hold(20)  # 45
    assert [n["available"] for n in low_notices(platform, kai)] == [45]


def test_saving_again_keeps_the_state_of_unchanged_alerts(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    before = set_alerts(client, kai, {"credits": 50}, {"credits": 90})
    Spender(platform, kai).hold(60)  # 40: both fired
    assert len(low_notices(platform, kai)) == 2
    # The page saved as it is, plus a new alert under the balance and one above.
    after = set_alerts(
        client, kai, {"credits": 50}, {"credits": 90}, {"credits": 10}, {"credits": 45}
    )
    by_credits = {a["credits"]: a for a in after["alerts"]}
    kept = {a["credits"]: a["id"] for a in before["alerts"]}
    assert by_credits[50]["id"] == kept[50]
    assert by_credits[90]["id"] == kept[90]
    assert (by_credits[50]["armed"], by_credits[50]["crossings"]) == (False, 1)
    assert by_credits[50]["fired_at"] is not None
    assert by_credits[10]["armed"] is True
    assert by_credits[45]["armed"] is False
    assert len(low_notices(platform, kai)) == 2  # nothing fired again
    # Removing one deletes it; the others stay as they were.
    final = set_alerts(client, kai, {"credits": 10})
    assert [a["credits"] for a in final["alerts"]] == [10]
    assert final["alerts"][0]["id"] == by_credits[10]["id"]
    assert watch_of(platform, kai) == (10, None)
    assert set_alerts(client, kai)["alerts"] == []
    assert watch_of(platform, kai) == (None, None)


# -- percents ------------------------------------------------------------------


def test_a_percent_is_of_the_plans_monthly_credits(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")  # 2,000 a month
    answer = set_alerts(client, kai, {"percent": 10}, {"percent": 1}, {"credits": 150})
    assert answer["monthly_credits"] == 2000
    assert [(a["percent"], a["threshold"], a["armed"]) for a in answer["alerts"]] == [
        (10, 200, True),
        (None, 150, True),
        (1, 20, True),
    ]
    spend = Spender(platform, kai)
    spend.hold(1801)  # 199
    notices = low_notices(platform, kai)
    assert [(n["threshold"], n["percent"]) for n in notices] == [(200, 10)]
    assert (
        "below the alert you set at 10% of your monthly credits (200 credits)"
        in (notices[0]["body"])
    )
    spend.hold(190)  # 9: the 150 and the 1% (20)
    assert sorted(n["threshold"] for n in low_notices(platform, kai)) == [20, 150, 200]


def test_a_percent_on_a_plan_without_monthly_credits_waits(
    platform: Platform, client: TestClient
) -> None:
    zed = make_user(platform, "zed@example.com", credits=500)  # Free: no monthly credits
    (alert,) = set_alerts(client, zed, {"percent": 50})["alerts"]
    assert (alert["threshold"], alert["armed"]) == (None, False)
    assert get_alerts(client, zed)["monthly_credits"] == 0
    assert watch_of(platform, zed) == (None, None)
    Spender(platform, zed).hold(499)
    assert low_notices(platform, zed) == []


def test_subscribing_resolves_a_waiting_percent(platform: Platform, client: TestClient) -> None:
    zed = make_user(platform, "zed@example.com", credits=100)
    set_alerts(client, zed, {"percent": 10})
    with platform.db.write() as conn:
        platform.billing.subscriptions.subscribe_paid(
            conn, user_id=zed.id, wallet_id=zed.wallet_id, plan_id="starter", backend="sandbox"
        )
    # 2,100 available; its next operation arms the 200.
    spend = Spender(platform, zed)
    spend.hold(100)
    (alert,) = get_alerts(client, zed)["alerts"]
    assert (alert["threshold"], alert["armed"]) == (200, True)
    spend.hold(1850)  # 150
    assert [n["threshold"] for n in low_notices(platform, zed)] == [200]


# -- what the owner is told ----------------------------------------------------


def test_the_alert_is_told_in_the_app_by_mail_and_to_webhooks(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    (alert,) = set_alerts(client, kai, {"credits": 50})["alerts"]
    Spender(platform, kai).hold(70)
    run_notifications(platform, "worker-1")
    with platform.db.read() as conn:
        shown = conn.execute(
            select(notifications.c.kind, notifications.c.title, notifications.c.body).where(
                notifications.c.user_id == kai.id
            )
        ).all()
    assert [(row.kind, row.title) for row in shown] == [
        ("credits.low", "Your balance fell below 50 credits")
    ]
    assert "30 credits available, below the alert you set at 50 credits" in shown[0].body
    mails = [m for m in platform.mail_folder.messages() if m.to == "kai@example.com"]
    assert [m.subject for m in mails] == ["Your balance fell below 50 credits"]
    (event,) = events(platform, kai, "credits.low")
    assert event["type"] == "credits.low"
    assert event["data"] == {
        "alert_id": alert["id"],
        "wallet_id": kai.wallet_id,
        "team_id": None,
        "available": 30,
        "threshold": 50,
        "credits": 50,
        "percent": None,
    }


def test_the_operators_notice_does_not_double_the_owners_alerts(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)  # has alerts of its own
    pat = make_user(platform, "pat@example.com", credits=100)  # has none
    set_alerts(client, kai, {"credits": 60})

    def operator_pass() -> int:
        with platform.db.write() as conn:
            return queue_low_balance_notices(
                conn, platform.outbox, now=platform.clock.now(), threshold=50
            )

    assert operator_pass() == 0  # both armed at 100
    kai_spend, pat_spend = Spender(platform, kai), Spender(platform, pat)
    kai_hold = kai_spend.hold(70)  # 30: below 60 and below the operator's 50
    pat_spend.hold(70)
    assert operator_pass() == 1  # pat only
    run_notifications(platform, "worker-1")
    with platform.db.read() as conn:
        kinds = {
            user.email: sorted(
                conn.execute(
                    select(notifications.c.kind).where(notifications.c.user_id == user.id)
                ).scalars()
            )
            for user in (kai, pat)
        }
        crossings = conn.execute(
            select(balance_alerts.c.crossings).where(balance_alerts.c.wallet_id == kai.wallet_id)
        ).scalar_one()
    assert kinds == {"kai@example.com": ["credits.low"], "pat@example.com": ["credits.low_balance"]}
    assert crossings == 1  # marked, silently
    # Removing the alerts does not bring the operator's notice late for that crossing…
    set_alerts(client, kai)
    assert operator_pass() == 0
    # …but the next crossing is the operator's again.
    kai_spend.release(kai_hold)
    assert operator_pass() == 0
    kai_spend.hold(70)
    assert operator_pass() == 1
    assert [n["available"] for n in low_notices(platform, kai)] == [30]


# -- settings: refusals, teams -------------------------------------------------


def test_refusals_name_the_field_and_write_nothing(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    set_alerts(client, kai, {"credits": 10})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"alerts": [{"credits": n} for n in range(1, 7)]}, "alerts"),
        ({"alerts": [{"credits": 5}, {"credits": 5}]}, "alerts.1.credits"),
        ({"alerts": [{"percent": 5}, {"credits": 9}, {"percent": 5}]}, "alerts.2.percent"),
        ({"alerts": [{"credits": -1}]}, "alerts.0.credits"),
        ({"alerts": [{"credits": 0}]}, "alerts.0.credits"),
        ({"alerts": [{"percent": 0}]}, "alerts.0.percent"),
        ({"alerts": [{"percent": 101}]}, "alerts.0.percent"),
        ({"alerts": [{"credits": 5, "percent": 5}]}, "alerts.0"),
        ({"alerts": [{}]}, "alerts.0"),
        ({"alerts": [{"credits": 10**12}]}, "alerts.0.credits"),
        ({"alerts": [], "expiry_notice_days": 31}, "expiry_notice_days"),
        ({"alerts": [], "expiry_notice_days": -1}, "expiry_notice_days"),
        ({"alerts": [{"credits": "5"}]}, "alerts.0.credits"),
        ({"alerts": [{"threshold": 5}]}, "alerts.0.threshold"),
    ]
    before = get_alerts(client, kai)
    for body, field in cases:
        answer = put_alerts(client, kai, body)
        assert answer.status_code == 422, body
        assert answer.headers["content-type"] == PROBLEM
        problem = answer.json()
        assert problem["code"] == "invalid_input"
        assert [e["field"] for e in problem["errors"]] == [field], body
    assert get_alerts(client, kai) == before
    # Five is allowed.
    assert len(set_alerts(client, kai, *({"credits": n} for n in range(1, 6)))["alerts"]) == 5


def test_a_teams_alerts_are_its_owners_to_set(platform: Platform, client: TestClient) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    member = make_user(platform, "member@example.com")
    outsider = make_user(platform, "outsider@example.com")
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, owner.id), "Crew")
        invitation = platform.teams.invite(conn, team.id, owner.id, member.email)
        platform.teams.accept_invitation(
            conn, invitation.token, platform.accounts.get(conn, member.id)
        )
    body = {"alerts": [{"percent": 25}]}
    answer = put_alerts(client, owner, body, team_id=team.id)
    assert answer.status_code == 200, answer.text
    saved = answer.json()
    assert (saved["wallet_id"], saved["team_id"]) == (owner.wallet_id, team.id)
    assert saved["alerts"][0]["threshold"] == 2750  # 25% of Studio's 11,000
    refused = put_alerts(client, member, body, team_id=team.id)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    read = client.get("/v1/balance-alerts", params={"team_id": team.id}, headers=member.auth)
    assert (read.status_code, read.json()["code"]) == (403, "forbidden")
    hidden = put_alerts(client, outsider, body, team_id=team.id)
    assert (hidden.status_code, hidden.json()["code"]) == (404, "not_found")
    # The member's own wallet is untouched, and the owner reads the team's alerts.
    assert get_alerts(client, member)["alerts"] == []
    shown = client.get("/v1/balance-alerts", params={"team_id": team.id}, headers=owner.auth)
    assert [a["id"] for a in shown.json()["alerts"]] == [saved["alerts"][0]["id"]]
    # The team's spending crosses it: the owner is told, naming the team.
    Spender(platform, owner).hold(9000)  # 11,000 - 9,000 = 2,000 < 2,750
    (event,) = events(platform, owner, "credits.low")
    assert (event["data"]["team_id"], event["data"]["percent"]) == (team.id, 25)
    assert events(platform, member, "credits.low") == []
    # The Credits page says whose alerts they are; the member's says nothing of it.
    owner_page = client.get("/credits", headers=owner.auth)
    assert owner_page.status_code == 200
    assert "Crew spends this wallet" in owner_page.text
    assert "25% of monthly credits" in owner_page.text
    member_page = client.get("/credits", headers=member.auth)
    assert member_page.status_code == 200
    assert "spends this wallet" not in member_page.text
    assert "data-alert-states" not in member_page.text  # no alerts of its own


# -- a race ----------------------------------------------------------------------

THREADS = 6


def test_concurrent_holds_crossing_one_threshold_fire_it_once(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    set_alerts(client, kai, {"credits": 80})
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def race(worker: int) -> None:
        try:
            start.wait(timeout=30)
            with platform.db.write() as conn:
                platform.ledger.hold(conn, kai.wallet_id, 10, idempotency_key=f"race:{worker}")
        except BaseException as exc:  # reported below
            failures.append(exc)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(race, range(THREADS)))
    assert failures == []
    # 100 - 60: every hold after the third was below 80; one crossing, one notice.
    assert [n["threshold"] for n in low_notices(platform, kai)] == [80]
    assert len(events(platform, kai, "credits.low")) == 1
    with platform.db.read() as conn:
        crossings = conn.execute(
            select(wallet_alerts.c.crossings).where(wallet_alerts.c.wallet_id == kai.wallet_id)
        ).scalar_one()
    assert crossings == 1


# -- the expiry notice -----------------------------------------------------------

FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


def test_the_expiry_notice_follows_the_wallets_days(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    # Three subscribers on Starter: 2,000 credits expiring at the period's end.
    clock.set(datetime(2026, 1, 1, tzinfo=UTC))
    default = make_user(platform, "default@example.com", plan="starter")
    early = make_user(platform, "early@example.com", plan="starter")
    never = make_user(platform, "never@example.com", plan="starter")
    answer = put_alerts(client, early, {"alerts": [], "expiry_notice_days": 10})
    assert answer.status_code == 200
    assert (answer.json()["expiry_notice_days"], answer.json()["expiry_notice_days_in_force"]) == (
        10,
        10,
    )
    off = put_alerts(client, never, {"alerts": [], "expiry_notice_days": 0}).json()
    assert (off["expiry_notice_days"], off["expiry_notice_days_in_force"]) == (0, 0)
    # Leaving the days out keeps them; null is the operator's default (3 days).
    kept = set_alerts(client, early, {"credits": 5})
    assert kept["expiry_notice_days"] == 10
    assert get_alerts(client, default)["expiry_notice_days"] is None
    assert get_alerts(client, default)["expiry_notice_days_in_force"] == 3

    def notice_pass() -> int:
        with platform.db.write() as conn:
            return queue_expiry_notices(
                conn,
                platform.outbox,
                now=platform.clock.now(),
                within=timedelta(days=3),
                webhook_events=platform.webhook_events,
            )

    clock.set(FEB_1 - timedelta(days=10))
    assert notice_pass() == 1  # early only
    assert notice_pass() == 0
    clock.set(FEB_1 - timedelta(days=3))
    assert notice_pass() == 1  # default now; never never
    assert notice_pass() == 0
    clock.set(FEB_1 - timedelta(hours=1))
    assert notice_pass() == 0
    for user, expected in ((early, 1), (default, 1), (never, 0)):
        found = events(platform, user, "credits.expiring")
        assert len(found) == expected, user.email
    (event,) = events(platform, early, "credits.expiring")
    assert event["data"]["credits"] == 2000
    assert event["data"]["wallet_id"] == early.wallet_id
    assert event["data"]["expires_at"] == FEB_1.isoformat()
    assert event["data"]["lot_id"].startswith("lot")
    # The worker's pass emits the event the same way, once per lot.
    run_notifications(platform, "worker-1")
    assert len(events(platform, default, "credits.expiring")) == 1
    # Back to the default.
    reset = put_alerts(client, early, {"alerts": [], "expiry_notice_days": None}).json()
    assert (reset["expiry_notice_days"], reset["expiry_notice_days_in_force"]) == (None, 3)

"""The Billing endpoints over HTTP on the sandbox backend: the subscription's
lifecycle, refusals, credit purchases, payments, and the admin controls (the
test clock, declining cards)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from plasmaart.clock import ManualClock
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.statements import StatementCounter

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
PROBLEM = "application/problem+json"


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def books_balance(platform: Platform) -> None:
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


def available(client: TestClient, user: TestUser) -> int:
    found: int = client.get("/v1/balance", headers=user.auth).json()["available"]
    return found


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert (response.status_code, response.headers["content-type"]) == (status, PROBLEM), (
        response.text
    )
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


def models_available(client: TestClient, user: TestUser) -> set[str]:
    models = client.get("/v1/models?limit=200", headers=user.auth).json()["data"]
    return {model["id"] for model in models if model["available"]}


def test_subscription_lifecycle(platform: Platform, client: TestClient, clock: ManualClock) -> None:
    kai = make_user(platform, "kai@example.com")
    admin = make_user(platform, "root@example.com", admin=True)
    none = client.get("/v1/subscription", headers=kai.auth).json()
    assert (none["plan"], none["status"], none["current_period_end"]) == ("free", "none", None)
    assert "wan-pro" not in models_available(client, kai)
    created = client.post("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["plan"], body["status"], at(body["current_period_end"])) == (
        "starter",
        "active",
        FEB_1,
    )
    assert available(client, kai) == 2000
    assert "wan-pro" in models_available(client, kai)  # Starter has medium video
    twice = client.post("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    refused(twice, 409, "already_subscribed")
    # Upgrade on Jan 16: the differences in credits and in price, both
    # prorated by the 16 of January's 31 days left: 3000 * 16 / 31 = 1548.39.
    clock.set(JAN_1 + timedelta(days=15))
    upgraded = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    assert upgraded.status_code == 200, upgraded.text
    assert (upgraded.json()["plan"], upgraded.json()["pending_plan"]) == ("pro", None)
    assert available(client, kai) == 2000 + 1548
    assert "veo3" in models_available(client, kai)
    # Downgrade: at the period end. Then cancel instead: Free at the period end.
    later = client.patch("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert (later.json()["plan"], later.json()["pending_plan"]) == ("pro", "starter")
    canceled = client.delete("/v1/subscription", headers=kai.auth)
    assert canceled.status_code == 200, canceled.text
    assert (canceled.json()["cancel_at_period_end"], canceled.json()["pending_plan"]) == (
        True,
        None,
    )
    moved = client.post("/v1/admin/clock/advance", json={"days": 16}, headers=admin.auth)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["canceled"], moved.json()["expired_credits"]) == (1, 3548)
    assert at(moved.json()["now"]) == FEB_1
    ended = client.get("/v1/subscription", headers=kai.auth).json()
    assert (ended["status"], ended["cancel_at_period_end"]) == ("canceled", False)
    me = client.get("/v1/me", headers=kai.auth).json()
    assert (me["plan"], me["balance"]["available"]) == ("free", 0)
    assert not models_available(client, kai) & {"wan-pro", "veo3"}
    books_balance(platform)
    # What was paid, newest first, a page at a time.
    first = client.get("/v1/payments?limit=1", headers=kai.auth).json()
    rest = client.get(
        f"/v1/payments?limit=5&cursor={first['next_cursor']}", headers=kai.auth
    ).json()
    assert rest["next_cursor"] is None
    listed = first["data"] + rest["data"]
    assert [(p["kind"], p["amount_cents"], p["credits"], p["currency"]) for p in listed] == [
        ("upgrade", 1548, 1548, "usd"),
        ("subscription", 1900, 2000, "usd"),
    ]
    assert listed[0]["description"] == "upgrade to Pro, prorated, 2026-01-16 to 2026-02-01"
    assert listed[1]["description"] == "Starter plan, 2026-01-01 to 2026-02-01"
    assert client.get("/v1/payments", headers=admin.auth).json() == {
        "data": [],
        "next_cursor": None,
    }


def test_refusals_write_nothing(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com")
    for plan, message in (("gold", "unknown plan"), ("free", "needs no subscription")):
        body = refused(
            client.post("/v1/subscription", json={"plan": plan}, headers=kai.auth),
            422,
            "invalid_input",
        )
        assert body["errors"][0]["field"] == "plan"
        assert message in body["detail"]
    extra = client.post("/v1/subscription", json={"plan": "pro", "x": 1}, headers=kai.auth)
    refused(extra, 422, "invalid_input")
    refused(
        client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth), 404, "not_found"
    )
    refused(client.delete("/v1/subscription", headers=kai.auth), 404, "not_found")
    refused(client.post("/v1/subscription/pay", headers=kai.auth), 404, "not_found")
    pack = client.post("/v1/credit-purchases", json={"pack": "pack-7"}, headers=kai.auth)
    assert refused(pack, 422, "invalid_input")["errors"][0]["field"] == "pack"
    assert client.get("/v1/payments", headers=kai.auth).json()["data"] == []
    assert available(client, kai) == 0
    # Subscribed: the same plan, Free, and paying what is paid are refused too.
    assert (
        client.post("/v1/subscription", json={"plan": "pro"}, headers=kai.auth).status_code == 201
    )
    same = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    assert "already on Pro" in refused(same, 422, "invalid_input")["detail"]
    to_free = client.patch("/v1/subscription", json={"plan": "free"}, headers=kai.auth)
    assert "cancel" in refused(to_free, 422, "invalid_input")["detail"]
    refused(client.post("/v1/subscription/pay", headers=kai.auth), 409, "nothing_to_pay")
    assert len(client.get("/v1/payments", headers=kai.auth).json()["data"]) == 1
    assert available(client, kai) == 5000
    refused(client.get("/v1/subscription"), 401, "unauthenticated")


def test_credit_packs(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    key = {"Idempotency-Key": "pack-once"}
    bought = client.post(
        "/v1/credit-purchases", json={"pack": "pack-3000"}, headers={**kai.auth, **key}
    )
    assert bought.status_code == 201, bought.text
    assert (bought.json()["credits"], bought.json()["balance"], bought.json()["expires_at"]) == (
        3000,
        5000,
        None,
    )
    again = client.post(
        "/v1/credit-purchases", json={"pack": "pack-3000"}, headers={**kai.auth, **key}
    )
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == bought.json()
    assert available(client, kai) == 5000
    lots = client.get("/v1/balance", headers=kai.auth).json()["lots"]
    assert {(lot["source"], lot["granted"], lot["expires_at"]) for lot in lots} == {
        ("subscription", 2000, "2026-02-01T00:00:00Z"),
        ("purchase", 3000, None),
    }
    kinds = [p["kind"] for p in client.get("/v1/payments", headers=kai.auth).json()["data"]]
    assert kinds == ["pack", "subscription"]
    books_balance(platform)


def test_declined_renewal_past_due_then_paid(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    admin = make_user(platform, "root@example.com", admin=True)
    card = f"/v1/admin/users/{kai.id}/billing/sandbox-card"
    declining = client.post(card, json={"declines": True}, headers=admin.auth)
    assert declining.json() == {"user_id": kai.id, "declines": True, "requires_action": False}
    moved = client.post("/v1/admin/clock/advance", json={"days": 31}, headers=admin.auth)
    assert (moved.json()["payment_failed"], moved.json()["renewed"]) == (1, 0)
    due = client.get("/v1/subscription", headers=kai.auth).json()
    assert (due["status"], at(due["grace_ends_at"])) == ("past_due", FEB_1 + timedelta(days=7))
    assert available(client, kai) == 0
    refused(client.post("/v1/subscription/pay", headers=kai.auth), 402, "payment_failed")
    refused(
        client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth),
        409,
        "subscription_past_due",
    )
    bought = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=kai.auth)
    refused(bought, 402, "payment_failed")
    # Declined at the checkout: no subscription, no credits, no payment.
    lee = make_user(platform, "lee@example.com")
    client.post(
        f"/v1/admin/users/{lee.id}/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    refused(
        client.post("/v1/subscription", json={"plan": "starter"}, headers=lee.auth),
        402,
        "payment_failed",
    )
    assert client.get("/v1/subscription", headers=lee.auth).json()["status"] == "none"
    assert client.get("/v1/payments", headers=lee.auth).json()["data"] == []
    client.post(card, json={"declines": False}, headers=admin.auth)
    paid = client.post("/v1/subscription/pay", headers=kai.auth)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["grace_ends_at"]) == ("active", None)
    assert available(client, kai) == 2000
    statuses = [
        (p["kind"], p["status"])
        for p in client.get("/v1/payments", headers=kai.auth).json()["data"]
    ]
    assert statuses == [
        ("renewal", "succeeded"),
        ("renewal", "failed"),
        ("subscription", "succeeded"),
    ]
    books_balance(platform)


def test_grace_ends_in_free_on_the_test_clock(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", plan="pro")
    admin = make_user(platform, "root@example.com", admin=True)
    client.post(
        f"/v1/admin/users/{kai.id}/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    client.post("/v1/admin/clock/advance", json={"days": 31}, headers=admin.auth)
    assert client.get("/v1/me", headers=kai.auth).json()["plan"] == "pro"  # in grace
    moved = client.post("/v1/admin/clock/advance", json={"days": 7}, headers=admin.auth)
    assert (moved.json()["grace_ended"], moved.json()["offset_days"]) == (1, 38)
    assert client.get("/v1/me", headers=kai.auth).json()["plan"] == "free"
    assert "veo3" not in models_available(client, kai)


def test_admin_clock_is_sandbox_and_admin_only(
    platform: Platform, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kai = make_user(platform, "kai@example.com")
    admin = make_user(platform, "root@example.com", admin=True)
    refused(
        client.post("/v1/admin/clock/advance", json={"days": 1}, headers=kai.auth), 404, "not_found"
    )
    for days in (0, -1, 10_000):
        bad = client.post("/v1/admin/clock/advance", json={"days": days}, headers=admin.auth)
        refused(bad, 422, "invalid_input")
    unknown = client.post(
        "/v1/admin/users/usr_nobody/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    refused(unknown, 404, "not_found")
    assert platform.clock.now() == JAN_1
    # Billing that is not the sandbox has no test clock and no sandbox cards.
    monkeypatch.setattr(platform.billing, "test_clock", None)
    monkeypatch.setattr(platform.billing.backends, "default", object())
    refused(
        client.post("/v1/admin/clock/advance", json={"days": 1}, headers=admin.auth),
        404,
        "not_found",
    )
    card = client.post(
        f"/v1/admin/users/{kai.id}/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    refused(card, 404, "not_found")
    assert platform.clock.now() == JAN_1


def test_a_late_upgrade_buys_credits_at_the_plan_price(
    platform: Platform, client: TestClient
) -> None:
    """Issue 13, item 1: Starter, 30 days on the test clock, Studio, back to
    Starter, 2 more days. The upgrade used to charge $2.58 for Studio's last
    day and grant all 9,000 extra credits; credits and price are now both
    prorated by the same fraction (1 day of January's 31)."""
    kai = make_user(platform, "kai@example.com")
    admin = make_user(platform, "root@example.com", admin=True)
    subscribed = client.post("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert subscribed.status_code == 201, subscribed.text
    moved = client.post("/v1/admin/clock/advance", json={"days": 30}, headers=admin.auth)
    assert at(moved.json()["now"]) == FEB_1 - timedelta(days=1)
    upgraded = client.patch("/v1/subscription", json={"plan": "studio"}, headers=kai.auth)
    assert (upgraded.status_code, upgraded.json()["plan"]) == (200, "studio"), upgraded.text
    # 9,000 * 1/31 = 290.3 credits and $80 * 1/31 = $2.58, rounded alike.
    assert available(client, kai) == 2000 + 290
    back = client.patch("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert (back.json()["plan"], back.json()["pending_plan"]) == ("studio", "starter")
    moved = client.post("/v1/admin/clock/advance", json={"days": 2}, headers=admin.auth)
    assert moved.json()["downgraded"] == 1
    assert available(client, kai) == 2000
    listed = client.get("/v1/payments", headers=kai.auth).json()["data"]
    assert [(p["kind"], p["plan"], p["amount_cents"], p["credits"]) for p in listed] == [
        ("renewal", "starter", 1900, 2000),
        ("upgrade", "studio", 258, 290),
        ("subscription", "starter", 1900, 2000),
    ]
    lots = client.get("/v1/balance", headers=kai.auth).json()["lots"]
    assert [(lot["source"], lot["remaining"]) for lot in lots] == [("subscription", 2000)]
    books_balance(platform)


def preview(client: TestClient, user: TestUser, plan: str) -> dict[str, Any]:
    response = client.post("/v1/subscription/preview", json={"plan": plan}, headers=user.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_preview_shows_what_the_change_then_does(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    kai = make_user(platform, "kai@example.com")
    first = preview(client, kai, "starter")
    assert first == {
        "plan": "starter",
        "change": "subscribe",
        "amount_cents": 1900,
        "currency": "usd",
        "credits_now": 2000,
        "takes_effect": "now",
        "renews_at": "2026-02-01T00:00:00Z",
        "renews_amount_cents": 1900,
        "prorated_at": None,
    }
    assert client.get("/v1/payments", headers=kai.auth).json()["data"] == []  # nothing charged
    client.post("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    # Jan 20, 10:17:33.5: 999,747 of January's 2,678,400 seconds are left
    # from the whole second: $80 * that = 2986.1 cents, 9000 * that = 3359.4.
    clock.set(datetime(2026, 1, 20, 10, 17, 33, 500_000, tzinfo=UTC))
    shown = preview(client, kai, "studio")
    assert shown == {
        "plan": "studio",
        "change": "upgrade",
        "amount_cents": 2986,
        "currency": "usd",
        "credits_now": 3359,
        "takes_effect": "now",
        "renews_at": "2026-02-01T00:00:00Z",
        "renews_amount_cents": 9900,
        "prorated_at": "2026-01-20T10:17:33Z",
    }
    # The customer reads it for ten minutes (by now it would be 2984 and
    # 3357), then confirms: the change applies what was shown.
    clock.advance(timedelta(minutes=10))
    before = available(client, kai)
    changed = client.patch(
        "/v1/subscription",
        json={"plan": "studio", "prorate_at": shown["prorated_at"]},
        headers=kai.auth,
    )
    assert changed.status_code == 200, changed.text
    upgrade = client.get("/v1/payments", headers=kai.auth).json()["data"][0]
    assert (upgrade["kind"], upgrade["amount_cents"], upgrade["credits"]) == (
        "upgrade",
        shown["amount_cents"],
        shown["credits_now"],
    )
    assert at(upgrade["period_start"]) == at(shown["prorated_at"])
    assert available(client, kai) - before == shown["credits_now"]
    # A downgrade: nothing now, the cheaper plan from the renewal on; then
    # back to the plan one is on: nothing now either.
    down = preview(client, kai, "starter")
    assert (down["change"], down["amount_cents"], down["credits_now"]) == ("downgrade", 0, 0)
    assert (down["takes_effect"], down["renews_amount_cents"]) == ("period_end", 1900)
    client.patch("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    resume = preview(client, kai, "studio")
    assert (resume["change"], resume["amount_cents"], resume["credits_now"]) == ("resume", 0, 0)
    assert resume["renews_amount_cents"] == 9900
    books_balance(platform)


def test_a_preview_moment_is_honoured_only_while_fresh(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    stale = preview(client, kai, "pro")["prorated_at"]
    clock.advance(timedelta(minutes=16))
    ahead = (clock.now() + timedelta(minutes=1)).isoformat()
    for moment in (stale, ahead, "2026-01-10T00:20:00"):  # old, future, no zone
        refusal = refused(
            client.patch(
                "/v1/subscription", json={"plan": "pro", "prorate_at": moment}, headers=kai.auth
            ),
            422,
            "invalid_input",
        )
        assert refusal["errors"][0]["field"] == "prorate_at"
    assert client.get("/v1/subscription", headers=kai.auth).json()["plan"] == "starter"
    assert len(client.get("/v1/payments", headers=kai.auth).json()["data"]) == 1
    # A moment before the period's last upgrade would prorate the next one
    # over time already upgraded: refused.
    quote = preview(client, kai, "studio")["prorated_at"]
    clock.advance(timedelta(minutes=2))
    client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    clock.advance(timedelta(minutes=2))
    late = client.patch(
        "/v1/subscription", json={"plan": "studio", "prorate_at": quote}, headers=kai.auth
    )
    assert refused(late, 422, "invalid_input")["errors"][0]["field"] == "prorate_at"
    fresh = preview(client, kai, "studio")["prorated_at"]
    # The same moment written in another time zone is the same moment.
    local = at(fresh).astimezone(timezone(timedelta(hours=2))).isoformat()
    done = client.patch(
        "/v1/subscription", json={"plan": "studio", "prorate_at": local}, headers=kai.auth
    )
    assert done.status_code == 200, done.text
    studio = client.get("/v1/payments", headers=kai.auth).json()["data"][0]
    assert (studio["plan"], studio["period_start"]) == ("studio", fresh)
    # Past due: previews are refused like the change.
    admin = make_user(platform, "root@example.com", admin=True)
    client.post(
        f"/v1/admin/users/{kai.id}/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    client.post("/v1/admin/clock/advance", json={"days": 22}, headers=admin.auth)
    due = client.post("/v1/subscription/preview", json={"plan": "pro"}, headers=kai.auth)
    refused(due, 409, "subscription_past_due")
    unknown = client.post("/v1/subscription/preview", json={"plan": "gold"}, headers=kai.auth)
    refused(unknown, 422, "invalid_input")
    books_balance(platform)


def test_the_admin_user_list_shows_the_plan_each_user_has(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    """``/v1/admin/users`` gives every user the plan ``/v1/me`` gives them
    (billing's one rule, ``PlanService.plans_of``): in the grace period of an
    unpaid renewal, the plan; after it, or after the period end of a
    cancellation, Free, even before the billing clock has run; one batch
    of reads for the whole page, however many users it lists."""
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com", plan="pro")
    eve = make_user(platform, "eve@example.com", plan="starter")
    others = [make_user(platform, f"user{i}@example.com", plan="starter") for i in range(5)]
    client.post(
        f"/v1/admin/users/{eve.id}/billing/sandbox-card",
        json={"declines": True},
        headers=admin.auth,
    )
    moved = client.post("/v1/admin/clock/advance", json={"days": 31}, headers=admin.auth)
    assert (moved.json()["payment_failed"], moved.json()["renewed"]) == (1, 6)
    assert client.delete("/v1/subscription", headers=kai.auth).status_code == 200

    def plans() -> tuple[dict[str, str], dict[str, str]]:
        listed = client.get("/v1/admin/users?limit=100", headers=admin.auth)
        assert listed.status_code == 200, listed.text
        by_admin = {user["id"]: user["plan"] for user in listed.json()["data"]}
        by_me = {
            user.id: client.get("/v1/me", headers=user.auth).json()["plan"]
            for user in (admin, kai, eve, *others)
        }
        return by_admin, by_me

    # Feb 2 (the test clock is 31 days ahead): Eve in her grace period.
    clock.set(JAN_1 + timedelta(days=1))
    by_admin, by_me = plans()
    assert by_admin == by_me
    assert (by_me[kai.id], by_me[eve.id], by_me[admin.id]) == ("pro", "starter", "free")
    # Mar 2, the billing clock not run since Feb 1: Eve's grace ended on
    # Feb 8, Kai's canceled period on Mar 1: both on Free everywhere.
    clock.set(JAN_1 + timedelta(days=29))
    by_admin, by_me = plans()
    assert by_admin == by_me
    assert (by_me[kai.id], by_me[eve.id]) == ("free", "free")
    assert {by_me[user.id] for user in others} == {"starter"}
    # The dashboard's admin page lists them by the same service method.
    page = client.get("/admin", headers=admin.auth)
    assert page.status_code == 200, page.text
    shown = dict(
        re.findall(
            r'<tr data-user-id="([^"]+)">.*?<td data-label="Plan">(\w+)</td>', page.text, re.S
        )
    )
    assert shown == {user_id: plan.capitalize() for user_id, plan in by_me.items()}
    with StatementCounter(platform.db.engine) as counts:
        listed = client.get("/v1/admin/users?limit=100", headers=admin.auth)
    assert len(listed.json()["data"]) == 3 + 5
    # Plans read in one batch: not one query per user listed.
    assert counts.statements < 5, counts.listing()


def test_a_clock_advance_sent_again_with_its_key_is_replayed_not_run_twice(
    platform: Platform, client: TestClient
) -> None:
    """Idempotency keys age in real time, not on the test clock they move:
    the advance's own three days must not expire its key (a client that lost
    the answer and sent it again moved the clock six days)."""
    admin = make_user(platform, "root@example.com", admin=True)
    headers = {**admin.auth, "Idempotency-Key": "advance-once"}
    first = client.post("/v1/admin/clock/advance", json={"days": 3}, headers=headers)
    again = client.post("/v1/admin/clock/advance", json={"days": 3}, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200), again.text
    assert again.json() == first.json()
    assert at(first.json()["now"]) == JAN_1 + timedelta(days=3)
    assert platform.clock.now() == JAN_1 + timedelta(days=3)

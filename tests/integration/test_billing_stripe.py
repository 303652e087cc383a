"""The Stripe backend against a local fake of Stripe's API, driven by events
signed as Stripe signs them: the year story of the sandbox tests (subscribe,
upgrade, downgrade, a failed payment, cancel, packs across renewals) with
every balance checked against the policy, duplicate and out-of-order
deliveries; signatures refused; unknown customers; refunds and disputes;
changes made in the customer portal; the configuration."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Connection, func, select

from plasmaart.billing import create_backends
from plasmaart.billing.clawbacks import ClawbackOutcome
from plasmaart.billing.repository import Subscription
from plasmaart.billing.stripe import StripeBackend
from plasmaart.clock import ManualClock
from plasmaart.config import ConfigError, Settings
from plasmaart.db.tables import audit_log, stripe_events
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.web.api.stripe_billing import _receive
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.fake_stripe import SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from tests.support.matrix import changes, snapshot
from tests.support.platforms import api_client, running_platform, settings_for

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
WEBHOOK = "/v1/webhooks/stripe"


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeStripe]:
    with FakeStripe(clock) as server:
        yield server


def stripe_settings(database_url: str, tmp_path: Path, fake: FakeStripe) -> Settings:
    return settings_for(database_url, tmp_path / "var", **fake.platform_settings())


@pytest.fixture
def platform(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeStripe
) -> Iterator[Platform]:
    """Under Stripe billing (conftest's ``client`` serves this platform)."""
    with running_platform(stripe_settings(database_url, tmp_path, fake), clock) as built:
        yield built


def deliver(client: TestClient, fake: FakeStripe, event: dict[str, Any]) -> Response:
    payload, headers = fake.signed(event)
    fake.delivered.add(event["id"])
    return client.post(WEBHOOK, content=payload, headers=headers)


def outcome(client: TestClient, fake: FakeStripe, event: dict[str, Any]) -> str:
    response = deliver(client, fake, event)
    assert response.status_code == 200, response.text
    return str(response.json()["outcome"])


def of_type(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(event for event in events if event["type"] == kind)


def state(platform: Platform, who: TestUser) -> tuple[int, str, Subscription | None]:
    """Available credits, the plan in force, the subscription; and the books balance."""
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        available = platform.ledger.balance(conn, who.wallet_id).available
        plan = platform.billing.plans.plan_of(conn, who.wallet_id).id
        return available, plan, platform.billing.plans.subscription(conn, who.wallet_id)


def paid(platform: Platform, who: TestUser) -> list[tuple[str, str, int, int]]:
    """(kind, status, amount, credits) of the user's payments, oldest first."""
    with platform.db.read() as conn:
        found = platform.billing.payments.history(conn, who.id, limit=200)
    return [(p.kind, p.status, p.amount_cents, p.credits) for p in reversed(found)]


def spend(platform: Platform, who: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        hold = platform.ledger.hold(conn, who.wallet_id, credits, idempotency_key=f"{key}:hold")
        platform.ledger.capture(conn, hold.hold_id, credits, idempotency_key=f"{key}:capture")


def checkout(
    client: TestClient,
    fake: FakeStripe,
    path: str,
    body: dict[str, str],
    who: TestUser,
    **headers: str,
) -> str:
    """Start a checkout through the API; the fake's session id."""
    response = client.post(path, json=body, headers={**who.auth, **headers})
    assert response.status_code == 200, response.text
    url = response.json()["checkout_url"]
    assert url.startswith(fake.url + "/checkout/")
    return str(url.rsplit("/", 1)[1])


def subscribe(client: TestClient, fake: FakeStripe, who: TestUser, plan: str) -> tuple[str, str]:
    """Subscribe and pay on Checkout, the events delivered in Stripe's order;
    (the Stripe subscription id, the checkout session id)."""
    session = checkout(client, fake, "/v1/subscription", {"plan": plan}, who)
    for event in fake.pay_checkout(session):
        deliver(client, fake, event)
    return fake.subscription_of(session), session


def tick(platform: Platform) -> None:
    Worker(platform).run_once()


def count(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- the year story ------------------------------------------------------------


def test_a_year_on_stripe(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    # Jan 1: subscribe to Starter: a Checkout session, nothing granted yet.
    session = checkout(client, fake, "/v1/subscription", {"plan": "starter"}, kai)
    created = fake.calls_to("POST", "/v1/checkout/sessions")[-1]
    line = created.params["line_items"][0]["price_data"]
    assert created.params["mode"] == "subscription"
    assert (line["unit_amount"], line["product"], line["recurring"]["interval"]) == (
        "1900",
        "plasmaart_plan_starter",
        "month",
    )
    assert created.params["client_reference_id"] == kai.id
    assert created.params["subscription_data"]["metadata"]["plasmaart_user"] == kai.id
    assert created.idempotency_key is not None
    assert state(platform, kai)[:2] == (0, "free")
    # Paid: the first invoice.paid arrives before checkout.session.completed,
    # and again. Whichever is first starts the subscription; once.
    events = fake.pay_checkout(session)
    first_invoice = of_type(events, "invoice.paid")
    assert outcome(client, fake, first_invoice) == "applied"
    assert outcome(client, fake, of_type(events, "checkout.session.completed")) == "ignored"
    assert outcome(client, fake, first_invoice) == "duplicate"
    assert outcome(client, fake, of_type(events, "customer.subscription.created")) == "ignored"
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (2000, "starter")
    assert sub is not None
    stripe_sub = fake.subscription_of(session)
    assert (sub.backend, sub.external_id, sub.status) == ("stripe", stripe_sub, "active")
    assert (sub.current_period_start, sub.current_period_end) == (
        JAN_1,
        datetime(2026, 2, 1, tzinfo=UTC),
    )
    # A pack (its completion delivered twice); then 1,500 credits spent.
    pack = checkout(
        client,
        fake,
        "/v1/credit-purchases",
        {"pack": "pack-1000"},
        kai,
        **{"Idempotency-Key": "p1"},
    )
    pack_events = fake.pay_checkout(pack)
    assert outcome(client, fake, pack_events[0]) == "applied"
    assert outcome(client, fake, pack_events[0]) == "duplicate"
    assert state(platform, kai)[0] == 3000
    spend(platform, kai, 1500, "january")
    # Jan 16: upgrade to Pro at once: Stripe invoices the proration from the
    # moment we name (proration_date) now; the difference in monthly credits
    # is prorated from the same moment, rounded alike: 16 of January's 31
    # days, 3000 * 16 / 31 = 1548.39. Stripe's echoes change nothing.
    clock.set(datetime(2026, 1, 16, tzinfo=UTC))
    response = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    assert response.status_code == 200, response.text
    update = fake.calls_to("POST", f"/v1/subscriptions/{stripe_sub}")[-1]
    assert update.params["proration_behavior"] == "always_invoice"
    assert update.params["proration_date"] == str(int(clock.now().timestamp()))
    assert update.params["items"][0]["price_data"]["unit_amount"] == "4900"
    assert update.idempotency_key is not None
    assert fake.latest_invoice(stripe_sub)["amount_paid"] == 1548
    assert state(platform, kai)[:2] == (1500 + 1548, "pro")
    echo = fake.event("customer.subscription.updated", fake.subscriptions[stripe_sub])
    assert outcome(client, fake, echo) == "ignored"
    proration = fake.event("invoice.paid", fake.latest_invoice(stripe_sub))
    assert outcome(client, fake, proration) == "ignored"
    assert state(platform, kai)[:2] == (1500 + 1548, "pro")
    # Feb 1: Stripe renews. The unused monthly credits expire, 5,000 new ones.
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))
    renewal = fake.renew(stripe_sub)
    for event in renewal:
        outcome(client, fake, event)
    assert outcome(client, fake, renewal[1]) == "duplicate"
    tick(platform)
    assert state(platform, kai)[:2] == (6000, "pro")
    # Feb 10: downgrade to Starter at the period end; Stripe bills Starter next.
    clock.set(datetime(2026, 2, 10, tzinfo=UTC))
    response = client.patch("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert response.json()["pending_plan"] == "starter"
    assert (
        fake.calls_to("POST", f"/v1/subscriptions/{stripe_sub}")[-1].params["proration_behavior"]
        == "none"
    )
    assert (
        outcome(
            client,
            fake,
            fake.event("customer.subscription.updated", fake.subscriptions[stripe_sub]),
        )
        == "ignored"
    )
    assert state(platform, kai)[:2] == (6000, "pro")
    # Mar 1: renewed on Starter.
    clock.set(datetime(2026, 3, 1, tzinfo=UTC))
    for event in fake.renew(stripe_sub):
        outcome(client, fake, event)
    tick(platform)
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (3000, "starter")
    assert sub is not None
    assert sub.pending_plan is None
    # Mar 15: another pack, on any plan.
    clock.set(datetime(2026, 3, 15, tzinfo=UTC))
    pack = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-3000"}, kai)
    for event in fake.pay_checkout(pack):
        outcome(client, fake, event)
    assert state(platform, kai)[0] == 6000
    # Apr 1: the card declines: past due, no new allocation (the packs stay).
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    customer_id = fake.sessions[session]["customer"]
    fake.declining.add(customer_id)
    failed = fake.renew(stripe_sub)
    assert [event["type"] for event in failed][-1] == "invoice.payment_failed"
    for event in reversed(failed):  # the failure before the subscription's update
        outcome(client, fake, event)
    tick(platform)
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (4000, "starter")
    assert sub is not None
    assert sub.status == "past_due"
    # Paying while the card still declines: 402, nothing changes.
    response = client.post("/v1/subscription/pay", headers=kai.auth)
    assert (response.status_code, response.json()["code"]) == (402, "payment_failed")
    # Apr 3: a new card; paying the open invoice restores the subscription.
    clock.set(datetime(2026, 4, 3, tzinfo=UTC))
    fake.declining.discard(customer_id)
    response = client.post("/v1/subscription/pay", headers=kai.auth)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "active"
    assert state(platform, kai)[:2] == (6000, "starter")
    # ...and Stripe's invoice.paid for it, arriving after, changes nothing.
    late = fake.event("invoice.paid", fake.latest_invoice(stripe_sub))
    assert outcome(client, fake, late) == "ignored"
    assert state(platform, kai)[0] == 6000
    # May 1 and Jun 1: June's invoice.paid arrives before May's: it catches
    # up on May first; May's, when it comes, is old news.
    clock.set(datetime(2026, 5, 1, tzinfo=UTC))
    may = fake.renew(stripe_sub)
    clock.set(datetime(2026, 6, 1, tzinfo=UTC))
    june = fake.renew(stripe_sub)
    assert outcome(client, fake, of_type(june, "invoice.paid")) == "applied"
    assert outcome(client, fake, of_type(may, "invoice.paid")) == "ignored"
    tick(platform)
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (6000, "starter")
    assert sub is not None
    assert sub.current_period_end == datetime(2026, 7, 1, tzinfo=UTC)
    # Jun 10: cancel at the period end. A stale update (from June 1, not
    # canceling) arriving later does not undo it: the state is fetched.
    clock.set(datetime(2026, 6, 10, tzinfo=UTC))
    response = client.delete("/v1/subscription", headers=kai.auth)
    assert response.json()["cancel_at_period_end"] is True
    assert fake.subscriptions[stripe_sub]["cancel_at_period_end"] is True
    assert outcome(client, fake, of_type(may, "customer.subscription.updated")) == "ignored"
    assert outcome(client, fake, of_type(june, "customer.subscription.updated")) == "ignored"
    sub = state(platform, kai)[2]
    assert sub is not None
    assert sub.cancel_at_period_end
    # Jul 1: Stripe ends it: Free; the month's credits expire, the packs stay.
    clock.set(datetime(2026, 7, 1, tzinfo=UTC))
    for event in fake.end(stripe_sub):
        assert outcome(client, fake, event) == "applied"
    tick(platform)
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (4000, "free")
    assert sub is not None
    assert sub.status == "canceled"
    assert paid(platform, kai) == [
        ("subscription", "succeeded", 1900, 2000),
        ("pack", "succeeded", 1200, 1000),
        ("upgrade", "succeeded", 1548, 1548),  # 16 of January's 31 days of Pro's extra
        ("renewal", "succeeded", 4900, 5000),
        ("renewal", "succeeded", 1900, 2000),
        ("pack", "succeeded", 3300, 3000),
        ("renewal", "failed", 1900, 0),
        ("renewal", "succeeded", 1900, 2000),
        ("renewal", "succeeded", 1900, 2000),
        ("renewal", "succeeded", 1900, 2000),
    ]
    # Every event delivered is recorded, once, whatever it did.
    with platform.db.read() as conn:
        recorded = conn.execute(select(stripe_events.c.outcome)).scalars().all()
    assert len(recorded) == len(fake.delivered)
    assert set(recorded) == {"applied", "ignored"}


# -- signatures ------------------------------------------------------------------


def test_bad_stale_forged_and_missing_signatures_are_refused(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    session = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
    event = fake.pay_checkout(session)[0]
    payload, headers = fake.signed(event)
    now = int(clock.now().timestamp())
    forged = fake.signed(event, secret="whsec_someone_else")[1]
    stale = fake.signed(event, timestamp=now - 301)[1]
    early = fake.signed(event, timestamp=now + 301)[1]
    tampered = payload.replace(b"pack-1000", b"pack-10000")
    attempts: list[tuple[bytes, dict[str, str]]] = [
        (payload, {}),  # no Stripe-Signature at all
        (payload, {"Stripe-Signature": "garbage"}),
        (payload, {"Stripe-Signature": f"t={now}"}),  # no v1 signature
        (payload, {"Stripe-Signature": f"t={now},v0=" + "0" * 64}),
        (payload, forged),
        (payload, stale),
        (payload, early),
        (tampered, headers),  # the signature of another body
    ]
    before = snapshot(platform)
    for body, sent in attempts:
        response = client.post(WEBHOOK, content=body, headers=sent)
        assert response.status_code == 400, (sent, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "invalid_signature"
    assert changes(before, snapshot(platform)) == []
    assert state(platform, kai)[0] == 0
    # Within the five minutes (by the platform's clock), the real one is applied.
    assert outcome(client, fake, event) == "applied"
    clock.advance(timedelta(seconds=299))
    response = client.post(WEBHOOK, content=payload, headers=headers)
    assert response.json()["outcome"] == "duplicate"
    assert state(platform, kai)[0] == 1000


def test_a_signed_payload_that_is_no_event_is_refused(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    not_an_object = fake.event("checkout.session.completed", {})
    not_an_object["data"]["object"] = ["a list"]
    before = snapshot(platform)
    for body in ({"not": "an event"}, not_an_object):
        payload, headers = fake.signed(body)
        response = client.post(WEBHOOK, content=payload, headers=headers)
        assert (response.status_code, response.json()["code"]) == (422, "invalid_input")
    assert changes(before, snapshot(platform)) == []


# -- unknown customers, events we do not act on -------------------------------------


def test_events_of_unknown_customers_are_recorded_no_ops(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    stranger = {
        "id": "cs_test_stranger",
        "object": "checkout.session",
        "mode": "payment",
        "customer": "cus_nobody",
        "metadata": {},
        "payment_status": "paid",
        "payment_intent": "pi_nobody",
    }
    invoice = {
        "id": "in_nobody",
        "object": "invoice",
        "customer": "cus_nobody",
        "billing_reason": "subscription_cycle",
        "parent": {"subscription_details": {"subscription": "sub_nobody", "metadata": {}}},
        "lines": {"data": [{"period": {"start": 1767225600, "end": 1769904000}}]},
    }
    charge = {
        "id": "ch_nobody",
        "object": "charge",
        "customer": "cus_nobody",
        "payment_intent": "pi_nobody",
        "refunded": True,
    }
    events = [
        fake.event("checkout.session.completed", stranger),
        fake.event("invoice.paid", invoice),
        fake.event("customer.subscription.deleted", {"id": "sub_nobody", "customer": "cus_nobody"}),
        fake.event("charge.refunded", charge),
    ]
    before = snapshot(platform)
    for event in events:
        assert outcome(client, fake, event) == "unknown_customer"
        assert outcome(client, fake, event) == "duplicate"
    after = snapshot(platform)
    # Only the events themselves were written.
    assert {change.split(":")[0] for change in changes(before, after)} == {"stripe_events"}
    with platform.db.read() as conn:
        assert count(conn, stripe_events) == len(events)
    # An event type we do not act on is acknowledged too.
    assert outcome(client, fake, fake.event("customer.created", {"id": "cus_x"})) == "ignored"


def test_the_webhook_is_absent_under_sandbox_billing(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeStripe
) -> None:
    with (
        running_platform(settings_for(database_url, tmp_path / "sandbox"), clock) as sandbox,
        api_client(sandbox) as test_client,
    ):
        event = fake.event("customer.created", {"id": "cus_x"})
        response = deliver(test_client, fake, event)
        assert (response.status_code, response.json()["code"]) == (404, "not_found")
        user = make_user(sandbox, "sam@example.com")
        response = test_client.post("/v1/billing/portal", headers=user.auth)
        assert (response.status_code, response.json()["code"]) == (
            409,
            "billing_portal_unavailable",
        )


# -- refunds and disputes ------------------------------------------------------------


def test_refunds_and_disputes_claw_back_what_remains(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    heard: list[ClawbackOutcome] = []
    platform.billing.hooks.listen_to_clawbacks(lambda _conn, outcome: heard.append(outcome))
    kai = make_user(platform, "kai@example.com")
    first = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
    second = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-3000"}, kai)
    for session in (first, second):
        completed, invoice_paid = fake.pay_checkout(session)
        assert outcome(client, fake, completed) == "applied"
        # The pack's invoice: its page was linked by the completion already.
        assert outcome(client, fake, invoice_paid) == "ignored"
    assert state(platform, kai)[0] == 4000
    # Purchased credits burn oldest first: 600 of the first pack are spent.
    spend(platform, kai, 600, "some")
    first_intent = fake.sessions[first]["payment_intent"]
    second_intent = fake.sessions[second]["payment_intent"]
    # A partial refund keeps the credits.
    assert outcome(client, fake, fake.refund(first_intent, partial=True)[0]) == "ignored"
    assert state(platform, kai)[0] == 3400
    # The full refund claws back the 400 left; 600 were spent: flag-worthy.
    refund = fake.refund(first_intent)[0]
    assert outcome(client, fake, refund) == "applied"
    assert outcome(client, fake, refund) == "duplicate"
    assert state(platform, kai)[0] == 3000
    # A dispute of the same charge afterwards takes nothing more.
    assert outcome(client, fake, fake.dispute(first_intent)[0]) == "ignored"
    # A dispute of the untouched pack takes all of it; nothing was spent.
    assert outcome(client, fake, fake.dispute(second_intent)[0]) == "applied"
    assert state(platform, kai)[0] == 0
    payments = {p.external_id: p.id for p in platform_payments(platform, kai)}
    assert [(o.payment_id, o.clawed_back, o.spent, o.reason, o.needs_review) for o in heard] == [
        (payments[first_intent], 400, 600, "refund", True),
        (payments[second_intent], 3000, 0, "dispute", False),
    ]
    assert {(o.user_id, o.wallet_id) for o in heard} == {(kai.id, kai.wallet_id)}
    with platform.db.read() as conn:
        logged = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.target).order_by(
                audit_log.c.id
            )
        ).all()
    assert [tuple(row) for row in logged if row.action.endswith("_clawback")] == [
        ("stripe", "billing.refund_clawback", kai.id),
        ("stripe", "billing.dispute_clawback", kai.id),
    ]


def test_a_refunded_subscription_invoice_claws_back_its_credits(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    heard: list[ClawbackOutcome] = []
    platform.billing.hooks.listen_to_clawbacks(lambda _conn, outcome: heard.append(outcome))
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    assert state(platform, kai)[:2] == (5000, "pro")
    spend(platform, kai, 1000, "some")
    # The charge names only its payment intent: the invoice is looked up.
    intent = fake.latest_invoice(stripe_sub)["payment_intent"]
    assert outcome(client, fake, fake.refund(intent)[0]) == "applied"
    assert state(platform, kai)[0] == 0
    assert [(o.clawed_back, o.spent, o.reason) for o in heard] == [(4000, 1000, "refund")]
    assert fake.calls_to("GET", "/v1/invoice_payments")


def platform_payments(platform: Platform, who: TestUser) -> list[Any]:
    with platform.db.read() as conn:
        return list(platform.billing.payments.history(conn, who.id, limit=200))


# -- the customer portal, and what customers do there ------------------------------------


def test_the_customer_portal(platform: Platform, client: TestClient, fake: FakeStripe) -> None:
    kai = make_user(platform, "kai@example.com")
    response = client.post("/v1/billing/portal", headers=kai.auth)
    assert (response.status_code, response.json()["code"]) == (409, "billing_portal_unavailable")
    subscribe(client, fake, kai, "starter")
    response = client.post("/v1/billing/portal", headers=kai.auth)
    assert response.status_code == 200, response.text
    assert response.json()["url"].startswith(fake.url + "/portal/")
    asked = fake.calls_to("POST", "/v1/billing_portal/sessions")[-1].params
    assert asked == {
        "customer": fake.sessions[next(iter(fake.sessions))]["customer"],
        "return_url": "http://127.0.0.1:8000/billing",
    }
    # One Stripe customer per user, however many checkouts.
    checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
    assert len(fake.customers) == 1
    assert client.post("/v1/billing/portal").status_code == 401


def test_changes_made_in_the_portal_apply_in_any_order(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    clock.set(datetime(2026, 1, 16, tzinfo=UTC))
    # An upgrade in the portal: at once, the difference in credits granted.
    studio = fake.portal(stripe_sub, plan="studio", amount=9900)[0]
    clock.advance(timedelta(minutes=1))
    # Then a downgrade back to Pro and a cancellation, whose events arrive
    # before the upgrade's: each is reconciled with Stripe's state now.
    downgrade = fake.portal(stripe_sub, plan="pro", amount=4900)[0]
    assert outcome(client, fake, downgrade) == "ignored"  # Stripe says Pro: as we have it
    assert outcome(client, fake, studio) == "ignored"
    assert state(platform, kai)[:2] == (5000, "pro")
    clock.advance(timedelta(minutes=1))
    upgrade = fake.portal(stripe_sub, plan="studio", amount=9900)[0]
    assert outcome(client, fake, upgrade) == "applied"
    # Prorated from the change at Stripe (the event, Jan 16 00:02), not from
    # when the event arrived: 6000 credits and $50 for 1,382,280 of the
    # period's 2,678,400 seconds: 3096.5 credits, 2580.4 cents.
    clock.advance(timedelta(days=3))
    again = fake.portal(stripe_sub, plan="studio", amount=9900)[0]
    assert outcome(client, fake, again) == "ignored"
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (5000 + 3097, "studio")
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 2580, 3097)
    clock.advance(timedelta(minutes=1))
    older = fake.portal(stripe_sub, plan="starter", amount=1900)[0]
    clock.advance(timedelta(minutes=1))
    cancel = fake.portal(stripe_sub, cancel_at_period_end=True)[0]
    assert outcome(client, fake, cancel) == "applied"
    assert outcome(client, fake, older) == "ignored"  # older than the last applied
    sub = state(platform, kai)[2]
    assert sub is not None
    assert (sub.plan, sub.pending_plan, sub.cancel_at_period_end) == ("studio", None, True)
    # Withdrawn in the portal: the downgrade to Starter is what remains scheduled.
    clock.advance(timedelta(minutes=1))
    resume = fake.portal(stripe_sub, cancel_at_period_end=False)[0]
    assert outcome(client, fake, resume) == "applied"
    sub = state(platform, kai)[2]
    assert sub is not None
    assert (sub.plan, sub.pending_plan, sub.cancel_at_period_end) == ("studio", "starter", False)
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription", "upgrade"]


def test_a_declined_upgrade_changes_nothing(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    stripe_sub, session = subscribe(client, fake, kai, "starter")
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    fake.declining.add(fake.sessions[session]["customer"])
    before = snapshot(platform)
    response = client.patch("/v1/subscription", json={"plan": "studio"}, headers=kai.auth)
    assert (response.status_code, response.json()["code"]) == (402, "payment_failed")
    # Nothing but the decline's fair-use signal (card testing; docs/fair-use.md).
    written = changes(before, snapshot(platform))
    assert [change.split(":")[0] for change in written] == ["abuse_signals"], written
    assert fake.subscriptions[stripe_sub]["items"]["data"][0]["price"]["unit_amount"] == 1900
    # With a working card, the same request goes through (a new attempt key).
    fake.declining.clear()
    clock.advance(timedelta(seconds=5))
    response = client.patch("/v1/subscription", json={"plan": "studio"}, headers=kai.auth)
    assert response.status_code == 200, response.text
    # 22 days and 5 seconds before Feb 1: 1,900,795 of 2,678,400 seconds
    # left, 9000 credits * that = 6386.98, $80 * that = 5677.3 cents.
    assert state(platform, kai)[:2] == (2000 + 6387, "studio")
    assert fake.latest_invoice(stripe_sub)["amount_paid"] == 5677
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 5677, 6387)


def test_a_second_paid_checkout_does_not_subscribe_twice(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    # Two Checkout pages opened before either was paid; both are paid.
    first = checkout(client, fake, "/v1/subscription", {"plan": "starter"}, kai)
    second = checkout(client, fake, "/v1/subscription", {"plan": "pro"}, kai)
    for event in fake.pay_checkout(first):
        outcome(client, fake, event)
    answers = [outcome(client, fake, event) for event in fake.pay_checkout(second)]
    assert answers == ["ignored", "ignored", "ignored"]
    assert state(platform, kai)[:2] == (2000, "starter")
    with platform.db.read() as conn:
        details = conn.execute(select(stripe_events.c.detail)).scalars().all()
    assert any(detail and detail.startswith("already_subscribed") for detail in details)


def test_a_subscription_stripe_ended_first_is_not_started(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    session = checkout(client, fake, "/v1/subscription", {"plan": "starter"}, kai)
    events = fake.pay_checkout(session)
    deleted = fake.end(fake.subscription_of(session))[0]
    assert outcome(client, fake, deleted) == "ignored"
    for event in events:
        assert outcome(client, fake, event) == "ignored"
    assert state(platform, kai) == (0, "free", None)


def test_a_renewal_arriving_before_the_checkout_starts_the_subscription(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    """Stripe's January events are held up until after February's renewal:
    the first to arrive starts the subscription as Stripe has it now (in its
    second period), and January's change nothing when they come."""
    kai = make_user(platform, "kai@example.com")
    session = checkout(client, fake, "/v1/subscription", {"plan": "starter"}, kai)
    january = fake.pay_checkout(session)
    stripe_sub = fake.subscription_of(session)
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))
    february = fake.renew(stripe_sub)
    assert outcome(client, fake, of_type(february, "invoice.paid")) == "applied"
    for event in january:
        assert outcome(client, fake, event) == "ignored"
    assert outcome(client, fake, of_type(february, "customer.subscription.updated")) == "ignored"
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (2000, "starter")
    assert sub is not None
    assert (sub.current_period_start, sub.current_period_end) == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert paid(platform, kai) == [("subscription", "succeeded", 1900, 2000)]


def test_canceling_a_past_due_subscription_cancels_it_at_stripe_now(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    stripe_sub, session = subscribe(client, fake, kai, "starter")
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))
    fake.declining.add(fake.sessions[session]["customer"])
    for event in fake.renew(stripe_sub):
        outcome(client, fake, event)
    response = client.delete("/v1/subscription", headers=kai.auth)
    assert response.json()["status"] == "canceled"
    assert fake.calls_to("DELETE", f"/v1/subscriptions/{stripe_sub}")
    assert fake.subscriptions[stripe_sub]["status"] == "canceled"
    # Stripe's own word of it, when it comes, is old news.
    assert outcome(client, fake, fake.end(stripe_sub)[0]) == "ignored"
    assert state(platform, kai)[1] == "free"


def test_when_stripe_is_down_nothing_is_written_and_stripe_retries(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    update = fake.portal(stripe_sub, cancel_at_period_end=True)[0]
    fake.outage = True
    before = snapshot(platform)
    for method, path, body in (
        ("POST", "/v1/credit-purchases", {"pack": "pack-1000"}),
        ("PATCH", "/v1/subscription", {"plan": "pro"}),
        ("POST", "/v1/billing/portal", None),
    ):
        response = client.request(method, path, json=body, headers=kai.auth)
        assert (response.status_code, response.json()["code"]) == (503, "billing_provider_error")
    # The webhook needs Stripe's state for this one: 503, so Stripe delivers it again.
    response = deliver(client, fake, update)
    assert (response.status_code, response.json()["code"]) == (503, "billing_provider_error")
    assert changes(before, snapshot(platform)) == []
    fake.outage = False
    assert outcome(client, fake, update) == "applied"
    sub = state(platform, kai)[2]
    assert sub is not None
    assert sub.cancel_at_period_end


def test_a_refusal_while_applying_is_recorded_and_rolled_back(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    session = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
    event = fake.pay_checkout(session)[0]
    # A pack the operator removed from the catalog while the customer paid.
    event["data"]["object"]["metadata"]["plasmaart_pack"] = "pack-withdrawn"
    before = snapshot(platform)
    response = deliver(client, fake, event)
    assert response.json()["outcome"] == "ignored"
    assert response.json()["detail"].startswith("invalid_input: unknown credit pack")
    assert {change.split(":")[0] for change in changes(before, snapshot(platform))} == {
        "stripe_events"
    }


# -- exactly once under concurrency ------------------------------------------------------


def test_concurrent_deliveries_of_one_event_apply_it_once(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    session = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
    payload, headers = fake.signed(fake.pay_checkout(session)[0])
    barrier = threading.Barrier(4)
    answers: list[str] = []

    def receive() -> None:
        barrier.wait(timeout=10)
        answers.append(_receive(platform, payload, headers["Stripe-Signature"]).outcome)

    threads = [threading.Thread(target=receive) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(answers) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert state(platform, kai)[0] == 1000


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("stripe_secret_key", "STRIPE_SECRET_KEY"),
        ("stripe_webhook_secret", "STRIPE_WEBHOOK_SECRET"),
    ],
)
def test_stripe_billing_needs_both_secrets(
    tmp_path: Path, clock: ManualClock, missing: str, variable: str
) -> None:
    values: dict[str, Any] = {
        "var_dir": tmp_path,
        "billing": "stripe",
        "stripe_secret_key": SECRET_KEY,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        missing: None,
    }
    with pytest.raises(ConfigError, match=f"^{variable}: required when PLASMAART_BILLING=stripe"):
        create_backends(Settings(**values), clock)
    del values[missing]
    values[missing] = "set"
    backends = create_backends(Settings(**values), clock)
    assert isinstance(backends["stripe"], StripeBackend)
    assert backends["stripe"].renews_on_clock is False
    assert backends["stripe"].return_url == "http://127.0.0.1:8000/"


def test_an_upgrade_records_the_invoice_stripe_charged(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    clock.set(datetime(2026, 1, 21, 6, tzinfo=UTC))
    response = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    assert response.status_code == 200, response.text
    invoice = fake.latest_invoice(stripe_sub)
    assert invoice["billing_reason"] == "subscription_update"
    with platform.db.read() as conn:
        upgrade = platform.billing.payments.history(conn, kai.id, limit=1)[0]
    # 10.75 of 31 days: $30 * that = 1040.3 cents, 3000 * that = 1040.3 credits.
    assert (upgrade.kind, upgrade.amount_cents, upgrade.credits) == ("upgrade", 1040, 1040)
    assert (upgrade.external_id, invoice["amount_paid"]) == (invoice["id"], 1040)


def test_an_upgrade_over_a_scheduled_downgrade_is_prorated_from_the_plan_held(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    """Pro with Starter scheduled (Stripe already bills Starter next), then
    Studio: Stripe must prorate from Pro, the plan paid for, not Starter."""
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    clock.set(datetime(2026, 1, 5, tzinfo=UTC))
    down = client.patch("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert down.json()["pending_plan"] == "starter"
    clock.set(datetime(2026, 1, 16, tzinfo=UTC))
    up = client.patch("/v1/subscription", json={"plan": "studio"}, headers=kai.auth)
    assert (up.json()["plan"], up.json()["pending_plan"]) == ("studio", None)
    # 16 of 31 days: $50 * that = 2580.6 cents, 6000 * that = 3096.8 credits.
    assert fake.latest_invoice(stripe_sub)["amount_paid"] == 2581
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 2581, 3097)
    item = fake.subscriptions[stripe_sub]["items"]["data"][0]
    assert item["price"]["unit_amount"] == 9900


def stripe_price(fake: FakeStripe, stripe_sub: str) -> int:
    """The monthly price Stripe has on the subscription (and bills next)."""
    return int(fake.subscriptions[stripe_sub]["items"]["data"][0]["price"]["unit_amount"])


def test_an_upgrade_in_the_instant_of_a_scheduled_downgrade_is_prorated_from_the_plan_held(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    """Pro, Starter scheduled, then Studio, all in one instant (what the
    billing state machine found): withdrawing Starter at Stripe is a request
    of its own, not a replay of the downgrade's, so Stripe prorates Studio
    from Pro and the payment's money and credits follow one rule."""
    kai = make_user(platform, "kai@example.com")
    clock.set(JAN_1)
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    down = client.patch("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert down.status_code == 200, down.text
    assert (down.json()["plan"], down.json()["pending_plan"]) == ("pro", "starter")
    assert stripe_price(fake, stripe_sub) == 1900
    up = client.patch("/v1/subscription", json={"plan": "studio"}, headers=kai.auth)
    assert up.status_code == 200, up.text
    assert (up.json()["plan"], up.json()["pending_plan"]) == ("studio", None)
    # The whole period left: Studio less Pro, $50 and 6000 credits.
    assert fake.latest_invoice(stripe_sub)["amount_paid"] == 5000
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 5000, 6000)
    assert stripe_price(fake, stripe_sub) == 9900


def test_scheduling_withdrawing_and_rescheduling_in_one_instant_keeps_stripe_in_step(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    """Each change of the scheduled plan reaches Stripe, even when the same
    change was made and undone a moment (or no time) before: the price
    Stripe bills next is always the plan our subscription says it renews on."""
    kai = make_user(platform, "kai@example.com")
    clock.set(JAN_1)
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    for plan, pending, price in [
        ("starter", "starter", 1900),
        ("pro", None, 4900),
        ("starter", "starter", 1900),
        ("pro", None, 4900),
    ]:
        response = client.patch("/v1/subscription", json={"plan": plan}, headers=kai.auth)
        assert response.status_code == 200, response.text
        assert (response.json()["plan"], response.json()["pending_plan"]) == ("pro", pending)
        assert stripe_price(fake, stripe_sub) == price
    assert [p[0] for p in paid(platform, kai)] == ["subscription"]


def test_canceling_withdrawing_and_canceling_again_in_one_instant_keeps_stripe_in_step(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    """A cancellation withdrawn (``PATCH`` to the plan held) and made again
    in the same instant reaches Stripe each time: a second cancellation is
    not a replay of the first, or Stripe would renew, and charge, a
    subscription the customer canceled."""
    kai = make_user(platform, "kai@example.com")
    clock.set(JAN_1)
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    for step in range(2):
        canceled = client.delete("/v1/subscription", headers=kai.auth)
        assert canceled.status_code == 200, (step, canceled.text)
        assert canceled.json()["cancel_at_period_end"] is True
        assert fake.subscriptions[stripe_sub]["cancel_at_period_end"] is True
        resumed = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
        assert resumed.status_code == 200, (step, resumed.text)
        assert resumed.json()["cancel_at_period_end"] is False
        assert fake.subscriptions[stripe_sub]["cancel_at_period_end"] is False


def test_the_fake_refuses_a_key_reused_with_other_parameters_as_stripe_does(
    fake: FakeStripe,
) -> None:
    auth = {"authorization": f"Bearer {SECRET_KEY}", "idempotency-key": "k1"}
    first = fake.handle("POST", "/v1/customers", auth, b"email=a%40example.com")
    assert first[0] == 200
    assert fake.handle("POST", "/v1/customers", auth, b"email=a%40example.com") == first
    status, body = fake.handle("POST", "/v1/customers", auth, b"email=b%40example.com")
    assert (status, body["error"]["type"]) == (400, "idempotency_error")
    assert len(fake.customers) == 1


# -- suspension ----------------------------------------------------------------


def suspension(client: TestClient, admin: TestUser, who: TestUser, action: str) -> None:
    body = {"reason": "chargebacks"} if action == "suspend" else None
    path = f"/v1/admin/users/{who.id}/{action}"
    answer = client.post(path, json=body, headers=admin.auth)
    assert answer.status_code == 200, answer.text


def stripe_cancels(fake: FakeStripe, stripe_sub: str) -> bool:
    return bool(fake.subscriptions[stripe_sub]["cancel_at_period_end"])


def updated(client: TestClient, fake: FakeStripe, stripe_sub: str) -> str:
    """Stripe's ``customer.subscription.updated`` after a change we asked for."""
    event = fake.event("customer.subscription.updated", fake.subscriptions[stripe_sub])
    return outcome(client, fake, event)


def test_suspension_stops_the_stripe_renewal_and_reinstating_resumes_it(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    suspension(client, admin, kai, "suspend")
    # Stripe renews by itself: it is told to end the subscription instead.
    assert stripe_cancels(fake, stripe_sub)
    # Its webhook says so; that is the suspension's doing, not a
    # cancellation of the customer's.
    assert updated(client, fake, stripe_sub) == "ignored"
    sub = state(platform, kai)[2]
    assert sub is not None
    assert (sub.cancel_at_period_end, sub.stops_for_suspension) == (False, True)
    shown = client.get("/v1/subscription", headers=kai.auth).json()
    assert (shown["cancel_at_period_end"], shown["cancel_reason"]) == (True, "account_suspended")
    # Reinstated before the period end: Stripe renews again, and charges.
    clock.set(datetime(2026, 1, 20, tzinfo=UTC))
    suspension(client, admin, kai, "reinstate")
    assert not stripe_cancels(fake, stripe_sub)
    assert updated(client, fake, stripe_sub) == "ignored"
    sub = state(platform, kai)[2]
    assert sub is not None
    assert (sub.cancel_at_period_end, sub.stops_for_suspension) == (False, False)
    clock.set(datetime(2026, 2, 1, 1, tzinfo=UTC))
    for event in fake.period_ends(stripe_sub):
        deliver(client, fake, event)
    assert state(platform, kai)[1:2] == ("starter",)
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription", "renewal"]


def test_a_suspended_stripe_subscription_ends_at_its_period_end(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    suspension(client, admin, kai, "suspend")
    clock.set(datetime(2026, 2, 1, 1, tzinfo=UTC))
    for event in fake.period_ends(stripe_sub):
        assert outcome(client, fake, event) == "applied"
    available, plan, sub = state(platform, kai)
    assert sub is not None
    assert (plan, sub.status, sub.stops_for_suspension) == ("free", "canceled", False)
    assert paid(platform, kai) == [("subscription", "succeeded", 1900, 2000)]
    # Reinstated after the end: nothing to resume at Stripe.
    before = len(fake.calls_to("POST", f"/v1/subscriptions/{stripe_sub}"))
    suspension(client, admin, kai, "reinstate")
    assert len(fake.calls_to("POST", f"/v1/subscriptions/{stripe_sub}")) == before
    assert available == 0


def test_reinstating_keeps_a_stripe_cancellation_the_customer_made(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    suspension(client, admin, kai, "suspend")
    # Suspended, the customer cancels themselves (the one billing write left).
    canceled = client.delete("/v1/subscription", headers=kai.auth)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["cancel_reason"] == "requested"
    assert updated(client, fake, stripe_sub) == "ignored"
    suspension(client, admin, kai, "reinstate")
    assert stripe_cancels(fake, stripe_sub)  # not withdrawn by the reinstatement
    assert updated(client, fake, stripe_sub) == "ignored"
    sub = state(platform, kai)[2]
    assert sub is not None
    assert (sub.cancel_at_period_end, sub.stops_for_suspension) == (True, False)
    clock.set(datetime(2026, 2, 1, 1, tzinfo=UTC))
    for event in fake.period_ends(stripe_sub):
        deliver(client, fake, event)
    assert state(platform, kai)[1] == "free"
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription"]


def test_a_customer_who_canceled_before_the_suspension_stays_canceled_at_stripe(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    assert client.delete("/v1/subscription", headers=kai.auth).status_code == 200
    asked = len(fake.calls_to("POST", f"/v1/subscriptions/{stripe_sub}"))
    suspension(client, admin, kai, "suspend")
    suspension(client, admin, kai, "reinstate")
    # Stripe was going to end it anyway: neither step asked it anything.
    assert len(fake.calls_to("POST", f"/v1/subscriptions/{stripe_sub}")) == asked
    assert stripe_cancels(fake, stripe_sub)
    shown = client.get("/v1/subscription", headers=kai.auth).json()
    assert (shown["cancel_at_period_end"], shown["cancel_reason"]) == (True, "requested")


def test_a_dispute_that_suspends_the_account_waits_for_stripe_to_be_reachable(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    """Fair use suspends on the third clawback, and the suspension tells
    Stripe to stop renewing: if Stripe cannot be reached, the event is not
    applied (nor its clawback lost as a refusal) but delivered again."""
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    pack = checkout(client, fake, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
    completed, invoice_paid = fake.pay_checkout(pack)
    assert outcome(client, fake, completed) == "applied"
    assert outcome(client, fake, invoice_paid) == "ignored"  # its page linked already
    spend(platform, kai, 2100, "most")  # the month's 2000, then 100 of the pack
    with platform.db.write() as conn:
        for n in range(2):
            earlier = platform.fairuse.record_clawback(
                conn,
                kai.id,
                payment_id=f"pay_earlier_{n}",
                credits_clawed_back=10,
                credits_spent=5,
                reason="dispute",
            )
    assert not earlier.suspended_now
    dispute = fake.dispute(fake.sessions[pack]["payment_intent"])[0]
    fake.outage = True
    before = snapshot(platform)
    response = deliver(client, fake, dispute)
    assert (response.status_code, response.json()["code"]) == (503, "billing_provider_error")
    assert changes(before, snapshot(platform)) == []
    fake.outage = False
    assert outcome(client, fake, dispute) == "applied"
    with platform.db.read() as conn:
        assert platform.accounts.get(conn, kai.id).status == "suspended"
    assert state(platform, kai)[0] == 0  # the pack's 900 left were clawed back
    assert stripe_cancels(fake, stripe_sub)
    sub = state(platform, kai)[2]
    assert sub is not None
    assert (sub.cancel_at_period_end, sub.stops_for_suspension) == (False, True)


def test_a_suspension_stripe_cannot_hear_of_writes_nothing(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    fake.outage = True
    before = snapshot(platform)
    response = client.post(
        f"/v1/admin/users/{kai.id}/suspend", json={"reason": "chargebacks"}, headers=admin.auth
    )
    assert (response.status_code, response.json()["code"]) == (503, "billing_provider_error")
    assert changes(before, snapshot(platform)) == []
    fake.outage = False
    suspension(client, admin, kai, "suspend")
    assert stripe_cancels(fake, stripe_sub)


def test_a_checkout_paid_after_the_suspension_does_not_renew(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    """A checkout started before the suspension and paid after it: the paid
    period starts, its renewal is stopped at Stripe at once."""
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    session = checkout(client, fake, "/v1/subscription", {"plan": "starter"}, kai)
    suspension(client, admin, kai, "suspend")
    for event in fake.pay_checkout(session):
        deliver(client, fake, event)
    stripe_sub = fake.subscription_of(session)
    available, plan, sub = state(platform, kai)
    assert sub is not None
    assert (available, plan, sub.status, sub.stops_for_suspension) == (
        2000,
        "starter",
        "active",
        True,
    )
    assert stripe_cancels(fake, stripe_sub)
    assert updated(client, fake, stripe_sub) == "ignored"
    suspension(client, admin, kai, "reinstate")
    assert not stripe_cancels(fake, stripe_sub)


def test_a_portal_change_is_an_upgrade_by_the_catalog_in_force(
    platform: Platform, client: TestClient, clock: ManualClock, fake: FakeStripe
) -> None:
    """Once an announced change has made Studio cheaper than Pro, moving
    from Pro to Studio in the portal is a change at the period end, as
    ``PATCH /v1/subscription`` would make it: no upgrade, no credits."""
    admin = make_user(platform, "root@example.com", admin=True)
    with platform.db.write() as conn:
        platform.catalog_changes.schedule(
            conn,
            admin_id=admin.id,
            target="plan",
            target_id="studio",
            field="price_cents",
            value=3900,
            effective_at=datetime(2026, 1, 15, tzinfo=UTC),
        )
    clock.set(datetime(2026, 1, 16, tzinfo=UTC))
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "pro")
    assert state(platform, kai)[:2] == (5000, "pro")
    clock.advance(timedelta(days=2))
    studio = fake.portal(stripe_sub, plan="studio", amount=3900)[0]
    assert outcome(client, fake, studio) == "applied"
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (5000, "pro")
    assert sub is not None
    assert (sub.plan, sub.pending_plan) == ("pro", "studio")
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription"]


def test_an_upgrade_after_canceling_a_scheduled_downgrade_is_prorated_from_the_plan_held(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    """Pro with Starter scheduled, then canceled, then Studio in the same
    instant: Stripe prorates from Pro (the plan held), not from the Starter
    price it was billing for the next period; what is charged matches the
    credits granted."""
    kai = make_user(platform, "kai@example.com")
    stripe_sub, _session = subscribe(client, fake, kai, "starter")
    for body in ({"plan": "pro"}, {"plan": "starter"}):
        answer = client.patch("/v1/subscription", json=body, headers=kai.auth)
        assert answer.status_code == 200, answer.text
    assert client.delete("/v1/subscription", headers=kai.auth).status_code == 200
    assert fake.subscriptions[stripe_sub]["items"]["data"][0]["price"]["unit_amount"] == 4900
    answer = client.patch("/v1/subscription", json={"plan": "studio"}, headers=kai.auth)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["plan"], answer.json()["cancel_at_period_end"]) == ("studio", False)
    # A whole period's differences: Pro to Studio, $50 and 6000 credits.
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 5000, 6000)
    assert state(platform, kai)[:2] == (2000 + 3000 + 6000, "studio")

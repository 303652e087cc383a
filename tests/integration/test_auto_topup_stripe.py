"""Auto top-up under Stripe billing, against the local fake of Stripe's API
(``tests/support/fake_stripe.py``), on SQLite and PostgreSQL: enabling needs
the card a Checkout saved for off-session use; a run is a PaymentIntent on
that card, ``off_session`` and confirmed, keyed by the run (a charge retried
after a crash is Stripe's replay, never a second payment); Stripe's
``card_declined`` is a failure and its ``authentication_required`` (the
intent in the error) waits for the customer, who is mailed a link, with no
retry; the signed ``payment_intent.succeeded`` that follows grants nothing
more, and a refund of the top-up claws it back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import payments, topup_runs
from plasmaart.platform import Platform
from plasmaart.worker import Worker, outbox_delivery
from tests.support.accounts import TestUser, make_user
from tests.support.fake_stripe import FakeStripe
from tests.support.platforms import running_platform, settings_for

WEBHOOK = "/v1/webhooks/stripe"
PACK = "pack-1000"
SETTINGS = {"enabled": True, "threshold": 1000, "pack": PACK, "monthly_cap_cents": 10_000}


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeStripe]:
    with FakeStripe(clock) as server:
        yield server


@pytest.fixture
def platform(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeStripe
) -> Iterator[Platform]:
    settings = settings_for(database_url, tmp_path / "var", **fake.platform_settings())
    with running_platform(settings, clock) as built:
        yield built


def deliver(client: TestClient, fake: FakeStripe, event: dict[str, Any]) -> str:
    payload, headers = fake.signed(event)
    answer = client.post(WEBHOOK, content=payload, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["outcome"])


def buy_through_checkout(client: TestClient, fake: FakeStripe, who: TestUser) -> str:
    """A pack bought on Checkout (its card saved); the session id."""
    answer = client.post("/v1/credit-purchases", json={"pack": PACK}, headers=who.auth)
    assert answer.status_code == 200, answer.text
    session = str(answer.json()["checkout_url"]).rsplit("/", 1)[1]
    for event in fake.pay_checkout(session):
        deliver(client, fake, event)
    return session


def enable(client: TestClient, who: TestUser) -> Any:
    return client.put("/v1/auto-topup", json=SETTINGS, headers=who.auth)


def spend(platform: Platform, who: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        hold = platform.ledger.hold(conn, who.wallet_id, credits, idempotency_key=f"{key}:h")
        platform.ledger.capture(conn, hold.hold_id, credits, idempotency_key=f"{key}:c")


def available(platform: Platform, who: TestUser) -> int:
    with platform.db.read() as conn:
        return platform.ledger.balance(conn, who.wallet_id).available


def last_run(client: TestClient, who: TestUser) -> dict[str, Any]:
    found: dict[str, Any] = client.get("/v1/auto-topup", headers=who.auth).json()["last_run"]
    return found


def customer_of(fake: FakeStripe, who: TestUser) -> str:
    return next(c["id"] for c in fake.customers.values() if c["email"] == who.email)


def charge(platform: Platform) -> None:
    Worker(platform).charge_topups()


def test_enabling_needs_a_card_saved_by_checkout(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com", credits=500)
    refused = enable(client, kai)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "payment_method_required"
    assert client.get("/v1/auto-topup", headers=kai.auth).json()["enabled"] is False
    # Turning it off, or saving it off, needs no card.
    off = client.put("/v1/auto-topup", json={**SETTINGS, "enabled": False}, headers=kai.auth)
    assert off.status_code == 200, off.text

    session = buy_through_checkout(client, fake, kai)
    # The pack's Checkout asked Stripe to keep the card for off-session use.
    created = fake.calls_to("POST", "/v1/checkout/sessions")[-1]
    assert created.params["payment_intent_data"]["setup_future_usage"] == "off_session"
    assert fake.sessions[session]["payment_status"] == "paid"
    assert enable(client, kai).status_code == 200


def test_a_run_is_an_off_session_payment_intent_charged_once(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    buy_through_checkout(client, fake, kai)  # 1,100 credits now
    assert enable(client, kai).status_code == 200
    spend(platform, kai, 200, "s1")  # 900: below
    with platform.db.read() as conn:
        run = platform.auto_topups.view(conn, kai.wallet_id).last_run
        assert run is not None
        # A worker charged it, then died before it could record the outcome.
        platform.auto_topups.charge(conn, run)
    charge(platform)  # the same key again: Stripe replays its first answer
    intents = fake.calls_to("POST", "/v1/payment_intents")
    assert len(intents) == 2
    assert {c.idempotency_key for c in intents} == {f"topup:topup:{run.id}"}
    assert len(fake.intents) == 1  # one payment at Stripe
    [intent] = fake.intents.values()
    [card] = fake.payment_methods.values()
    params = intents[0].params
    assert params["off_session"] == "true"
    assert params["confirm"] == "true"
    assert params["payment_method"] == card["id"]
    assert params["customer"] == customer_of(fake, kai)
    assert (params["amount"], params["currency"]) == ("1200", "usd")
    assert params["metadata"]["plasmaart_kind"] == "topup"
    assert available(platform, kai) == 1900  # 900 + 1,000: added
    found = last_run(client, kai)
    assert found["status"] == "succeeded"
    with platform.db.read() as conn:
        payment = conn.execute(select(payments).where(payments.c.id == found["payment_id"])).one()
    assert (payment.kind, payment.backend, payment.external_id) == ("pack", "stripe", intent["id"])
    assert payment.receipt_number is not None

    # Stripe then reports the intent's success: nothing more is granted.
    [succeeded] = fake.intent_succeeded(intent["id"])
    assert deliver(client, fake, succeeded) == "ignored"
    assert available(platform, kai) == 1900
    # A refund of the top-up claws its credits back, as any pack's.
    [refunded] = fake.refund(intent["id"])
    assert deliver(client, fake, refunded) == "applied"
    assert available(platform, kai) == 900


def test_a_declined_card_fails_the_run(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    buy_through_checkout(client, fake, kai)
    assert enable(client, kai).status_code == 200
    fake.declining.add(customer_of(fake, kai))
    spend(platform, kai, 200, "s1")
    charge(platform)
    run = last_run(client, kai)
    assert run["status"] == "failed"
    assert run["failure_reason"] == "Your card was declined."
    assert client.get("/v1/auto-topup", headers=kai.auth).json()["failures"] == 1
    assert available(platform, kai) == 900


def test_authentication_required_waits_for_the_customer_without_retrying(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    buy_through_checkout(client, fake, kai)
    assert enable(client, kai).status_code == 200
    fake.requiring_action.add(customer_of(fake, kai))
    spend(platform, kai, 200, "s1")
    charge(platform)
    run = last_run(client, kai)
    assert run["status"] == "action_required"
    assert "requires authentication" in run["failure_reason"]
    outbox_delivery(platform).run("test")
    [mail] = [m for m in platform.mail_folder.messages() if "confirm an auto top-up" in m.subject]
    assert run["action_url"] in mail.text
    # No retry: more spending and passes of the worker ask Stripe nothing more.
    for i in range(3):
        spend(platform, kai, 50, f"more{i}")
        charge(platform)
    assert len(fake.calls_to("POST", "/v1/payment_intents")) == 1
    # The customer pays the pack themselves on Checkout (where the bank asks):
    # the wait ends, and the next crossing charges off-session again.
    fake.requiring_action.clear()
    buy_through_checkout(client, fake, kai)
    assert client.get("/v1/auto-topup", headers=kai.auth).json()["in_flight"] is False
    assert available(platform, kai) == 1750
    spend(platform, kai, 800, "s2")
    charge(platform)
    assert last_run(client, kai)["status"] == "succeeded"
    assert available(platform, kai) == 1950
    with platform.db.read() as conn:
        statuses = conn.execute(select(topup_runs.c.status).order_by(topup_runs.c.created_at))
        assert list(statuses.scalars()) == ["action_required", "succeeded"]


def test_stripe_unreachable_leaves_the_run_pending_until_it_answers(
    platform: Platform, client: TestClient, fake: FakeStripe
) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    buy_through_checkout(client, fake, kai)
    assert enable(client, kai).status_code == 200
    spend(platform, kai, 200, "s1")
    fake.outage = True
    charge(platform)
    assert last_run(client, kai)["status"] == "pending"
    fake.outage = False
    charge(platform)
    assert last_run(client, kai)["status"] == "succeeded"
    assert available(platform, kai) == 1900


def test_a_run_retried_after_a_newer_card_was_saved_names_the_first_card(
    platform: Platform, client: TestClient, fake: FakeStripe, clock: ManualClock
) -> None:
    """A worker charged the run and died; before the retry, a pack bought on
    Checkout saved a newer card. The retry names the card the first attempt
    named (the same key with another card is refused by Stripe, and the run
    stayed pending for ever): one payment, the run succeeded."""
    kai = make_user(platform, "kai@example.com", credits=100)
    buy_through_checkout(client, fake, kai)
    assert enable(client, kai).status_code == 200
    spend(platform, kai, 200, "s1")  # below the threshold: a run
    with platform.db.read() as conn:
        run = platform.auto_topups.view(conn, kai.wallet_id).last_run
        assert run is not None
        platform.auto_topups.charge(conn, run)  # charged; the worker died
    clock.advance(timedelta(minutes=5))
    buy_through_checkout(client, fake, kai)  # a second card, newer
    assert len(fake.payment_methods) == 2
    charge(platform)
    intents = fake.calls_to("POST", "/v1/payment_intents")
    assert len(intents) == 2
    assert len({c.params["payment_method"] for c in intents}) == 1
    assert len(fake.intents) == 1
    assert last_run(client, kai)["status"] == "succeeded"
    assert available(platform, kai) == 900 + 1000 + 1000

"""Webhook storms: Stripe sends every event of the last hour again, in a
random order, and nothing changes the second time.

An hour of a Stripe-billed platform is played with the fake Stripe
(``tests/support/fake_stripe.py``) against a live server on SQLite and
PostgreSQL, each event delivered over HTTP as it happens: sign-ups,
subscriptions started on Checkout, an upgrade (its proration invoice), a
portal downgrade, renewals, a cancellation at the period end and the end
itself, packs bought, an auto top-up charged off-session by the worker, a
refund and a dispute. Then every business table is snapshotted, and the
storms come (``tests/support/faults/stripe.py`` ``WebhookStorm``):

1. the whole hour again, shuffled, to one server: every answer 2xx, each a
   ``duplicate``, and every table exactly as it was;
2. two storms at once, to two servers (two platforms on the one database,
   as two API processes): the same;
3. two storms at once, each event under a new id (the same change told by
   another event, so only the objects' own ids can recognise it): every
   answer 2xx, each ``ignored``, and every table as it was except the
   events table's new rows (``stripe_events``, the record of what arrived).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from plasmaart.clock import ManualClock
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.fake_stripe import FakeStripe
from tests.support.faults.stripe import WebhookStorm
from tests.support.live_server import live_server
from tests.support.matrix import Snapshot, changes, snapshot
from tests.support.platforms import running_platform, settings_for

WEBHOOK = "/v1/webhooks/stripe"
DEC_1 = datetime(2025, 12, 1, tzinfo=UTC)
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
# The one table a storm under new ids may add to: each event that arrived.
EVENT_RECORD = "stripe_events"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(DEC_1)


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


@pytest.fixture
def second(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeStripe
) -> Iterator[Platform]:
    """Another platform on the same database: a second API process."""
    settings = settings_for(database_url, tmp_path / "var2", **fake.platform_settings())
    with running_platform(settings, clock) as built:
        yield built


class Hour:
    """The story's API calls and deliveries, over HTTP to one server.
    ``losing``: the deliveries that fail (by event type and the minute of
    the hour it happens at), left for the storm to bring."""

    def __init__(
        self,
        base_url: str,
        fake: FakeStripe,
        clock: ManualClock,
        losing: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.fake = fake
        self.clock = clock
        self.losing = losing
        self.lost: list[str] = []

    def at(self, when: datetime) -> None:
        self.clock.set(when)

    def deliver(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            minute = (self.clock.now() - JAN_1) // timedelta(minutes=1)
            if (event["type"], minute) in self.losing:
                self.lost.append(event["id"])
                continue
            payload, headers = self.fake.signed(event)
            answer = self.http.post(WEBHOOK, content=payload, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["outcome"] != "duplicate", event

    def checkout(self, path: str, body: dict[str, str], who: TestUser) -> str:
        answer = self.http.post(path, json=body, headers=who.auth)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["checkout_url"]).rsplit("/", 1)[1]

    def subscribe(self, who: TestUser, plan: str) -> str:
        session = self.checkout("/v1/subscription", {"plan": plan}, who)
        self.deliver(self.fake.pay_checkout(session))
        return self.fake.subscription_of(session)

    def buy_pack(self, who: TestUser, pack: str) -> str:
        """A pack bought on Checkout; its payment intent."""
        session = self.checkout("/v1/credit-purchases", {"pack": pack}, who)
        self.deliver(self.fake.pay_checkout(session))
        return str(self.fake.sessions[session]["payment_intent"])


def spend(platform: Platform, who: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        hold = platform.ledger.hold(conn, who.wallet_id, credits, idempotency_key=f"{key}:h")
        platform.ledger.capture(conn, hold.hold_id, credits, idempotency_key=f"{key}:c")


def play_the_hour(platform: Platform, hour: Hour, fake: FakeStripe) -> dict[str, TestUser]:
    """A month before, then the hour from Jan 1 00:00 to 01:00, each event
    delivered as it happens, in Stripe's order; the users."""
    worker = Worker(platform)
    # December: three subscriptions start, one set to end with its period.
    bob = make_user(platform, "bob@example.com")
    cleo = make_user(platform, "cleo@example.com")
    eve = make_user(platform, "eve@example.com")
    hour.at(DEC_1 + timedelta(minutes=20))
    bob_sub = hour.subscribe(bob, "pro")
    hour.at(DEC_1 + timedelta(minutes=30))
    cleo_sub = hour.subscribe(cleo, "studio")
    hour.at(DEC_1 + timedelta(minutes=40))
    eve_sub = hour.subscribe(eve, "starter")
    hour.deliver(fake.portal(eve_sub, cancel_at_period_end=True))
    spend(platform, bob, 3000, "bob-december")

    # The hour.
    hour.at(JAN_1 + timedelta(minutes=2))
    alice = make_user(platform, "alice@example.com")
    dave = make_user(platform, "dave@example.com", credits=100)
    hour.at(JAN_1 + timedelta(minutes=5))
    alice_sub = hour.subscribe(alice, "starter")
    hour.at(JAN_1 + timedelta(minutes=8))
    alice_pack = hour.buy_pack(alice, "pack-1000")
    hour.at(JAN_1 + timedelta(minutes=10))
    dave_pack = hour.buy_pack(dave, "pack-1000")
    # Dave's auto top-up: on, then spending below its threshold; the worker
    # charges his saved card off-session, and Stripe tells of the success.
    answer = hour.http.put(
        "/v1/auto-topup",
        json={"enabled": True, "threshold": 500, "pack": "pack-1000", "monthly_cap_cents": 5000},
        headers=dave.auth,
    )
    assert answer.status_code == 200, answer.text
    hour.at(JAN_1 + timedelta(minutes=12))
    spend(platform, dave, 800, "dave-spend")
    worker.charge_topups()
    [topup_intent] = fake.intents
    hour.deliver(fake.intent_succeeded(topup_intent))
    # Alice upgrades to Pro at once: Stripe invoices the proration and
    # echoes the change.
    hour.at(JAN_1 + timedelta(minutes=15))
    answer = hour.http.patch("/v1/subscription", json={"plan": "pro"}, headers=alice.auth)
    assert answer.status_code == 200, answer.text
    hour.deliver(
        [
            fake.event("customer.subscription.updated", fake.subscriptions[alice_sub]),
            fake.event("invoice.paid", fake.latest_invoice(alice_sub)),
        ]
    )
    # Bob's period ends: renewed and paid.
    hour.at(JAN_1 + timedelta(minutes=20))
    hour.deliver(fake.period_ends(bob_sub))
    worker.run_once()
    # Cleo moves down to Pro in the portal (from her next period), which
    # then starts.
    hour.at(JAN_1 + timedelta(minutes=25))
    hour.deliver(fake.portal(cleo_sub, plan="pro", amount=4900))
    hour.at(JAN_1 + timedelta(minutes=30))
    hour.deliver(fake.period_ends(cleo_sub))
    worker.run_once()
    # Bob cancels at the end of his new period; Eve's subscription ends.
    hour.at(JAN_1 + timedelta(minutes=35))
    hour.deliver(fake.portal(bob_sub, cancel_at_period_end=True))
    hour.at(JAN_1 + timedelta(minutes=40))
    hour.deliver(fake.period_ends(eve_sub))
    worker.run_once()
    # Dave's pack is refunded; Alice's is disputed.
    hour.at(JAN_1 + timedelta(minutes=45))
    hour.deliver(fake.refund(dave_pack))
    hour.at(JAN_1 + timedelta(minutes=50))
    hour.deliver(fake.dispute(alice_pack))
    hour.at(JAN_1 + timedelta(minutes=58))
    worker.run_once()
    return {"alice": alice, "bob": bob, "cleo": cleo, "dave": dave, "eve": eve}


def plans_and_balances(platform: Platform, users: dict[str, TestUser]) -> dict[str, Any]:
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        return {
            name: (
                platform.ledger.balance(conn, who.wallet_id).available,
                platform.billing.plans.plan_of(conn, who.wallet_id).id,
            )
            for name, who in users.items()
        }


def storm_at_once(storms: list[WebhookStorm]) -> None:
    """Inject the storms each in its own thread, all at once (bounded)."""
    errors: list[BaseException] = []

    def run(storm: WebhookStorm) -> None:
        try:
            storm.inject()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(storm,)) for storm in storms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a storm did not end within 60 s"
    assert errors == []


def without(state: Snapshot, table: str) -> Snapshot:
    return {name: rows for name, rows in state.items() if name != table}


# Deliveries that fail during the hour: Bob's renewal (both events, so the
# change to his subscription that Stripe sent at 00:20 arrives after the
# newer one of 00:35, his cancellation at the period end), Alice's upgrade
# echoed, Dave's refund.
LOSING = frozenset(
    {
        ("customer.subscription.updated", 20),
        ("invoice.paid", 20),
        ("customer.subscription.updated", 15),
        ("charge.refunded", 45),
    }
)


@pytest.mark.parametrize("losing", [frozenset(), LOSING], ids=["all-delivered", "some-lost"])
def test_a_storm_changes_nothing_the_second_time(
    platform: Platform,
    second: Platform,
    fake: FakeStripe,
    clock: ManualClock,
    backend: str,
    losing: frozenset[tuple[str, int]],
) -> None:
    rng = random.Random(20)
    with live_server(platform) as one, live_server(second) as two:
        hour = Hour(one, fake, clock, losing)
        users = play_the_hour(platform, hour, fake)
        hour.http.close()
        assert len(hour.lost) == len(losing)
        recent = fake.recent_events()
        if hour.lost:
            # The first storm brings what was lost, late and out of order:
            # each applied once (the 00:20 change older than the 00:35 one
            # recorded and ignored), and the rest are duplicates.
            first = WebhookStorm(fake, [one + WEBHOOK], random.Random(7))
            first.inject()
            assert first.failures() == []
            found = {d.event_id: d.body["outcome"] for d in first.storms[0].deliveries}
            assert sorted(found[event_id] for event_id in hour.lost) == [
                "applied",
                "applied",
                "ignored",
                "ignored",
            ]
            assert list(found.values()).count("duplicate") == len(recent) - len(losing)
        # The story did what the policy says (with or without the late ones).
        assert plans_and_balances(platform, users) == {
            # Starter 2,000 + a pack 1,000, then Pro prorated from 00:15 of
            # 31 days (3,000 more x 44,625/44,640 min), the pack disputed away.
            "alice": (2000 + 1000 + 2999 - 1000, "pro"),
            # Pro 5,000, 3,000 spent, renewed: 5,000 (no rollover on Pro).
            "bob": (5000, "pro"),
            "cleo": (5000, "pro"),
            # 100 + a pack 1,000, 800 spent (the older lot first: 700 of the
            # pack's), the top-up's 1,000; the refund claws back what remains
            # of the pack (300).
            "dave": (100 + 1000 - 800 + 1000 - 300, "free"),
            "eve": (0, "free"),
        }
        before = snapshot(platform)
        assert len(recent) >= 15
        assert {event["type"] for event in recent} >= {
            "checkout.session.completed",
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "invoice.paid",
            "payment_intent.succeeded",
            "charge.refunded",
            "charge.dispute.created",
        }

        # 1. The hour again, shuffled, to one server.
        storm = WebhookStorm(fake, [one + WEBHOOK], rng)
        storm.inject()
        storm.heal()
        assert storm.sent == len(recent)
        assert storm.failures() == []
        assert storm.storms[0].outcomes() == {"duplicate": len(recent)}
        assert changes(before, snapshot(platform)) == []

        # 2. Two storms at once, on two servers.
        storms = [
            WebhookStorm(fake, [one + WEBHOOK], random.Random(1)),
            WebhookStorm(fake, [two + WEBHOOK], random.Random(2)),
        ]
        storm_at_once(storms)
        for each in storms:
            assert each.failures() == []
            assert each.storms[0].outcomes() == {"duplicate": len(recent)}
        assert changes(before, snapshot(platform)) == []

        # 3. Two storms at once, every event under a new id.
        renamed = [
            WebhookStorm(fake, [one + WEBHOOK], random.Random(3), new_ids=True),
            WebhookStorm(fake, [two + WEBHOOK], random.Random(4), new_ids=True),
        ]
        storm_at_once(renamed)
        for each in renamed:
            assert each.failures() == []
            assert set(each.storms[0].outcomes()) <= {"ignored"}, each.storms[0].deliveries
        after = snapshot(platform)
        found = changes(without(before, EVENT_RECORD), without(after, EVENT_RECORD))
        assert found == []
        assert len(after[EVENT_RECORD]) == len(before[EVENT_RECORD]) + 2 * len(recent)
        assert plans_and_balances(platform, users) == plans_and_balances(second, users)

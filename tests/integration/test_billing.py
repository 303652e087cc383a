"""The plan lifecycle on the sandbox backend, driven by the test's clock and
the worker's clock job, with the books checked after every step: subscribe,
renew, upgrade, downgrade, cancel, a failed payment and its grace period,
credit packs, catching up after downtime, the clock running twice; a hosted
checkout backend (what Stripe will be) applied by its webhook calls; the pure
rules (periods, proration, grace, pack lifetimes)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Table, func, select

from plasmaart.billing.backends import (
    ChargeOutcome,
    Checkout,
    CheckoutOutcome,
    Customer,
    Paid,
    Redirect,
)
from plasmaart.billing.errors import NoSubscription, PaymentFailed, RenewalPending
from plasmaart.billing.packs import PackPurchase
from plasmaart.billing.periods import period_end_after
from plasmaart.billing.repository import Subscription
from plasmaart.billing.rules import grace_ends_at, is_upgrade, pack_expires_at, prorated_cents
from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.billing.sandbox_clock import SandboxTestClock
from plasmaart.billing.tasks import ClockReport, run_billing_clock
from plasmaart.catalog import CreditPack, PlanSpec, load_catalog
from plasmaart.clock import ManualClock
from plasmaart.db.tables import lots, payments
from plasmaart.generation.errors import ModelNotInPlan
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
CATALOG = load_catalog()


# -- helpers -----------------------------------------------------------------


def customer(platform: Platform, email: str = "kai@example.com") -> Customer:
    with platform.db.write() as conn:
        user = platform.accounts.create_user(conn, email, "a long password")
        return platform.billing.customer(conn, user.id)


def subscribe(platform: Platform, who: Customer, plan: str) -> Subscription:
    with platform.db.write() as conn:
        result = platform.billing.subscriptions.subscribe(conn, who, plan)
    assert isinstance(result, Subscription)
    return result


def tick(platform: Platform) -> None:
    """One turn of the worker's clock (billing, then the expiry sweep)."""
    Worker(platform).run_once()


def state(platform: Platform, who: Customer) -> tuple[int, str, Subscription | None]:
    """Available credits, the plan in force, the subscription; and the books balance."""
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        available = platform.ledger.balance(conn, who.wallet_id).available
        plan = platform.billing.plans.plan_of(conn, who.wallet_id).id
        return available, plan, platform.billing.plans.subscription(conn, who.wallet_id)


def paid(platform: Platform, who: Customer) -> list[tuple[str, str, int, int]]:
    """(kind, status, amount, credits) of the customer's payments, oldest first."""
    with platform.db.read() as conn:
        found = platform.billing.payments.history(conn, who.user_id, limit=200)
    return [(p.kind, p.status, p.amount_cents, p.credits) for p in reversed(found)]


def spend(platform: Platform, who: Customer, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        hold = platform.ledger.hold(conn, who.wallet_id, credits, idempotency_key=f"{key}:hold")
        platform.ledger.capture(conn, hold.hold_id, credits, idempotency_key=f"{key}:capture")


def set_card(platform: Platform, who: Customer, *, declines: bool) -> None:
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, who.user_id, declines=declines)


def count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- the plan lifecycle --------------------------------------------------------


def test_a_year_of_starter(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    sub = subscribe(platform, kai, "starter")
    assert (sub.status, sub.current_period_start, sub.current_period_end) == (
        "active",
        JAN_1,
        FEB_1,
    )
    assert state(platform, kai)[:2] == (2000, "starter")
    spend(platform, kai, 1500, "january")
    clock.set(JAN_1 + timedelta(days=10))
    with platform.db.write() as conn:
        pack = platform.billing.packs.buy(conn, kai, "pack-1000", idempotency_key=None)
    assert isinstance(pack, PackPurchase)
    assert (pack.credits, pack.balance, pack.expires_at) == (1000, 1500, None)
    tick(platform)  # nothing fell due yet
    assert state(platform, kai)[0] == 1500
    # Feb 1: the 500 unused monthly credits expire (no rollover), 2000 new ones.
    clock.set(FEB_1)
    tick(platform)
    available, plan, sub_after = state(platform, kai)
    assert (available, plan) == (3000, "starter")
    assert sub_after is not None
    assert (sub_after.current_period_start, sub_after.current_period_end) == (FEB_1, MAR_1)
    # Spend into the pack: monthly credits burn first (they expire first).
    spend(platform, kai, 2500, "february")
    clock.set(MAR_1)
    tick(platform)
    assert state(platform, kai)[0] == 2000 + 500
    # The rest of the year, untouched: each month the same 2000 plus the pack's 500.
    for month in range(4, 13):
        clock.set(datetime(2026, month, 1, tzinfo=UTC))
        tick(platform)
        tick(platform)  # a second turn finds nothing to do
        assert state(platform, kai)[:2] == (2500, "starter")
    assert paid(platform, kai) == [
        ("subscription", "succeeded", 1900, 2000),
        ("pack", "succeeded", 1200, 1000),
        *[("renewal", "succeeded", 1900, 2000)] * 11,
    ]


def test_upgrade_is_immediate_and_prorated(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    spend(platform, kai, 300, "early")
    # 16 of January's 31 days are left: (4900 - 1900) * 16 / 31 = 1548.39 cents,
    # and (5000 - 2000) * 16 / 31 = 1548.39 credits, rounded alike.
    clock.set(JAN_1 + timedelta(days=15))
    with platform.db.write() as conn:
        upgraded = platform.billing.subscriptions.change_plan(conn, kai, "pro")
    assert (upgraded.plan, upgraded.pending_plan, upgraded.current_period_end) == (
        "pro",
        None,
        FEB_1,
    )
    available, plan, _ = state(platform, kai)
    assert (available, plan) == (1700 + 1548, "pro")
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 1548, 1548)
    with platform.db.read() as conn:
        lot = next(
            lot for lot in platform.ledger.balance(conn, kai.wallet_id).lots if lot.granted == 1548
        )
    assert lot.expires_at == FEB_1
    # Renewal on Pro: every monthly credit of January expires, 5000 granted.
    clock.set(FEB_1)
    tick(platform)
    assert state(platform, kai)[:2] == (5000, "pro")
    assert paid(platform, kai)[-1] == ("renewal", "succeeded", 4900, 5000)


def test_each_step_up_is_prorated_from_the_plan_before_it(
    platform: Platform, clock: ManualClock
) -> None:
    """Starter, Pro on Jan 10 (22 of 31 days left), Studio on Jan 25 at noon
    (6.5 days left): each upgrade grants and charges its own step, prorated
    by its own time left."""
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    with platform.db.write() as conn:
        platform.billing.subscriptions.change_plan(conn, kai, "pro")
    # 3000 * 22 / 31 = 2129.03 cents and credits.
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 2129, 2129)
    clock.set(datetime(2026, 1, 25, 12, tzinfo=UTC))
    with platform.db.write() as conn:
        platform.billing.subscriptions.change_plan(conn, kai, "studio")
    # $50 * 6.5 / 31 = 1048.39 cents; 6000 * 6.5 / 31 = 1258.06 credits.
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 1048, 1258)
    assert state(platform, kai)[:2] == (2000 + 2129 + 1258, "studio")


def test_up_down_up_within_a_period_grants_once(platform: Platform, clock: ManualClock) -> None:
    """Starter -> Studio, Starter scheduled, Studio again: the last change
    only withdraws the scheduled downgrade; nothing is charged or granted
    twice, and Starter -> Studio cannot be bought a second time."""
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    clock.set(JAN_1 + timedelta(days=30))
    with platform.db.write() as conn:
        platform.billing.subscriptions.change_plan(conn, kai, "studio")
    granted = state(platform, kai)[0]
    for step in ("starter", "studio", "starter", "studio"):
        clock.advance(timedelta(hours=1))
        with platform.db.write() as conn:
            changed = platform.billing.subscriptions.change_plan(conn, kai, step)
        assert (changed.plan, changed.pending_plan) == (
            "studio",
            "starter" if step == "starter" else None,
        )
    assert state(platform, kai)[:2] == (granted, "studio")
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription", "upgrade"]
    # 9000 and $80 for 1 of 31 days: 290.3 credits, 258.1 cents.
    assert paid(platform, kai)[-1] == ("upgrade", "succeeded", 258, 290)


def test_downgrade_waits_for_the_period_end(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "studio")
    clock.set(JAN_1 + timedelta(days=3))
    with platform.db.write() as conn:
        scheduled = platform.billing.subscriptions.change_plan(conn, kai, "starter")
    assert (scheduled.plan, scheduled.pending_plan) == ("studio", "starter")
    assert state(platform, kai)[:2] == (11000, "studio")
    assert len(paid(platform, kai)) == 1  # nothing charged or refunded
    clock.set(FEB_1 - timedelta(seconds=1))
    tick(platform)
    assert state(platform, kai)[:2] == (11000, "studio")
    clock.set(FEB_1)
    report = run_billing_clock(platform.db, platform.billing)
    assert report["downgraded"] == 1
    tick(platform)
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (2000, "starter")
    assert sub is not None
    assert sub.pending_plan is None
    assert paid(platform, kai)[-1] == ("renewal", "succeeded", 1900, 2000)


def test_cancel_falls_to_free_at_the_period_end(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "pro")
    with platform.db.write() as conn:
        platform.billing.packs.buy(conn, kai, "pack-3000", idempotency_key=None)
        canceling = platform.billing.subscriptions.cancel(conn, kai)
        again = platform.billing.subscriptions.cancel(conn, kai)
    assert canceling.cancel_at_period_end
    assert again == canceling
    clock.set(JAN_1 + timedelta(days=20))
    tick(platform)
    assert state(platform, kai)[:2] == (8000, "pro")
    clock.set(FEB_1)
    tick(platform)
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (3000, "free")  # the pack stays, the month is gone
    assert sub is not None
    assert sub.status == "canceled"
    assert len(paid(platform, kai)) == 2  # the subscription and the pack: no renewal
    with platform.db.read() as conn:
        user = platform.accounts.get(conn, kai.user_id)
    with pytest.raises(ModelNotInPlan), platform.db.write() as conn:
        platform.generations.submit(conn, user, GenerationRequest("veo3", "a red fox"))
    with pytest.raises(NoSubscription), platform.db.write() as conn:
        platform.billing.subscriptions.cancel(conn, kai)
    # Subscribing again starts a new period from now, on the same subscription.
    clock.set(FEB_1 + timedelta(days=3))
    again_sub = subscribe(platform, kai, "starter")
    assert (again_sub.id, again_sub.current_period_end) == (sub.id, MAR_1 + timedelta(days=3))
    assert state(platform, kai)[:2] == (5000, "starter")


def test_current_plan_withdraws_a_scheduled_change(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "pro")
    with platform.db.write() as conn:
        platform.billing.subscriptions.cancel(conn, kai)
        restored = platform.billing.subscriptions.change_plan(conn, kai, "pro")
        assert (restored.cancel_at_period_end, restored.pending_plan) == (False, None)
        platform.billing.subscriptions.change_plan(conn, kai, "starter")
        restored = platform.billing.subscriptions.change_plan(conn, kai, "pro")
        assert (restored.cancel_at_period_end, restored.pending_plan) == (False, None)
        # Another plan change withdraws a cancellation too.
        platform.billing.subscriptions.cancel(conn, kai)
        downgrading = platform.billing.subscriptions.change_plan(conn, kai, "starter")
        assert (downgrading.cancel_at_period_end, downgrading.pending_plan) == (False, "starter")
        restored = platform.billing.subscriptions.change_plan(conn, kai, "pro")
    clock.set(FEB_1)
    tick(platform)
    assert state(platform, kai)[:2] == (5000, "pro")


def test_failed_renewal_grace_then_free(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    set_card(platform, kai, declines=True)
    clock.set(FEB_1)
    report = run_billing_clock(platform.db, platform.billing)
    assert report["payment_failed"] == 1
    tick(platform)
    available, plan, sub = state(platform, kai)
    # No new allocation; the plan's benefits last through the grace period.
    assert (available, plan) == (0, "starter")
    assert sub is not None
    assert sub.status == "past_due"
    assert platform.billing.plans.grace_ends_at(sub) == FEB_1 + timedelta(days=7)
    assert paid(platform, kai)[-1] == ("renewal", "failed", 1900, 0)
    clock.set(FEB_1 + timedelta(days=7) - timedelta(seconds=1))
    tick(platform)
    assert state(platform, kai)[1] == "starter"
    clock.set(FEB_1 + timedelta(days=7))
    assert run_billing_clock(platform.db, platform.billing)["grace_ended"] == 1
    available, plan, sub = state(platform, kai)
    assert (available, plan) == (0, "free")
    assert sub is not None
    assert sub.status == "canceled"


def test_canceling_a_past_due_subscription_ends_it(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "pro")
    set_card(platform, kai, declines=True)
    clock.set(FEB_1)
    tick(platform)
    with platform.db.write() as conn:
        ended = platform.billing.subscriptions.cancel(conn, kai)
    assert ended.status == "canceled"
    assert state(platform, kai)[:2] == (0, "free")


def test_paying_a_past_due_subscription_restores_it(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    set_card(platform, kai, declines=True)
    clock.set(FEB_1)
    tick(platform)
    clock.set(FEB_1 + timedelta(days=2))
    with platform.db.read() as conn:
        before = count(conn, payments)
    with pytest.raises(PaymentFailed), platform.db.write() as conn:
        platform.billing.subscriptions.pay(conn, kai)
    with platform.db.read() as conn:
        assert count(conn, payments) == before  # a refused payment writes nothing
    set_card(platform, kai, declines=False)
    with platform.db.write() as conn:
        restored = platform.billing.subscriptions.pay(conn, kai)
    # The period keeps its anchor: Feb 1 to Mar 1, its credits granted now.
    assert (restored.status, restored.current_period_start, restored.current_period_end) == (
        "active",
        FEB_1,
        MAR_1,
    )
    assert state(platform, kai)[:2] == (2000, "starter")
    # The clock, or a late webhook, reporting the same renewal changes nothing.
    with platform.db.write() as conn:
        platform.billing.subscriptions.renewal_paid(conn, restored.id, period_end=FEB_1)
    tick(platform)
    assert state(platform, kai)[0] == 2000
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription", "renewal", "renewal"]


def test_packs_are_granted_once_paid_and_never_expire(
    platform: Platform, clock: ManualClock
) -> None:
    kai = customer(platform)
    set_card(platform, kai, declines=True)
    with pytest.raises(PaymentFailed), platform.db.write() as conn:
        platform.billing.packs.buy(conn, kai, "pack-1000", idempotency_key="first")
    assert state(platform, kai)[0] == 0
    set_card(platform, kai, declines=False)
    with platform.db.write() as conn:
        first = platform.billing.packs.buy(conn, kai, "pack-1000", idempotency_key="first")
        repeat = platform.billing.packs.buy(conn, kai, "pack-1000", idempotency_key="first")
        second = platform.billing.packs.buy(conn, kai, "pack-10000", idempotency_key=None)
    assert isinstance(first, PackPurchase)
    assert isinstance(second, PackPurchase)
    assert repeat == first
    with platform.db.read() as conn:
        references = {
            row.reference: row.granted
            for row in conn.execute(select(lots).where(lots.c.wallet_id == kai.wallet_id))
        }
    # Each purchase its own lot, pointing at its payment (for a refund's clawback).
    assert references == {first.payment_id: 1000, second.payment_id: 10000}
    clock.set(JAN_1 + timedelta(days=3 * 366))
    tick(platform)
    assert state(platform, kai)[:2] == (11000, "free")


def test_purchased_credits_expire_when_configured(platform: Platform, clock: ManualClock) -> None:
    platform.billing.packs.purchased_credits_expire_days = 30
    kai = customer(platform)
    with platform.db.write() as conn:
        bought = platform.billing.packs.buy(conn, kai, "pack-1000", idempotency_key=None)
    assert isinstance(bought, PackPurchase)
    assert bought.expires_at == JAN_1 + timedelta(days=30)
    clock.set(JAN_1 + timedelta(days=30))
    tick(platform)
    assert state(platform, kai)[0] == 0


def test_catching_up_after_downtime(platform: Platform, clock: ManualClock) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    clock.set(datetime(2026, 4, 15, tzinfo=UTC))
    report = run_billing_clock(platform.db, platform.billing)
    assert report["renewed"] == 3  # Feb 1, Mar 1 and Apr 1
    tick(platform)
    available, _, sub = state(platform, kai)
    assert sub is not None
    assert (available, sub.current_period_end) == (2000, datetime(2026, 5, 1, tzinfo=UTC))
    assert len(paid(platform, kai)) == 4


def test_the_clock_twice_or_in_two_workers_grants_once(
    platform: Platform, clock: ManualClock
) -> None:
    kai = customer(platform)
    subscribe(platform, kai, "starter")
    clock.set(FEB_1)
    assert run_billing_clock(platform.db, platform.billing)["renewed"] == 1
    assert run_billing_clock(platform.db, platform.billing).total == 0
    clock.set(MAR_1)
    reports: list[ClockReport] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        reports.append(run_billing_clock(platform.db, platform.billing))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(report["renewed"] for report in reports) == [0, 1]
    tick(platform)
    assert state(platform, kai)[0] == 2000
    assert [kind for kind, *_ in paid(platform, kai)] == ["subscription", "renewal", "renewal"]


def test_every_process_sees_the_test_clock(platform: Platform, clock: ManualClock) -> None:
    test_clock = platform.billing.test_clock
    assert test_clock is not None
    # Another process: its own clock object over the same database.
    elsewhere = SandboxTestClock(clock, platform.db, refresh_s=0.05)
    try:
        assert elsewhere.now() == platform.clock.now() == JAN_1
        with platform.db.write() as conn:
            test_clock.advance(conn, timedelta(days=31))
        # The process that moved it sees it at once; the others within refresh_s.
        assert platform.clock.now() == FEB_1
        deadline = time.monotonic() + 5
        while elsewhere.now() != FEB_1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert elsewhere.now() == FEB_1
        clock.advance(timedelta(hours=1))  # tests still move the base clock
        assert elsewhere.now() == FEB_1 + timedelta(hours=1)
    finally:
        elsewhere.close()


# -- a hosted checkout (what Stripe is) -----------------------------------------


@dataclass
class HostedCheckout:
    """A backend whose customers pay on its own page and whose webhooks drive
    the periods, as Stripe's do; it records what it was asked."""

    name: str = "hosted"
    renews_on_clock: bool = False
    asked: list[tuple[str, str]] = field(default_factory=list)

    def checkout_subscription(
        self,
        conn: Connection,  # noqa: ARG002 - nothing of ours to read
        *,
        customer: Customer,
        plan: PlanSpec,
        idempotency_key: str,
    ) -> CheckoutOutcome:
        self.asked.append(("subscription", idempotency_key))
        return Redirect(f"https://pay.example/{plan.id}?for={customer.email}")

    def checkout_pack(
        self,
        conn: Connection,  # noqa: ARG002
        *,
        customer: Customer,
        pack: CreditPack,
        idempotency_key: str,
    ) -> CheckoutOutcome:
        self.asked.append(("pack", idempotency_key))
        return Redirect(f"https://pay.example/{pack.id}?for={customer.email}")

    def change_plan(self, conn: Connection, **details: object) -> ChargeOutcome:  # noqa: ARG002
        self.asked.append(("change", str(details["effective"])))
        return Paid("in_upgrade")

    def cancel(self, conn: Connection, **details: object) -> None:  # noqa: ARG002
        self.asked.append(("cancel", ""))

    def charge_renewal(self, conn: Connection, **details: object) -> ChargeOutcome:  # noqa: ARG002
        self.asked.append(("renewal", str(details["idempotency_key"])))
        return Paid("in_renewal")


def test_a_hosted_checkout_is_applied_by_its_webhooks(
    platform: Platform, clock: ManualClock
) -> None:
    hosted = HostedCheckout()
    platform.billing.backends.by_name["hosted"] = hosted
    platform.billing.backends.default = hosted
    kai = customer(platform)
    with platform.db.write() as conn:
        checkout = platform.billing.subscriptions.subscribe(conn, kai, "pro")
        pack_checkout = platform.billing.packs.buy(conn, kai, "pack-1000", idempotency_key=None)
    assert checkout == Checkout("https://pay.example/pro?for=kai@example.com")
    assert pack_checkout == Checkout("https://pay.example/pack-1000?for=kai@example.com")
    # Each checkout carries a key for the provider's own idempotency.
    assert [kind for kind, key in hosted.asked if key] == ["subscription", "pack"]
    assert state(platform, kai) == (0, "free", None)  # nothing until paid
    # checkout.session.completed, as the webhook would apply it:
    with platform.db.write() as conn:
        sub = platform.billing.subscriptions.subscribe_paid(
            conn,
            user_id=kai.user_id,
            wallet_id=kai.wallet_id,
            plan_id="pro",
            backend="hosted",
            external_id="sub_123",
            payment_external_id="in_first",
        )
        platform.billing.packs.paid(
            conn,
            user_id=kai.user_id,
            wallet_id=kai.wallet_id,
            pack_id="pack-1000",
            backend="hosted",
            idempotency_key="cs_pack_1",
        )
        platform.billing.packs.paid(  # the same event again
            conn,
            user_id=kai.user_id,
            wallet_id=kai.wallet_id,
            pack_id="pack-1000",
            backend="hosted",
            idempotency_key="cs_pack_1",
        )
    assert (sub.backend, sub.external_id) == ("hosted", "sub_123")
    assert state(platform, kai)[:2] == (6000, "pro")
    # The provider drives the periods: the clock leaves its subscription alone...
    clock.set(FEB_1)
    assert run_billing_clock(platform.db, platform.billing).total == 0
    with pytest.raises(RenewalPending), platform.db.write() as conn:
        platform.billing.subscriptions.change_plan(conn, kai, "studio")
    # ...until invoice.paid arrives (twice: applied once).
    with platform.db.write() as conn:
        platform.billing.subscriptions.renewal_paid(
            conn, sub.id, period_end=FEB_1, external_id="in_2"
        )
        platform.billing.subscriptions.renewal_paid(
            conn, sub.id, period_end=FEB_1, external_id="in_2"
        )
    tick(platform)
    assert state(platform, kai)[:2] == (6000, "pro")
    # invoice.payment_failed at the next period end, then the subscription deleted.
    clock.set(MAR_1)
    with platform.db.write() as conn:
        late = platform.billing.subscriptions.renewal_failed(
            conn, sub.id, period_end=MAR_1, reason="declined"
        )
        assert late.status == "past_due"
        ended = platform.billing.subscriptions.end_subscription(conn, sub.id)
    assert ended.status == "canceled"
    tick(platform)
    assert state(platform, kai)[:2] == (1000, "free")
    assert [(kind, status) for kind, status, *_ in paid(platform, kai)] == [
        ("subscription", "succeeded"),
        ("pack", "succeeded"),
        ("renewal", "succeeded"),
        ("renewal", "failed"),
    ]


# -- the pure rules ----------------------------------------------------------------


def test_periods_keep_the_anchor_day() -> None:
    anchor = datetime(2026, 1, 31, 9, tzinfo=UTC)
    ends, start = [], anchor
    for _ in range(4):
        start = period_end_after(anchor, start)
        ends.append(start.date().isoformat())
    assert ends == ["2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]
    assert period_end_after(anchor, datetime(2026, 2, 10, tzinfo=UTC)).day == 28


@pytest.mark.parametrize(
    ("amount", "now", "expected"),
    [
        (3000, JAN_1, 3000),  # the whole period ahead
        (3000, JAN_1 + timedelta(days=15), 1548),  # 16 of 31 days: 1548.39
        (3100, JAN_1 + timedelta(days=15, hours=12), 1550),  # exactly half: 1550
        (1, JAN_1 + timedelta(days=15, hours=12), 1),  # half a cent rounds up
        (3000, FEB_1, 0),
        (3000, FEB_1 + timedelta(days=1), 0),  # past the end: nothing left
    ],
)
def test_proration(amount: int, now: datetime, expected: int) -> None:
    assert prorated_cents(amount, JAN_1, FEB_1, now) == expected


def test_upgrades_grace_and_pack_lifetimes() -> None:
    starter, pro = CATALOG.plan("starter"), CATALOG.plan("pro")
    assert is_upgrade(starter, pro)
    assert not is_upgrade(pro, starter)
    assert not is_upgrade(pro, pro)
    assert grace_ends_at(FEB_1, 7, MAR_1) == FEB_1 + timedelta(days=7)
    assert grace_ends_at(FEB_1, 60, MAR_1) == MAR_1  # never past the unpaid period
    pack = CATALOG.pack("pack-1000")
    assert pack_expires_at(pack, None, JAN_1) is None
    assert pack_expires_at(pack, 90, JAN_1) == JAN_1 + timedelta(days=90)
    lasting = pack.model_copy(update={"expires_after_days": 10})
    assert pack_expires_at(lasting, 90, JAN_1) == JAN_1 + timedelta(days=10)

"""Subscriptions, credit packs and payments: the plan lifecycle over time.

Every credit movement goes through the ledger, in the caller's transaction,
with an idempotency key derived from the subscription and its period (or the
purchase), so that the clock running twice, or in two workers, grants once:

* subscribe: ``active`` at once, the period's monthly credits granted as a lot
  that expires at the period end;
* upgrade (a pricier plan): at once; the differences in monthly credits
  and in price are both prorated by the same fraction of the period left
  (``rules.prorate_upgrade``), the credits granted until the period end, the
  price charged now; ``preview`` shows both before the customer confirms;
* downgrade (a cheaper plan): ``pending_plan``, applied at the period end;
* cancel: ``cancel_at_period_end``; at the period end, Free;
* suspension of the account: ``stops_for_suspension``; no renewal is charged,
  the subscription ends at its period end unless the account is reinstated
  first (the customer's own cancellation is kept apart, and survives);
* renewal at each period end (``ledger.renew``): the ended period's monthly
  credits expire but for the plan's rollover cap, the new allocation is
  granted; purchased credits are untouched;
* a failed renewal payment: ``past_due``, no new allocation; paying restores
  the subscription with its allocation; after the grace period, Free;
* credit packs, on any plan: granted once paid, as their own lot whose
  ``reference`` is the payment id.

Which backend moves the money is ``backends.py``'s business; the methods under
"what a backend reports" are what its webhooks (or the sandbox, at once) call.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.billing import repository as repo
from plasmaart.billing.backends import BillingBackend, Customer, Declined, Paid, Redirect
from plasmaart.billing.errors import (
    AlreadySubscribed,
    NoSubscription,
    NothingToPay,
    PaymentFailed,
    RenewalPending,
    SubscriptionPastDue,
)
from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.notices import RenewalDeclined, RenewalPaid
from plasmaart.billing.periods import period_end_after
from plasmaart.billing.repository import Payment, PaymentKind, Subscription
from plasmaart.billing.rules import (
    Proration,
    grace_ends_at,
    is_upgrade,
    pack_expires_at,
    prorate_upgrade,
)
from plasmaart.billing.sandbox_clock import SandboxTestClock
from plasmaart.caches import CacheHub, TtlLru
from plasmaart.catalog import Catalog, CreditPack, PlanSpec
from plasmaart.catalog.in_force import CatalogInForce
from plasmaart.clock import Clock
from plasmaart.db.engine import pending_invalidations
from plasmaart.errors import InvalidInput
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService
from plasmaart.outbox import Fact, Outbox

__all__ = [
    "AlreadySubscribed",
    "BillingService",
    "Checkout",
    "ClawbackOutcome",
    "ClockStep",
    "PackPurchase",
    "Payment",
    "PlanChangePreview",
    "Subscription",
    "effective_plan",
]

# The shortest monthly period (February).
MIN_PERIOD_DAYS = 28
# What the clock did to one subscription in one step.
ClockStep = Literal["renewed", "downgraded", "payment_failed", "canceled", "grace_ended"]
# How long a preview's proration moment (``prorated_at``) may be handed back
# to ``change_plan`` as ``prorate_at``: the customer reading the numbers and
# confirming them; and how far ahead of this process's clock it may be
# (another process may have re-read the sandbox test clock a moment sooner).
QUOTE_VALID = timedelta(minutes=15)
QUOTE_CLOCK_SKEW = timedelta(seconds=5)


@dataclass(frozen=True)
class Checkout:
    """The customer pays on the backend's page; the webhook finishes the job."""

    url: str


@dataclass(frozen=True)
class PlanChangePreview:
    """What subscribing or changing to ``plan`` would do, charging nothing:
    ``amount_cents`` charged and ``credits_now`` granted at once (an upgrade:
    both prorated from ``prorated_at``, which ``change_plan`` accepts back
    as ``prorate_at`` so that it applies these very numbers), and what the
    renewal at ``renews_at`` will charge."""

    plan: str
    change: Literal["subscribe", "upgrade", "downgrade", "resume"]
    amount_cents: int
    credits_now: int
    takes_effect: Literal["now", "period_end"]
    renews_at: datetime
    renews_amount_cents: int
    prorated_at: datetime | None = None


@dataclass(frozen=True)
class PackPurchase:
    payment_id: str
    pack: str
    credits: int
    balance: int
    lot_id: str | None
    expires_at: datetime | None


ClawbackReason = Literal["refund", "dispute"]


@dataclass(frozen=True)
class ClawbackOutcome:
    """A paid purchase taken back by a refund or a dispute: ``clawed_back``
    credits of it removed from the wallet, ``spent`` credits of it already
    consumed (and ``held`` by running generations). ``spent > 0`` is what the
    policy's review flag is about."""

    user_id: str
    wallet_id: str
    payment_id: str
    clawed_back: int
    spent: int
    held: int
    reason: ClawbackReason

    @property
    def needs_review(self) -> bool:
        return self.spent > 0


def effective_plan(catalog: Catalog, plan_id: str, status: str) -> PlanSpec:
    """The plan a subscription in ``status`` gives: its own while active or past
    due (the grace period), Free once canceled."""
    if status == "canceled":
        return catalog.default_plan
    try:
        return catalog.plan(plan_id)
    except KeyError:
        # A plan the operator removed from the catalog: its subscribers keep
        # nothing they could not be sold today.
        return catalog.default_plan


def _key_time(moment: datetime) -> str:
    return moment.isoformat()


def _to_second(moment: datetime) -> datetime:
    """Upgrades are prorated from a whole second, as Stripe's
    ``proration_date`` is, so both backends reckon from the same moment."""
    return moment.replace(microsecond=0)


class BillingService:
    CACHED_WALLETS = 10_000

    def __init__(
        self,
        clock: Clock,
        catalog: Catalog,
        ledger: LedgerService,
        *,
        backends: Mapping[str, BillingBackend],
        default_backend: str = "sandbox",
        grace_days: int = 7,
        purchased_credits_expire_days: int | None = None,
        test_clock: SandboxTestClock | None = None,
        in_force: CatalogInForce | None = None,
        outbox: Outbox,
        caches: CacheHub | None = None,
    ) -> None:
        self.clock = clock
        self.catalog = catalog
        self.ledger = ledger
        # The sandbox is always among them (``billing.create_backends``):
        # ``plasmaart users create --plan`` subscribes through it whatever
        # backend sells to customers.
        self.backends: dict[str, BillingBackend] = dict(backends)
        # The backend new checkouts go through; a subscription keeps its own.
        self.backend = self.backends[default_backend]
        self.grace_days = grace_days
        self.purchased_credits_expire_days = purchased_credits_expire_days
        # Set when billing is the sandbox: what /v1/admin/clock/advance moves.
        self.test_clock = test_clock
        # The catalog with the announced changes due by a moment: a period is
        # priced and granted by the catalog in force when it starts.
        self.in_force = in_force or CatalogInForce(catalog)
        # Where renewal and failed-payment notices are queued.
        self.outbox = outbox
        # Who hears of clawbacks and payments (fair use registers itself).
        self.hooks = BillingHooks()
        # The subscription of each wallet, per process (attach_caches).
        self._hub: CacheHub | None = None
        self._subscriptions: TtlLru[str, tuple[Subscription | None]] | None = None
        if caches is not None:
            self.attach_caches(caches)

    # -- reads -------------------------------------------------------------

    def subscription(self, conn: Connection, wallet_id: str) -> Subscription | None:
        return repo.subscription_of_wallet(conn, wallet_id)

    def current_plan(self, conn: Connection, wallet_id: str, *, fresh: bool = False) -> PlanSpec:
        """The plan whose benefits the wallet has now: its subscription's while
        active or past due (within the grace period), else Free. A period end
        the clock has not reached yet already counts: a canceled subscription
        gives Free from its period end, a past-due one from its grace end.

        From the process's cache (``attach_caches``) unless ``fresh``: a write
        that decides by the plan (a team's seats) reads it from its own
        transaction instead."""
        return self.current_plans(conn, [wallet_id], fresh=fresh)[wallet_id]

    def current_plans(
        self, conn: Connection, wallet_ids: Iterable[str], *, fresh: bool = False
    ) -> dict[str, PlanSpec]:
        """``current_plan`` of each of ``wallet_ids``, reading the subscriptions
        and the announced changes once for all of them (a queue claim weighs
        dozens of wallets at a time)."""
        wanted = list(dict.fromkeys(wallet_ids))
        if fresh:
            found = repo.subscriptions_of_wallets(conn, wanted)
        else:
            found = self._subscriptions_of(conn, wanted)
        now = self.clock.now()
        changes = self.in_force.changes(conn) if wanted else ()

        def catalog_at(moment: datetime) -> Catalog:
            # What ``self._catalog_at(conn, moment)`` reads, from the one query.
            return self.in_force.applying([c for c in changes if c.effective_at <= moment])

        plans: dict[str, PlanSpec] = {}
        for wallet_id in wanted:
            subscription = found.get(wallet_id)
            if subscription is None:
                plans[wallet_id] = catalog_at(now).default_plan
                continue
            status = subscription.status
            if status == "active" and subscription.ends_at_period_end:
                if now >= subscription.current_period_end:
                    status = "canceled"
            elif status == "past_due" and now >= self.grace_ends_at(subscription):
                status = "canceled"
            # A period keeps the terms it started with; Free is Free as of now.
            at = now if status == "canceled" else subscription.current_period_start
            plans[wallet_id] = effective_plan(catalog_at(at), subscription.plan, status)
        return plans

    def attach_caches(self, hub: CacheHub) -> None:
        """Cache each wallet's subscription, and the announced changes, in
        ``hub``: ``current_plan(s)`` then read the database only on a miss.
        Writes of subscriptions invalidate ``wallet:<id>`` (a new one) and
        ``subscription:<id>`` (a changed one); see billing/repository.py."""
        self._hub = hub
        self._subscriptions = hub.cache("subscriptions", self.CACHED_WALLETS)
        self.in_force.attach(hub)

    def _subscriptions_of(self, conn: Connection, wallet_ids: list[str]) -> dict[str, Subscription]:
        """``repo.subscriptions_of_wallets``, from the cache where it can."""
        hub, cache = self._hub, self._subscriptions
        if hub is None or cache is None or pending_invalidations(conn):
            return repo.subscriptions_of_wallets(conn, wallet_ids)
        ttl = hub.ttl()
        found: dict[str, Subscription] = {}
        missing: list[str] = []
        for wallet_id in wallet_ids:
            hit: tuple[Subscription | None] | None = cache.get(wallet_id, ttl)
            if hit is None:
                missing.append(wallet_id)
            elif hit[0] is not None:
                found[wallet_id] = hit[0]
        if missing:
            epoch, born = cache.epoch, time.monotonic()
            read = repo.subscriptions_of_wallets(conn, missing)
            for wallet_id in missing:
                subscription = read.get(wallet_id)
                tags = [f"wallet:{wallet_id}"]
                if subscription is not None:
                    found[wallet_id] = subscription
                    tags.append(f"subscription:{subscription.id}")
                cache.put(wallet_id, (subscription,), epoch=epoch, born=born, tags=tags)
        return found

    def grace_ends_at(self, subscription: Subscription) -> datetime:
        """When a past-due ``subscription`` falls to Free if nobody pays."""
        end = subscription.current_period_end
        return grace_ends_at(end, self.grace_days, self._next_period_end(subscription))

    def customer(self, conn: Connection, user_id: str) -> Customer:
        wallet_id = self.ledger.wallet_of(conn, "user", user_id)
        return Customer(user_id, wallet_id, repo.user_email(conn, user_id))

    def payments(
        self, conn: Connection, user_id: str, *, limit: int, before: str | None = None
    ) -> list[Payment]:
        """The user's payments, newest first; ``before``: a payment id (the cursor)."""
        return repo.payments_of_user(conn, user_id, before=before, limit=limit)

    # -- what customers ask for ---------------------------------------------

    def subscribe(
        self, conn: Connection, customer: Customer, plan_id: str
    ) -> Subscription | Checkout:
        """Subscribe to ``plan_id`` through the configured backend: the
        subscription at once when it charges at once, else its checkout page."""
        plan = self._paid_plan(plan_id, catalog=self._catalog_at(conn))
        existing = self._current(conn, customer.wallet_id)
        if existing is not None and existing.status != "canceled":
            raise AlreadySubscribed(
                f"already subscribed to {existing.plan}; change the plan instead"
            )
        now = self.clock.now()
        outcome = self.backend.checkout_subscription(
            conn,
            customer=customer,
            plan=plan,
            # The plan in the key: two Checkout pages for two plans opened in
            # one instant are two sessions (Stripe refuses a key reused with
            # other parameters); one plan asked twice is one session.
            idempotency_key=f"subscribe:{customer.wallet_id}:{plan.id}:{_key_time(now)}",
        )
        if isinstance(outcome, Redirect):
            return Checkout(outcome.url)
        if isinstance(outcome, Declined):
            raise PaymentFailed(outcome.reason)
        return self.subscribe_paid(
            conn,
            user_id=customer.user_id,
            wallet_id=customer.wallet_id,
            plan_id=plan.id,
            backend=self.backend.name,
            payment_external_id=outcome.external_id,
        )

    def preview(self, conn: Connection, customer: Customer, plan_id: str) -> PlanChangePreview:
        """What ``subscribe`` (without a subscription) or ``change_plan``
        (with one) to ``plan_id`` would charge and grant now, refused as they
        would refuse it; reads only."""
        now = self.clock.now()
        subscription = repo.subscription_of_wallet(conn, customer.wallet_id)
        if subscription is None or subscription.status == "canceled":
            plan = self._paid_plan(plan_id, catalog=self._catalog_at(conn))
            return PlanChangePreview(
                plan=plan.id,
                change="subscribe",
                amount_cents=plan.price_cents,
                credits_now=plan.monthly_credits,
                takes_effect="now",
                renews_at=period_end_after(now, now),
                renews_amount_cents=plan.price_cents,
            )
        plan, current = self._plan_change(conn, subscription, plan_id)
        end = subscription.current_period_end
        renews = self._plan_or_none(plan.id, self._catalog_at(conn, end)) or plan
        if current is None or not is_upgrade(current, plan):
            return PlanChangePreview(
                plan=plan.id,
                change="resume" if current is None else "downgrade",
                amount_cents=0,
                credits_now=0,
                takes_effect="period_end",
                renews_at=end,
                renews_amount_cents=renews.price_cents,
            )
        proration = self._prorate(conn, subscription, current, plan, None)
        return PlanChangePreview(
            plan=plan.id,
            change="upgrade",
            amount_cents=proration.amount_cents,
            credits_now=proration.credits,
            takes_effect="now",
            renews_at=end,
            renews_amount_cents=renews.price_cents,
            prorated_at=proration.at,
        )

    def change_plan(
        self,
        conn: Connection,
        customer: Customer,
        plan_id: str,
        *,
        prorate_at: datetime | None = None,
    ) -> Subscription:
        """An upgrade at once (prorated), a downgrade at the period end. The
        plan one is on withdraws a scheduled downgrade or cancellation.
        ``prorate_at``: a preview's ``prorated_at`` (at most ``QUOTE_VALID``
        old), so that the upgrade charges and grants what the preview showed;
        now by default."""
        subscription = self._current(conn, customer.wallet_id)
        if subscription is None or subscription.status == "canceled":
            raise NoSubscription("you have no subscription; subscribe first")
        plan, current = self._plan_change(conn, subscription, plan_id)
        backend = self._backend_of(subscription)
        if current is None:
            return self._schedule(conn, backend, customer, subscription, plan, pending=None)
        if not is_upgrade(current, plan):
            return self._schedule(conn, backend, customer, subscription, plan, pending=plan.id)
        proration = self._prorate(conn, subscription, current, plan, prorate_at)
        if subscription.pending_plan is not None:
            # Withdraw the scheduled plan first: a provider already billing it
            # for the next period (Stripe) prorates from the price it bills,
            # and the upgrade is from the plan held.
            subscription = self._schedule(
                conn, backend, customer, subscription, current, pending=None
            )
        outcome = backend.change_plan(
            conn,
            customer=customer,
            subscription=subscription,
            plan=plan,
            effective="now",
            amount_cents=proration.amount_cents,
            prorate_at=proration.at,
            idempotency_key=self._upgrade_key(subscription, plan),
        )
        if isinstance(outcome, Declined):
            raise PaymentFailed(outcome.reason)
        return self.upgrade_paid(
            conn,
            subscription.id,
            plan_id=plan.id,
            prorated_at=proration.at,
            amount_cents=outcome.amount_cents,
            external_id=outcome.external_id,
        )

    def cancel(self, conn: Connection, customer: Customer) -> Subscription:
        """Cancel at the period end (a past-due subscription: at once, its
        period being over already). Canceling twice changes nothing."""
        subscription = self._current(conn, customer.wallet_id)
        if subscription is None or subscription.status == "canceled":
            raise NoSubscription("you have no subscription to cancel")
        if subscription.cancel_at_period_end:
            return subscription
        backend = self._backend_of(subscription)
        backend.cancel(conn, customer=customer, subscription=subscription)
        if subscription.status == "past_due":
            return self.end_subscription(conn, subscription.id)
        return self._update(conn, subscription, cancel_at_period_end=True, pending_plan=None)

    def pay(self, conn: Connection, customer: Customer) -> Subscription:
        """Pay the unpaid renewal of a past-due subscription: active again,
        with the period's allocation."""
        subscription = self._current(conn, customer.wallet_id)
        if subscription is None or subscription.status == "canceled":
            raise NoSubscription("you have no subscription")
        if subscription.status != "past_due":
            raise NothingToPay("your subscription is paid up")
        plan = self._plan_or_none(
            subscription.plan, self._catalog_at(conn, subscription.current_period_end)
        )
        if plan is None:  # withdrawn from the catalog while unpaid: nothing to renew
            return self.end_subscription(conn, subscription.id)
        outcome = self._backend_of(subscription).charge_renewal(
            conn,
            customer=customer,
            subscription=subscription,
            plan=plan,
            amount_cents=plan.price_cents,
            idempotency_key=self._renewal_key(subscription),
        )
        if isinstance(outcome, Declined):
            raise PaymentFailed(outcome.reason)
        return self.renewal_paid(
            conn,
            subscription.id,
            period_end=subscription.current_period_end,
            external_id=outcome.external_id,
        )

    def buy_pack(
        self, conn: Connection, customer: Customer, pack_id: str, *, idempotency_key: str | None
    ) -> PackPurchase | Checkout:
        """Buy a credit pack through the configured backend. With an
        ``idempotency_key`` (the client's), a repeat returns the first purchase."""
        pack = self._pack(pack_id)
        key = (
            f"pack:{customer.user_id}:{idempotency_key}"
            if idempotency_key
            else f"pack:{new_id('buy')}"
        )
        done = repo.payment_by_key(conn, key)
        if done is not None:
            return self._pack_purchase(conn, done)
        outcome = self.backend.checkout_pack(
            conn, customer=customer, pack=pack, idempotency_key=key
        )
        if isinstance(outcome, Redirect):
            return Checkout(outcome.url)
        if isinstance(outcome, Declined):
            raise PaymentFailed(outcome.reason)
        return self.pack_paid(
            conn,
            user_id=customer.user_id,
            wallet_id=customer.wallet_id,
            pack_id=pack.id,
            backend=self.backend.name,
            idempotency_key=key,
            external_id=outcome.external_id,
        )

    # -- what suspending an account does to its subscription ------------------

    def stop_for_suspension(self, conn: Connection, user_id: str) -> Subscription | None:
        """The user's account is being suspended: no renewal is charged from
        now on. An active subscription ends at its period end unless
        ``resume_after_suspension`` comes first; a past-due one (whose unpaid
        renewal is the next period's) ends now. The customer's own
        cancellation, if any, is left as it is."""
        subscription = self._current(conn, self.ledger.wallet_of(conn, "user", user_id))
        if subscription is None or subscription.status == "canceled":
            return subscription
        customer = self._customer_of(conn, subscription)
        backend = self._backend_of(subscription)
        if subscription.status == "past_due":
            backend.cancel(conn, customer=customer, subscription=subscription)
            return self.end_subscription(conn, subscription.id)
        if subscription.stops_for_suspension:
            return subscription
        if not subscription.cancel_at_period_end:
            backend.stop_renewal(conn, customer=customer, subscription=subscription)
        return self._update(conn, subscription, stops_for_suspension=True)

    def resume_after_suspension(self, conn: Connection, user_id: str) -> Subscription | None:
        """The user's account is reinstated: a subscription stopped by the
        suspension renews again, if its period has not ended meanwhile (then
        it ended, and stays ended) and the customer did not cancel it."""
        # Brought up to date first, the stop still in force: a period that
        # ended while suspended ends the subscription, it does not renew it.
        subscription = self._current(conn, self.ledger.wallet_of(conn, "user", user_id))
        if subscription is None or not subscription.stops_for_suspension:
            return subscription
        if self.clock.now() >= subscription.current_period_end:
            # Over already (the provider ends it, and reports it): too late to renew.
            return subscription
        if not subscription.cancel_at_period_end:
            customer = self._customer_of(conn, subscription)
            self._backend_of(subscription).resume_renewal(
                conn, customer=customer, subscription=subscription
            )
        return self._update(conn, subscription, stops_for_suspension=False)

    # -- what a backend reports (the sandbox at once, Stripe by webhook) ------

    def subscribe_paid(
        self,
        conn: Connection,
        *,
        user_id: str,
        wallet_id: str,
        plan_id: str,
        backend: str,
        external_id: str | None = None,
        payment_external_id: str | None = None,
        period_start: datetime | None = None,
    ) -> Subscription:
        """Start a subscription whose first payment has succeeded: active at
        once, this period's monthly credits granted at once, the payment
        recorded. A canceled subscription of the wallet starts again (its id
        and history kept). ``period_start``: when the provider started the
        period (Stripe), so that its renewals fall on our period ends; now by
        default."""
        plan = self._paid_plan(plan_id, catalog=self._catalog_at(conn, period_start))
        existing = repo.subscription_of_wallet(conn, wallet_id, lock=True)
        if existing is not None and existing.status != "canceled":
            raise AlreadySubscribed(
                f"already subscribed to {existing.plan}; change the plan instead"
            )
        now = self.clock.now() if period_start is None else period_start
        period_end = period_end_after(now, now)
        values: dict[str, Any] = {
            "user_id": user_id,
            "plan_id": plan.id,
            "status": "active",
            "current_period_start": now,
            "current_period_end": period_end,
            "cancel_at_period_end": False,
            "stops_for_suspension": False,
            "pending_plan": None,
            "backend": backend,
            "external_id": external_id,
            "billing_anchor": now,
            "updated_at": now,
        }
        if existing is None:
            subscription_id = new_id("sub")
            repo.insert_subscription(
                conn, id=subscription_id, wallet_id=wallet_id, created_at=now, **values
            )
        else:
            subscription_id = existing.id
            repo.update_subscription(conn, subscription_id, **values)
        payment_id = new_id("pay")
        lot_id = None
        if plan.monthly_credits:
            lot_id = self.ledger.grant(
                conn,
                wallet_id,
                plan.monthly_credits,
                source="subscription",
                expires_at=period_end,
                reference=payment_id,
                memo=f"{plan.name} monthly credits",
                idempotency_key=f"subscription:{subscription_id}:{_key_time(now)}",
            ).lot_id
        self._record_payment(
            conn,
            payment_id=payment_id,
            key=f"subscription:{subscription_id}:{_key_time(now)}",
            user_id=user_id,
            wallet_id=wallet_id,
            subscription_id=subscription_id,
            kind="subscription",
            plan=plan,
            amount_cents=plan.price_cents,
            credits=plan.monthly_credits,
            lot_id=lot_id,
            period=(now, period_end),
            backend=backend,
            external_id=payment_external_id,
        )
        if repo.user_is_suspended(conn, user_id):
            # A checkout paid after the account was suspended (it started
            # before): the period is theirs, the renewal is not charged.
            return self.stop_for_suspension(conn, user_id) or self._reload(conn, subscription_id)
        return self._reload(conn, subscription_id)

    def upgrade_paid(
        self,
        conn: Connection,
        subscription_id: str,
        *,
        plan_id: str,
        prorated_at: datetime | None = None,
        amount_cents: int | None = None,
        external_id: str | None = None,
    ) -> Subscription:
        """Apply a paid upgrade: the plan at once, and the difference in
        monthly credits prorated from ``prorated_at`` (the moment the price
        was prorated from; now by default) to the period end by the same rule
        as the price, granted until the period end. The payment records
        ``amount_cents`` when the provider reckoned the charge itself
        (Stripe's invoice), else the rule's amount. A repeat for the same
        period and plan changes nothing."""
        subscription = self._locked(conn, subscription_id)
        plan = self._paid_plan(plan_id, catalog=self._catalog_at(conn))
        key = self._upgrade_key(subscription, plan)
        if subscription.plan == plan.id or repo.payment_by_key(conn, key) is not None:
            return subscription
        current = effective_plan(
            self._catalog_at(conn, subscription.current_period_start),
            subscription.plan,
            subscription.status,
        )
        at = _to_second(self.clock.now() if prorated_at is None else prorated_at)
        proration = prorate_upgrade(
            current, plan, subscription.current_period_start, subscription.current_period_end, at
        )
        credits = proration.credits
        payment_id = new_id("pay")
        lot_id = None
        if credits:
            lot_id = self.ledger.grant(
                conn,
                subscription.wallet_id,
                credits,
                source="subscription",
                expires_at=subscription.current_period_end,
                reference=payment_id,
                memo=f"upgrade to {plan.name}: monthly credits prorated to the period end",
                idempotency_key=key,
            ).lot_id
        self._record_payment(
            conn,
            payment_id=payment_id,
            key=key,
            user_id=subscription.user_id,
            wallet_id=subscription.wallet_id,
            subscription_id=subscription.id,
            kind="upgrade",
            plan=plan,
            amount_cents=proration.amount_cents if amount_cents is None else amount_cents,
            credits=credits,
            lot_id=lot_id,
            period=(at, subscription.current_period_end),
            backend=subscription.backend,
            external_id=external_id,
        )
        return self._update(
            conn, subscription, plan_id=plan.id, pending_plan=None, cancel_at_period_end=False
        )

    def renewal_paid(
        self,
        conn: Connection,
        subscription_id: str,
        *,
        period_end: datetime,
        external_id: str | None = None,
    ) -> Subscription:
        """The renewal at ``period_end`` was paid: the next period starts on
        the pending plan if one was scheduled, the ended period's monthly
        credits expire (but for the rollover cap) and the new allocation is
        granted. A repeat (the period already renewed) changes nothing."""
        subscription = self._locked(conn, subscription_id)
        if subscription.current_period_end != period_end or subscription.status == "canceled":
            return subscription
        ending = effective_plan(
            self._catalog_at(conn, subscription.current_period_start), subscription.plan, "active"
        )
        # The new period starts at period_end, on the terms in force then.
        plan = self._plan_or_none(
            subscription.pending_plan or subscription.plan, self._catalog_at(conn, period_end)
        )
        if plan is None:
            return self.end_subscription(conn, subscription.id)
        next_end = self._next_period_end(subscription)
        payment_id = new_id("pay")
        renewed = self.ledger.renew(
            conn,
            subscription.wallet_id,
            period_start=subscription.current_period_start,
            period_end=period_end,
            next_period_end=next_end,
            monthly_credits=plan.monthly_credits,
            rollover_cap=ending.rollover_cap,
            reference=payment_id,
            idempotency_key=self._renewal_key(subscription),
        )
        self._record_payment(
            conn,
            payment_id=payment_id,
            key=self._renewal_key(subscription),
            user_id=subscription.user_id,
            wallet_id=subscription.wallet_id,
            subscription_id=subscription.id,
            kind="renewal",
            plan=plan,
            amount_cents=plan.price_cents,
            credits=renewed.granted,
            lot_id=renewed.lot_id,
            period=(period_end, next_end),
            backend=subscription.backend,
            external_id=external_id,
        )
        fact = RenewalPaid(
            subscription.id, plan, payment_id, renewed.granted, next_end, self.catalog.currency
        )
        self._notify(conn, subscription, "renewal", period_end, fact)
        return self._update(
            conn,
            subscription,
            plan_id=plan.id,
            pending_plan=None,
            status="active",
            current_period_start=period_end,
            current_period_end=next_end,
        )

    def renewal_failed(
        self,
        conn: Connection,
        subscription_id: str,
        *,
        period_end: datetime,
        reason: str,
        external_id: str | None = None,
    ) -> Subscription:
        """The renewal at ``period_end`` was declined: ``past_due`` on the plan
        of the unpaid period, no new allocation; the ended period's credits
        expire with it. A repeat changes nothing."""
        subscription = self._locked(conn, subscription_id)
        if subscription.current_period_end != period_end or subscription.status != "active":
            return subscription
        plan = self._plan_or_none(
            subscription.pending_plan or subscription.plan, self._catalog_at(conn, period_end)
        )
        if plan is None:
            return self.end_subscription(conn, subscription.id)
        self._record_payment(
            conn,
            payment_id=new_id("pay"),
            key=f"renewal-failed:{subscription.id}:{_key_time(period_end)}",
            user_id=subscription.user_id,
            wallet_id=subscription.wallet_id,
            subscription_id=subscription.id,
            kind="renewal",
            plan=plan,
            amount_cents=plan.price_cents,
            credits=0,
            lot_id=None,
            period=(period_end, self._next_period_end(subscription)),
            backend=subscription.backend,
            external_id=external_id,
            failure_reason=reason,
        )
        fact = RenewalDeclined(subscription.id, plan, reason, self.grace_days)
        self._notify(conn, subscription, "payment_failed", period_end, fact)
        return self._update(
            conn, subscription, status="past_due", plan_id=plan.id, pending_plan=None
        )

    def end_subscription(self, conn: Connection, subscription_id: str) -> Subscription:
        """The subscription is over (canceled at its period end, unpaid past
        the grace period): Free from now on, no new allocation."""
        subscription = self._locked(conn, subscription_id)
        if subscription.status == "canceled":
            return subscription
        return self._update(
            conn,
            subscription,
            status="canceled",
            pending_plan=None,
            cancel_at_period_end=False,
            stops_for_suspension=False,
        )

    def pack_paid(
        self,
        conn: Connection,
        *,
        user_id: str,
        wallet_id: str,
        pack_id: str,
        backend: str,
        idempotency_key: str,
        external_id: str | None = None,
    ) -> PackPurchase:
        """A paid credit pack: its credits added to the balance as their own
        lot (``reference`` = the payment id, for a refund's clawback), never
        expiring unless configured. A repeat of the key returns the first."""
        done = repo.payment_by_key(conn, idempotency_key)
        if done is not None:
            return self._pack_purchase(conn, done)
        pack = self._pack(pack_id)
        now = self.clock.now()
        expires_at = pack_expires_at(pack, self.purchased_credits_expire_days, now)
        payment_id = new_id("pay")
        granted = self.ledger.grant(
            conn,
            wallet_id,
            pack.credits,
            source="purchase",
            expires_at=expires_at,
            reference=payment_id,
            memo=f"credit pack {pack.id}",
            idempotency_key=f"pack:{payment_id}",
        )
        self._record_payment(
            conn,
            payment_id=payment_id,
            key=idempotency_key,
            user_id=user_id,
            wallet_id=wallet_id,
            subscription_id=None,
            kind="pack",
            plan=None,
            pack=pack,
            amount_cents=pack.price_cents,
            credits=pack.credits,
            lot_id=granted.lot_id,
            period=None,
            backend=backend,
            external_id=external_id,
        )
        return PackPurchase(
            payment_id=payment_id,
            pack=pack.id,
            credits=pack.credits,
            balance=granted.balance_after,
            lot_id=granted.lot_id,
            expires_at=expires_at,
        )

    def provider_changed(
        self,
        conn: Connection,
        subscription_id: str,
        *,
        pending_plan: str | None,
        cancel_at_period_end: bool,
    ) -> Subscription:
        """The customer changed what happens at the period end on the
        provider's own page (Stripe's customer portal): a plan scheduled for
        the next period, or a cancellation set or withdrawn. A plan no longer
        in the catalog is not scheduled."""
        subscription = self._locked(conn, subscription_id)
        if subscription.status == "canceled":
            return subscription
        if pending_plan is not None and (
            pending_plan == subscription.plan or self._plan_or_none(pending_plan) is None
        ):
            pending_plan = None
        if cancel_at_period_end:
            pending_plan = None
        if (
            subscription.pending_plan == pending_plan
            and subscription.cancel_at_period_end == cancel_at_period_end
        ):
            return subscription
        return self._update(
            conn,
            subscription,
            pending_plan=pending_plan,
            cancel_at_period_end=cancel_at_period_end,
        )

    def claw_back(
        self, conn: Connection, payment: Payment, *, reason: ClawbackReason, actor: str
    ) -> ClawbackOutcome:
        """Take back what remains of ``payment``'s credits (a refund or a
        dispute), write it to the audit log and tell the clawback listeners.
        The caller applies each reversal once (the ledger's key makes a repeat
        with the same reason a no-op, but the listeners would hear it again)."""
        clawed_back = spent = held = 0
        if payment.lot_id is not None:
            result = self.ledger.clawback(
                conn,
                payment.lot_id,
                idempotency_key=f"clawback:{payment.id}:{reason}",
                reason=f"{reason} of payment {payment.id}",
            )
            clawed_back, spent, held = result.clawed_back, result.spent, result.held
        outcome = ClawbackOutcome(
            user_id=payment.user_id,
            wallet_id=payment.wallet_id,
            payment_id=payment.id,
            clawed_back=clawed_back,
            spent=spent,
            held=held,
            reason=reason,
        )
        audit.record(
            conn,
            actor=actor,
            action=f"billing.{reason}_clawback",
            target=payment.user_id,
            reason=f"{reason} of payment {payment.id}",
            now=self.clock.now(),
            data={
                "payment_id": payment.id,
                "wallet_id": payment.wallet_id,
                "clawed_back": clawed_back,
                "spent": spent,
                "held": held,
                "needs_review": outcome.needs_review,
            },
        )
        self.hooks.clawed_back(conn, outcome)
        return outcome

    # -- the clock ---------------------------------------------------------

    def due_subscriptions(
        self, conn: Connection, *, after: str = "", limit: int = 100
    ) -> list[str]:
        """Ids (after ``after``, in order) of the clock-driven subscriptions
        whose period has ended: something may fall due for them."""
        clock_driven = [name for name, backend in self.backends.items() if backend.renews_on_clock]
        now = self.clock.now()
        # A grace period lasts grace_days, but never past the unpaid period,
        # which is at least 28 days long: no grace ends sooner than this.
        shortest_grace = timedelta(days=min(self.grace_days, MIN_PERIOD_DAYS))
        return repo.due_subscription_ids(
            conn,
            now=now,
            past_due_before=now - shortest_grace,
            backends=clock_driven,
            after=after,
            limit=limit,
        )

    def advance_subscription(self, conn: Connection, subscription_id: str) -> ClockStep | None:
        """Do the one thing that fell due for the subscription, if any: end it
        (canceled, or unpaid past the grace period), or charge its renewal.

        The subscription's row is locked and its state read again first, so a
        second worker doing the same finds nothing left to do. Call again
        until None to catch up on several periods after downtime."""
        subscription = repo.subscription_by_id(conn, subscription_id, lock=True)
        if subscription is None or subscription.status == "canceled":
            return None
        backend = self.backends.get(subscription.backend)
        if backend is None or not backend.renews_on_clock:
            return None
        now = self.clock.now()
        if subscription.status == "past_due":
            if now < self.grace_ends_at(subscription):
                return None
            self.end_subscription(conn, subscription.id)
            return "grace_ended"
        if now < subscription.current_period_end:
            return None
        plan = self._plan_or_none(
            subscription.pending_plan or subscription.plan,
            self._catalog_at(conn, subscription.current_period_end),
        )
        if subscription.ends_at_period_end or plan is None:
            self.end_subscription(conn, subscription.id)
            return "canceled"
        customer = self._customer_of(conn, subscription)
        outcome = backend.charge_renewal(
            conn,
            customer=customer,
            subscription=subscription,
            plan=plan,
            amount_cents=plan.price_cents,
            idempotency_key=self._renewal_key(subscription),
        )
        period_end = subscription.current_period_end
        if isinstance(outcome, Paid):
            self.renewal_paid(
                conn, subscription.id, period_end=period_end, external_id=outcome.external_id
            )
            return "downgraded" if subscription.pending_plan else "renewed"
        self.renewal_failed(conn, subscription.id, period_end=period_end, reason=outcome.reason)
        return "payment_failed"

    # -- internals ---------------------------------------------------------

    def _current(self, conn: Connection, wallet_id: str) -> Subscription | None:
        """The wallet's subscription, locked, brought up to date first when
        the clock drives it and something fell due that it has not run yet."""
        subscription = repo.subscription_of_wallet(conn, wallet_id, lock=True)
        if subscription is None:
            return None
        while self.advance_subscription(conn, subscription.id) is not None:
            pass
        return self._reload(conn, subscription.id)

    def _plan_change(
        self, conn: Connection, subscription: Subscription, plan_id: str
    ) -> tuple[PlanSpec, PlanSpec | None]:
        """Check that the live ``subscription`` may change to ``plan_id``:
        the plan, and the plan the period is on (None when ``plan_id`` is
        that plan, which withdraws a scheduled change)."""
        plan = self._paid_plan(
            plan_id,
            free_hint="to go back to Free, cancel the subscription (DELETE)",
            catalog=self._catalog_at(conn),
        )
        if subscription.status == "past_due":
            raise SubscriptionPastDue("the last renewal is unpaid: pay it before changing plans")
        if self.clock.now() >= subscription.current_period_end:
            raise RenewalPending("the period has ended and its renewal is not confirmed yet")
        if plan.id == subscription.plan:
            if subscription.pending_plan is None and not subscription.cancel_at_period_end:
                raise InvalidInput(f"you are already on {plan.name}", field="plan")
            return plan, None
        current = effective_plan(
            self._catalog_at(conn, subscription.current_period_start),
            subscription.plan,
            subscription.status,
        )
        return plan, current

    def _prorate(
        self,
        conn: Connection,
        subscription: Subscription,
        current: PlanSpec,
        plan: PlanSpec,
        prorate_at: datetime | None,
    ) -> Proration:
        """The upgrade from ``current`` to ``plan`` prorated from now (to the
        second, as Stripe's ``proration_date``), or from a preview's moment
        if it is recent and not before the period's last plan change."""
        now = self.clock.now()
        at = _to_second(now)
        if prorate_at is not None:
            earliest = _to_second(
                max(
                    now - QUOTE_VALID,
                    subscription.current_period_start,
                    repo.last_upgrade_at(conn, subscription.id, subscription.current_period_end)
                    or subscription.current_period_start,
                )
            )
            if prorate_at.tzinfo is None or not earliest <= prorate_at <= now + QUOTE_CLOCK_SKEW:
                raise InvalidInput(
                    "the preview's prorated_at is out of date (older than "
                    f"{int(QUOTE_VALID.total_seconds() // 60)} minutes, or before the last "
                    "plan change): preview the change again",
                    field="prorate_at",
                )
            at = _to_second(prorate_at.astimezone(UTC))
        return prorate_upgrade(
            current, plan, subscription.current_period_start, subscription.current_period_end, at
        )

    def _customer_of(self, conn: Connection, subscription: Subscription) -> Customer:
        return Customer(
            subscription.user_id,
            subscription.wallet_id,
            repo.user_email(conn, subscription.user_id),
        )

    def _schedule(
        self,
        conn: Connection,
        backend: BillingBackend,
        customer: Customer,
        subscription: Subscription,
        plan: PlanSpec,
        *,
        pending: str | None,
    ) -> Subscription:
        """Bill ``plan`` from the next period on (nothing charged now)."""
        outcome = backend.change_plan(
            conn,
            customer=customer,
            subscription=subscription,
            plan=plan,
            effective="period_end",
            amount_cents=0,
            # One key per request: a change scheduled, withdrawn and scheduled
            # again (in the same instant, even) is three requests to the
            # provider, none a replay of another; Stripe would replay the
            # first answer for a key seen before and apply nothing. Nothing
            # is charged, so the provider's own retries (same key) suffice.
            idempotency_key=f"schedule:{subscription.id}:{plan.id}:{new_id('chg')}",
        )
        if isinstance(outcome, Declined):  # pragma: no cover - nothing was charged
            raise PaymentFailed(outcome.reason)
        return self._update(conn, subscription, pending_plan=pending, cancel_at_period_end=False)

    def _notify(
        self,
        conn: Connection,
        subscription: Subscription,
        cause: str,
        period_end: datetime,
        fact: Fact,
    ) -> None:
        """Queue ``fact``'s notice for the subscriber, once per ``cause`` and
        period of the subscription."""
        self.outbox.enqueue(
            conn,
            cause_key=f"{cause}:{subscription.id}:{_key_time(period_end)}",
            user_id=subscription.user_id,
            fact=fact,
        )

    def _record_payment(
        self,
        conn: Connection,
        *,
        payment_id: str,
        key: str,
        user_id: str,
        wallet_id: str,
        subscription_id: str | None,
        kind: PaymentKind,
        plan: PlanSpec | None,
        amount_cents: int,
        credits: int,
        lot_id: str | None,
        period: tuple[datetime, datetime] | None,
        backend: str,
        external_id: str | None,
        pack: CreditPack | None = None,
        failure_reason: str | None = None,
    ) -> Payment:
        payment = repo.insert_payment(
            conn,
            id=payment_id,
            idempotency_key=key,
            user_id=user_id,
            wallet_id=wallet_id,
            subscription_id=subscription_id,
            kind=kind,
            status="failed" if failure_reason else "succeeded",
            plan_id=None if plan is None else plan.id,
            pack_id=None if pack is None else pack.id,
            amount_cents=amount_cents,
            currency=self.catalog.currency,
            credits=credits,
            lot_id=lot_id,
            period_start=None if period is None else period[0],
            period_end=None if period is None else period[1],
            backend=backend,
            external_id=external_id,
            failure_reason=failure_reason,
            created_at=self.clock.now(),
        )
        self.hooks.payment_recorded(conn, payment)
        return payment

    def _pack_purchase(self, conn: Connection, payment: Payment) -> PackPurchase:
        """A purchase made before, as it stands now."""
        balance = self.ledger.balance(conn, payment.wallet_id)
        lot = next((lot for lot in balance.lots if lot.id == payment.lot_id), None)
        return PackPurchase(
            payment_id=payment.id,
            pack=payment.pack_id or "",
            credits=payment.credits,
            balance=balance.available,
            lot_id=payment.lot_id,
            expires_at=None if lot is None else lot.expires_at,
        )

    def _update(self, conn: Connection, subscription: Subscription, **values: Any) -> Subscription:
        repo.update_subscription(conn, subscription.id, updated_at=self.clock.now(), **values)
        return self._reload(conn, subscription.id)

    def _reload(self, conn: Connection, subscription_id: str) -> Subscription:
        found = repo.subscription_by_id(conn, subscription_id)
        if found is None:  # pragma: no cover - subscriptions are never deleted
            raise NoSubscription(subscription_id)
        return found

    def _locked(self, conn: Connection, subscription_id: str) -> Subscription:
        found = repo.subscription_by_id(conn, subscription_id, lock=True)
        if found is None:
            raise NoSubscription(f"no subscription {subscription_id}")
        return found

    def _backend_of(self, subscription: Subscription) -> BillingBackend:
        return self.backends.get(subscription.backend, self.backend)

    def _next_period_end(self, subscription: Subscription) -> datetime:
        anchor = subscription.billing_anchor or subscription.current_period_start
        return period_end_after(anchor, subscription.current_period_end)

    def _renewal_key(self, subscription: Subscription) -> str:
        return f"renewal:{subscription.id}:{_key_time(subscription.current_period_end)}"

    def _upgrade_key(self, subscription: Subscription, plan: PlanSpec) -> str:
        end = _key_time(subscription.current_period_end)
        return f"upgrade:{subscription.id}:{end}:{plan.id}"

    def _catalog_at(self, conn: Connection, at: datetime | None = None) -> Catalog:
        """The catalog in force at ``at`` (now by default)."""
        return self.in_force.at(conn, self.clock.now() if at is None else at)

    def _paid_plan(
        self, plan_id: str, free_hint: str | None = None, *, catalog: Catalog | None = None
    ) -> PlanSpec:
        try:
            plan = (catalog or self.catalog).plan(plan_id)
        except KeyError:
            raise InvalidInput(f"unknown plan {plan_id!r}", field="plan") from None
        if plan.price_cents == 0:
            raise InvalidInput(free_hint or f"{plan.name} needs no subscription", field="plan")
        return plan

    def _plan_or_none(self, plan_id: str, catalog: Catalog | None = None) -> PlanSpec | None:
        try:
            return (catalog or self.catalog).plan(plan_id)
        except KeyError:
            return None

    def _pack(self, pack_id: str) -> CreditPack:
        try:
            return self.catalog.pack(pack_id)
        except KeyError:
            raise InvalidInput(f"unknown credit pack {pack_id!r}", field="pack") from None

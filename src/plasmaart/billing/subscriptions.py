"""Subscriptions: the plan lifecycle over time.

Every credit movement goes through the ledger, in the caller's transaction,
with an idempotency key derived from the subscription and its period, so
that the clock running twice, or in two workers, grants once:

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
  the subscription with its allocation; after the grace period, Free.

A period is priced and granted by the catalog in force when it starts
(``Catalogs.at``). Which plan a wallet has at a moment is ``plans.py``'s rule;
which backend moves the money is ``backends.py``'s business; the methods under
"what a backend reports" are what its webhooks (or the sandbox, at once) call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.backends import (
    Backends,
    BillingBackend,
    Checkout,
    Customer,
    Declined,
    Paid,
    Redirect,
)
from plasmaart.billing.errors import (
    AlreadySubscribed,
    NoSubscription,
    NothingToPay,
    PaymentFailed,
    RenewalPending,
    SubscriptionPastDue,
)
from plasmaart.billing.notices import RenewalDeclined
from plasmaart.billing.payments import PaymentService
from plasmaart.billing.periods import period_end_after
from plasmaart.billing.plans import PlanService, effective_plan, next_period_end
from plasmaart.billing.repository import PaymentKind, Subscription
from plasmaart.billing.rules import Proration, is_upgrade, prorate_upgrade
from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.errors import InvalidInput
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService
from plasmaart.outbox import Fact, Outbox

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


def _key_time(moment: datetime) -> str:
    return moment.isoformat()


def _to_second(moment: datetime) -> datetime:
    """Upgrades are prorated from a whole second, as Stripe's
    ``proration_date`` is, so both backends reckon from the same moment."""
    return moment.replace(microsecond=0)


class SubscriptionService:
    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        ledger: LedgerService,
        plans: PlanService,
        payments: PaymentService,
        backends: Backends,
        *,
        outbox: Outbox,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.ledger = ledger
        self.plans = plans
        self.payments = payments
        self.backends = backends
        # Where failed-payment notices are queued (a paid renewal's notice is
        # its receipt: receipts.py).
        self.outbox = outbox

    # -- what customers ask for ---------------------------------------------

    def subscribe(
        self, conn: Connection, customer: Customer, plan_id: str
    ) -> Subscription | Checkout:
        """Subscribe to ``plan_id`` through the configured backend: the
        subscription at once when it charges at once, else its checkout page."""
        plan = self._paid_plan(plan_id, catalog=self.catalogs.now(conn))
        existing = self._current(conn, customer.wallet_id)
        if existing is not None and existing.status != "canceled":
            raise AlreadySubscribed(
                f"already subscribed to {existing.plan}; change the plan instead"
            )
        now = self.clock.now()
        outcome = self.backends.default.checkout_subscription(
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
            backend=self.backends.default.name,
            payment_external_id=outcome.external_id,
        )

    def preview(self, conn: Connection, customer: Customer, plan_id: str) -> PlanChangePreview:
        """What ``subscribe`` (without a subscription) or ``change_plan``
        (with one) to ``plan_id`` would charge and grant now, refused as they
        would refuse it; reads only."""
        now = self.clock.now()
        subscription = repo.subscription_of_wallet(conn, customer.wallet_id)
        if subscription is None or subscription.status == "canceled":
            plan = self._paid_plan(plan_id, catalog=self.catalogs.now(conn))
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
        renews = self._plan_or_none(plan.id, self.catalogs.at(conn, end)) or plan
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
        backend = self.backends.of(subscription)
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
            invoice_url=outcome.invoice_url,
        )

    def cancel(self, conn: Connection, customer: Customer) -> Subscription:
        """Cancel at the period end (a past-due subscription: at once, its
        period being over already). Canceling twice changes nothing."""
        subscription = self._current(conn, customer.wallet_id)
        if subscription is None or subscription.status == "canceled":
            raise NoSubscription("you have no subscription to cancel")
        if subscription.cancel_at_period_end:
            return subscription
        backend = self.backends.of(subscription)
        if subscription.pending_plan is not None and subscription.status == "active":
            # Withdraw the scheduled plan first: a provider already billing it
            # for the next period (Stripe) would otherwise prorate a later
            # upgrade (which withdraws the cancellation) from its price, not
            # from the plan held.
            held = effective_plan(
                self.catalogs.at(conn, subscription.current_period_start),
                subscription.plan,
                subscription.status,
            )
            subscription = self._schedule(conn, backend, customer, subscription, held, pending=None)
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
            subscription.plan, self.catalogs.at(conn, subscription.current_period_end)
        )
        if plan is None:  # withdrawn from the catalog while unpaid: nothing to renew
            return self.end_subscription(conn, subscription.id)
        outcome = self.backends.of(subscription).charge_renewal(
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
            invoice_url=outcome.invoice_url,
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
        backend = self.backends.of(subscription)
        if subscription.status == "past_due":
            backend.cancel(conn, customer=customer, subscription=subscription)
            return self.end_subscription(conn, subscription.id)
        if subscription.stops_for_suspension:
            return subscription
        if not subscription.cancel_at_period_end:
            backend.stop_renewal(conn, customer=customer, subscription=subscription)
        return self._update(conn, subscription, stops_for_suspension=True)

    def end_for_deletion(self, conn: Connection, user_id: str) -> Subscription | None:
        """The user's account is being deleted: their subscription ends now,
        at the provider too (``BillingBackend.end_now``), whatever was
        scheduled; nothing is refunded. None when there was none in force.
        The provider is called before anything is written here, so its
        refusal (``BillingProviderError``) leaves the transaction clean."""
        subscription = self._current(conn, self.ledger.wallet_of(conn, "user", user_id))
        if subscription is None or subscription.status == "canceled":
            return None
        customer = self._customer_of(conn, subscription)
        self.backends.of(subscription).end_now(conn, customer=customer, subscription=subscription)
        return self.end_subscription(conn, subscription.id)

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
            self.backends.of(subscription).resume_renewal(
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
        payment_invoice_url: str | None = None,
    ) -> Subscription:
        """Start a subscription whose first payment has succeeded: active at
        once, this period's monthly credits granted at once, the payment
        recorded. A canceled subscription of the wallet starts again (its id
        and history kept). ``period_start``: when the provider started the
        period (Stripe), so that its renewals fall on our period ends; now by
        default. ``payment_invoice_url``: the provider's page of the first
        invoice (Stripe's hosted invoice), for the receipt."""
        plan = self._paid_plan(
            plan_id, catalog=self.catalogs.at(conn, period_start or self.clock.now())
        )
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
        self.payments.record(
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
            hosted_invoice_url=payment_invoice_url,
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
        invoice_url: str | None = None,
    ) -> Subscription:
        """Apply a paid upgrade: the plan at once, and the difference in
        monthly credits prorated from ``prorated_at`` (the moment the price
        was prorated from; now by default) to the period end by the same rule
        as the price, granted until the period end. The payment records
        ``amount_cents`` when the provider reckoned the charge itself
        (Stripe's invoice), else the rule's amount. A repeat for the same
        period and plan changes nothing."""
        subscription = self._locked(conn, subscription_id)
        plan = self._paid_plan(plan_id, catalog=self.catalogs.now(conn))
        key = self._upgrade_key(subscription, plan)
        if subscription.plan == plan.id or repo.payment_by_key(conn, key) is not None:
            return subscription
        current = effective_plan(
            self.catalogs.at(conn, subscription.current_period_start),
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
            subscription,
            payment_id=payment_id,
            key=key,
            kind="upgrade",
            plan=plan,
            amount_cents=proration.amount_cents if amount_cents is None else amount_cents,
            credits=credits,
            lot_id=lot_id,
            period=(at, subscription.current_period_end),
            external_id=external_id,
            invoice_url=invoice_url,
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
        invoice_url: str | None = None,
    ) -> Subscription:
        """The renewal at ``period_end`` was paid: the next period starts on
        the pending plan if one was scheduled, the ended period's monthly
        credits expire (but for the rollover cap) and the new allocation is
        granted. A repeat (the period already renewed) changes nothing. The
        payment's receipt is the renewal notice (``receipts.py``)."""
        subscription = self._locked(conn, subscription_id)
        if subscription.current_period_end != period_end or subscription.status == "canceled":
            return subscription
        ending = effective_plan(
            self.catalogs.at(conn, subscription.current_period_start), subscription.plan, "active"
        )
        # The new period starts at period_end, on the terms in force then.
        plan = self._plan_or_none(
            subscription.pending_plan or subscription.plan, self.catalogs.at(conn, period_end)
        )
        if plan is None:
            return self.end_subscription(conn, subscription.id)
        next_end = next_period_end(subscription)
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
            subscription,
            payment_id=payment_id,
            key=self._renewal_key(subscription),
            kind="renewal",
            plan=plan,
            amount_cents=plan.price_cents,
            credits=renewed.granted,
            lot_id=renewed.lot_id,
            period=(period_end, next_end),
            external_id=external_id,
            invoice_url=invoice_url,
        )
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
            subscription.pending_plan or subscription.plan, self.catalogs.at(conn, period_end)
        )
        if plan is None:
            return self.end_subscription(conn, subscription.id)
        self._record_payment(
            conn,
            subscription,
            payment_id=new_id("pay"),
            key=f"renewal-failed:{subscription.id}:{_key_time(period_end)}",
            kind="renewal",
            plan=plan,
            amount_cents=plan.price_cents,
            credits=0,
            lot_id=None,
            period=(period_end, next_period_end(subscription)),
            external_id=external_id,
            failure_reason=reason,
        )
        fact = RenewalDeclined(subscription.id, plan, reason, self.plans.grace_days)
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
            pending_plan == subscription.plan
            or self._plan_or_none(pending_plan, self.catalogs.now(conn)) is None
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

    # -- the clock ---------------------------------------------------------

    def due_subscriptions(
        self, conn: Connection, *, after: str = "", limit: int = 100
    ) -> list[str]:
        """Ids (after ``after``, in order) of the clock-driven subscriptions
        whose period has ended: something may fall due for them."""
        clock_driven = self.backends.clock_driven()
        now = self.clock.now()
        # A grace period lasts grace_days, but never past the unpaid period,
        # which is at least 28 days long: no grace ends sooner than this.
        shortest_grace = timedelta(days=min(self.plans.grace_days, MIN_PERIOD_DAYS))
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
            if now < self.plans.grace_ends_at(subscription):
                return None
            self.end_subscription(conn, subscription.id)
            return "grace_ended"
        if now < subscription.current_period_end:
            return None
        plan = self._plan_or_none(
            subscription.pending_plan or subscription.plan,
            self.catalogs.at(conn, subscription.current_period_end),
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
                conn,
                subscription.id,
                period_end=period_end,
                external_id=outcome.external_id,
                invoice_url=outcome.invoice_url,
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
            catalog=self.catalogs.now(conn),
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
            self.catalogs.at(conn, subscription.current_period_start),
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
        subscription: Subscription,
        *,
        payment_id: str,
        key: str,
        kind: PaymentKind,
        plan: PlanSpec,
        amount_cents: int,
        credits: int,
        lot_id: str | None,
        period: tuple[datetime, datetime],
        external_id: str | None,
        failure_reason: str | None = None,
        invoice_url: str | None = None,
    ) -> None:
        """Record a payment of ``subscription``: its user, wallet and backend."""
        self.payments.record(
            conn,
            payment_id=payment_id,
            key=key,
            user_id=subscription.user_id,
            wallet_id=subscription.wallet_id,
            subscription_id=subscription.id,
            kind=kind,
            plan=plan,
            amount_cents=amount_cents,
            credits=credits,
            lot_id=lot_id,
            period=period,
            backend=subscription.backend,
            external_id=external_id,
            failure_reason=failure_reason,
            hosted_invoice_url=invoice_url,
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

    def _renewal_key(self, subscription: Subscription) -> str:
        return f"renewal:{subscription.id}:{_key_time(subscription.current_period_end)}"

    def _upgrade_key(self, subscription: Subscription, plan: PlanSpec) -> str:
        end = _key_time(subscription.current_period_end)
        return f"upgrade:{subscription.id}:{end}:{plan.id}"

    def _paid_plan(
        self, plan_id: str, free_hint: str | None = None, *, catalog: Catalog
    ) -> PlanSpec:
        try:
            plan = catalog.plan(plan_id)
        except KeyError:
            raise InvalidInput(f"unknown plan {plan_id!r}", field="plan") from None
        if plan.price_cents == 0:
            raise InvalidInput(free_hint or f"{plan.name} needs no subscription", field="plan")
        return plan

    def _plan_or_none(self, plan_id: str, catalog: Catalog) -> PlanSpec | None:
        try:
            return catalog.plan(plan_id)
        except KeyError:
            return None

"""Stripe's webhooks: verify the signature, then apply each event exactly once.

Exactly once: the event's id goes into ``stripe_events`` in the same
transaction as its effects. A repeat finds the id and changes nothing; two
deliveries racing each other collide on the primary key and the loser rolls
back. Every event is recorded, whether it changed something (``applied``),
had nothing left to do (``ignored``: a repeat under another id, an older
state, an event we do not act on) or named a customer we do not know
(``unknown_customer``): Stripe gets its 2xx and never retries those.

In any order: Stripe does not keep the order of its events, so none of them
is trusted to say what the state is now.

* A subscription starts from whichever comes first of
  ``checkout.session.completed`` and the first ``invoice.paid``, with the
  subscription as Stripe has it (fetched); the other then finds it started.
  One that Stripe already ended is not started.
* ``invoice.paid`` / ``invoice.payment_failed`` of a renewal name the period
  they pay for; ``SubscriptionService.renewal_paid`` / ``renewal_failed`` apply
  only to the period the subscription is at, so an old invoice changes
  nothing, and a newer one first catches up on the periods before it.
* ``customer.subscription.updated`` reconciles with the subscription fetched
  from Stripe now, not with the (possibly stale) copy in the event. While the
  account is suspended, Stripe's ``cancel_at_period_end`` is the suspension's
  (``StripeBackend.stop_renewal``), not recorded as the customer's own.
* ``customer.subscription.deleted`` ends the subscription (Free).
* Receipts link Stripe's page of the invoice a payment paid
  (``hosted_invoice_url``): an ``invoice.*`` event carries it, a
  ``checkout.session.completed`` names its invoice (fetched first); the
  payment recorded keeps it, and an invoice event arriving after its
  payment (the first invoice of a subscription started by the checkout, a
  pack's invoice) gives it to a payment that has none yet.
* ``charge.refunded`` (in full) and ``charge.dispute.created`` claw back what
  remains of the purchase, once per payment (``stripe_clawbacks``), through
  ``ClawbackService.claw_back``, whose listeners flag an account that had
  already spent some of it.

What needs Stripe's API is fetched by ``prefetch`` before the write
transaction, so no lock is held across the network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy import Connection

from plasmaart.accounts import repository as accounts_repo
from plasmaart.billing import repository as billing_repo
from plasmaart.billing.clawbacks import ClawbackReason
from plasmaart.billing.errors import AlreadySubscribed
from plasmaart.billing.plans import effective_plan
from plasmaart.billing.repository import Payment, Subscription
from plasmaart.billing.rules import is_upgrade
from plasmaart.billing.service import BillingService
from plasmaart.billing.stripe import repository as repo
from plasmaart.billing.stripe.backend import (
    META_KEY,
    META_KIND,
    META_PACK,
    META_PLAN,
    META_USER,
    META_WALLET,
    StripeBackend,
    StripeSubscriptionState,
    stripe_time,
)
from plasmaart.billing.stripe.errors import BillingProviderError, InvalidSignature
from plasmaart.billing.stripe.repository import EventOutcome
from plasmaart.clock import Clock
from plasmaart.errors import DomainError, InvalidInput

log = logging.getLogger(__name__)

# Stripe's own default: a signature older than five minutes is a replay.
TOLERANCE_S = 300
# A renewal event that skips periods catches up on at most this many.
MAX_CATCH_UP_PERIODS = 24
SUBSCRIPTION_EVENTS = frozenset(
    {
        "invoice.paid",
        "invoice.payment_failed",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
ACTOR = "stripe"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    created: datetime
    object: Mapping[str, Any]


@dataclass(frozen=True)
class Prefetched:
    """What an event needs from Stripe's API, fetched before the transaction."""

    subscription: StripeSubscriptionState | None = None
    # The invoice a refunded or disputed payment intent paid.
    invoice_id: str | None = None
    # The hosted page of the invoice a completed checkout names.
    invoice_url: str | None = None


@dataclass(frozen=True)
class Applied:
    outcome: EventOutcome | None  # None: a repeat of an event already applied
    detail: str | None = None


def _id(value: Any) -> str | None:
    """An expandable field's id (Stripe sends an id, or the object expanded)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return None if value is None else str(value)


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str | None:
    """The subscription an invoice bills (``parent.subscription_details``
    since the 2025-03-31 API; ``subscription`` before)."""
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return _id(details.get("subscription")) or _id(invoice.get("subscription"))


def invoice_period_start(invoice: Mapping[str, Any]) -> datetime | None:
    """When the period an invoice pays for starts: its subscription line's
    (the invoice's own ``period_start`` is the period before, for renewals)."""
    lines = (invoice.get("lines") or {}).get("data") or []
    starts = [int(line["period"]["start"]) for line in lines if line.get("period")]
    return stripe_time(max(starts)) if starts else None


def hosted_invoice_url(invoice: Mapping[str, Any]) -> str | None:
    url = invoice.get("hosted_invoice_url")
    return str(url) if url else None


class StripeWebhooks:
    def __init__(
        self,
        clock: Clock,
        billing: BillingService,
        backend: StripeBackend,
        *,
        secret: str,
        tolerance_s: int = TOLERANCE_S,
    ) -> None:
        self.clock = clock
        self.billing = billing
        self.backend = backend
        self.secret = secret
        self.tolerance_s = tolerance_s

    # -- receiving ---------------------------------------------------------------

    def verify(self, payload: bytes, signature: str | None) -> Event:
        """The event, if ``signature`` (the ``Stripe-Signature`` header) signs
        ``payload`` with our secret within the tolerance of our clock."""
        try:
            # The library checks the HMAC; the age is checked against the
            # platform's clock below (tolerance None: the library skips it).
            stripe.WebhookSignature.verify_header(payload, signature, self.secret)
        except stripe.SignatureVerificationError as exc:
            raise InvalidSignature(str(exc).split(";")[0]) from None
        timestamp = self._timestamp(signature or "")
        age = self.clock.now().timestamp() - timestamp
        if abs(age) > self.tolerance_s:
            raise InvalidSignature(
                f"the signature's timestamp is {int(abs(age))} s away from now "
                f"(tolerance {self.tolerance_s} s)"
            )
        try:
            data = json.loads(payload)
            event = Event(
                id=str(data["id"]),
                type=str(data["type"]),
                created=stripe_time(int(data["created"])),
                object=data["data"]["object"],
            )
        except (ValueError, KeyError, TypeError):
            raise InvalidInput("the payload is not a Stripe event", field="body") from None
        if not isinstance(event.object, Mapping):
            raise InvalidInput("the event's data.object is not an object", field="body")
        return event

    def seen(self, conn: Connection, event: Event) -> bool:
        return repo.event_seen(conn, event.id)

    def prefetch(self, conn: Connection, event: Event) -> Prefetched:
        """Ask Stripe what ``apply`` will need (``conn``: a read)."""
        obj = event.object
        invoice_url = None
        if event.type == "checkout.session.completed" and _id(obj.get("invoice")):
            invoice_url = self.backend.invoice_url(str(_id(obj.get("invoice"))))
        stripe_subscription = None
        if event.type == "checkout.session.completed" and obj.get("mode") == "subscription":
            stripe_subscription = _id(obj.get("subscription"))
        elif event.type in SUBSCRIPTION_EVENTS:
            if event.type.startswith("invoice."):
                stripe_subscription = invoice_subscription_id(obj)
            else:
                stripe_subscription = _id(obj.get("id"))
        if stripe_subscription is not None and (
            event.type == "customer.subscription.updated"
            or not self._linked(conn, stripe_subscription)
        ):
            return Prefetched(
                subscription=self.backend.subscription_state(stripe_subscription),
                invoice_url=invoice_url,
            )
        if event.type in ("charge.refunded", "charge.dispute.created"):
            intent = _id(obj.get("payment_intent"))
            if intent is not None and repo.payment_by_external_id(conn, intent) is None:
                return Prefetched(invoice_id=self.backend.invoice_of_payment_intent(intent))
        return Prefetched(invoice_url=invoice_url)

    def apply(self, conn: Connection, event: Event, prefetched: Prefetched) -> Applied:
        """Apply ``event`` once, in the caller's write transaction."""
        if repo.event_seen(conn, event.id):
            return Applied(None)
        # The id goes in first: on PostgreSQL a racing delivery of the same
        # event waits on it here, then fails, instead of applying it twice.
        now = self.clock.now()
        repo.record_event(
            conn,
            event_id=event.id,
            event_type=event.type,
            created=event.created,
            now=now,
        )
        self._lock_account(conn, event, prefetched)
        outcome: EventOutcome
        try:
            with conn.begin_nested():
                outcome, detail = self._dispatch(conn, event, prefetched)
        except BillingProviderError:
            # Applying it needed Stripe, which could not be reached (a
            # dispute that suspends the account tells Stripe to stop its
            # renewal): nothing is recorded, the caller answers 503 and
            # Stripe delivers the event again.
            raise
        except DomainError as exc:
            # A refusal of ours (an unknown plan, a second subscription) is
            # final: retrying the event would be refused again. Its partial
            # effects went with the savepoint.
            outcome, detail = "ignored", f"{exc.code}: {exc.detail}"
        if outcome == "unknown_customer":
            log.info(
                "stripe event %s (%s) for an unknown customer: %s", event.id, event.type, detail
            )
        elif outcome == "ignored":
            log.info("stripe event %s (%s) ignored: %s", event.id, event.type, detail)
        repo.update_event(conn, event.id, outcome=outcome, detail=detail)
        return Applied(outcome, detail)

    # -- the events ------------------------------------------------------------

    def _dispatch(
        self, conn: Connection, event: Event, prefetched: Prefetched
    ) -> tuple[EventOutcome, str | None]:
        obj = event.object
        if event.type == "checkout.session.completed":
            return self._checkout_completed(conn, obj, prefetched)
        if event.type in SUBSCRIPTION_EVENTS:
            return self._subscription_event(conn, event, prefetched)
        if event.type == "charge.refunded":
            if not obj.get("refunded"):
                return "ignored", "a partial refund: the credits are kept"
            return self._claw_back(conn, event, prefetched, "refund")
        if event.type == "charge.dispute.created":
            return self._claw_back(conn, event, prefetched, "dispute")
        return "ignored", f"{event.type} is not an event we act on"

    def _checkout_completed(
        self, conn: Connection, session: Mapping[str, Any], prefetched: Prefetched
    ) -> tuple[EventOutcome, str | None]:
        metadata = session.get("metadata") or {}
        user_id = self._user(conn, _id(session.get("customer")), metadata)
        if user_id is None:
            return "unknown_customer", f"customer {_id(session.get('customer'))}"
        if session.get("payment_status") not in ("paid", "no_payment_required"):
            return "ignored", "the checkout is not paid yet"
        if metadata.get(META_KIND) == "pack" or session.get("mode") == "payment":
            wallet_id = self._wallet(conn, user_id, metadata)
            key = metadata.get(META_KEY) or f"pack:stripe:{session['id']}"
            granted = billing_repo.payment_by_key(conn, key)
            if granted is not None:
                if self._link_invoice(conn, granted, prefetched.invoice_url):
                    return "applied", "the pack was granted already: its invoice linked"
                return "ignored", "the pack was granted already"
            self.billing.packs.paid(
                conn,
                user_id=user_id,
                wallet_id=wallet_id,
                pack_id=str(metadata.get(META_PACK)),
                backend=self.backend.name,
                idempotency_key=key,
                external_id=_id(session.get("payment_intent")),
                invoice_url=prefetched.invoice_url,
            )
            return "applied", None
        first_invoice = _id(session.get("invoice"))
        state = prefetched.subscription
        if state is None:
            if self._linked(conn, _id(session.get("subscription")) or ""):
                if self._link_invoice_of(conn, first_invoice, prefetched.invoice_url):
                    return "applied", "the subscription was started already: its invoice linked"
                return "ignored", "the subscription was started already"
            return "ignored", f"Stripe has no subscription {session.get('subscription')}"
        return self._start(
            conn,
            user_id,
            state,
            first_invoice=first_invoice,
            invoice_url=prefetched.invoice_url,
        )

    def _subscription_event(
        self, conn: Connection, event: Event, prefetched: Prefetched
    ) -> tuple[EventOutcome, str | None]:
        """An invoice or a change of a subscription; the first of them to
        arrive for a subscription we do not have yet starts it."""
        obj = event.object
        is_invoice = event.type.startswith("invoice.")
        stripe_id = invoice_subscription_id(obj) if is_invoice else _id(obj.get("id"))
        if stripe_id is None:
            return self._invoice_of_no_subscription(conn, event)
        if self._linked(conn, stripe_id):
            return self._on_subscription(conn, event, prefetched, stripe_id)
        state = prefetched.subscription
        if state is None:
            customer = _id(obj.get("customer"))
            if customer is None or repo.user_of_customer(conn, customer) is None:
                return "unknown_customer", f"customer {customer}, subscription {stripe_id}"
            return "ignored", f"Stripe has no subscription {stripe_id}"
        user_id = self._user(conn, state.customer_id, state.metadata)
        if user_id is None:
            return "unknown_customer", f"customer {state.customer_id}"
        first = _id(obj.get("id")) if is_invoice else None
        started = self._start(
            conn,
            user_id,
            state,
            first_invoice=first,
            invoice_url=hosted_invoice_url(obj) if is_invoice else None,
        )
        if started[0] != "applied":
            return started
        # Started from Stripe's state now, which this event may already be part of.
        outcome, detail = self._on_subscription(conn, event, prefetched, stripe_id)
        return "applied", None if outcome == "ignored" else detail

    def _on_subscription(
        self, conn: Connection, event: Event, prefetched: Prefetched, stripe_id: str
    ) -> tuple[EventOutcome, str | None]:
        obj = event.object
        subscription = self._subscription(conn, stripe_id)
        if event.type == "customer.subscription.deleted":
            if subscription.status == "canceled":
                return "ignored", "the subscription had ended already"
            self.billing.subscriptions.end_subscription(conn, subscription.id)
            return "applied", None
        if event.type == "customer.subscription.updated":
            state = prefetched.subscription
            if state is None:
                return "ignored", f"Stripe has no subscription {stripe_id}"
            if self._reconcile(conn, subscription, state, event):
                return "applied", None
            return "ignored", "ours is as Stripe has it"
        reason = obj.get("billing_reason")
        if reason != "subscription_cycle":
            # The first invoice is the subscription itself; a proration
            # invoice is the upgrade, applied when it was asked for. Its
            # payment may not know the invoice's page yet.
            if event.type == "invoice.paid" and self._link_invoice_of(
                conn, _id(obj.get("id")), hosted_invoice_url(obj)
            ):
                return "applied", f"an invoice for {reason}: its page linked to its payment"
            return "ignored", f"an invoice for {reason}: nothing to renew"
        period_start = invoice_period_start(obj)
        if period_start is None:
            return "ignored", "the invoice names no period"
        paid = event.type == "invoice.paid"
        return self._renewal(
            conn,
            subscription,
            period_start,
            _id(obj.get("id")),
            paid=paid,
            invoice_url=hosted_invoice_url(obj),
        )

    def _start(
        self,
        conn: Connection,
        user_id: str,
        state: StripeSubscriptionState,
        *,
        first_invoice: str | None,
        invoice_url: str | None = None,
    ) -> tuple[EventOutcome, str | None]:
        """Start our subscription for the Stripe one ``state`` describes."""
        if self._linked(conn, state.id):
            return "ignored", "the subscription was started already"
        if state.status not in ("active", "trialing", "past_due"):
            return "ignored", f"the subscription is {state.status} at Stripe"
        plan_id = state.plan or state.metadata.get(META_PLAN)
        if plan_id is None:
            return "ignored", "the subscription is for no plan of ours"
        wallet_id = self._wallet(conn, user_id, state.metadata)
        try:
            subscription = self.billing.subscriptions.subscribe_paid(
                conn,
                user_id=user_id,
                wallet_id=wallet_id,
                plan_id=plan_id,
                backend=self.backend.name,
                external_id=state.id,
                payment_external_id=first_invoice,
                period_start=state.current_period_start,
                payment_invoice_url=invoice_url,
            )
        except AlreadySubscribed as exc:
            # Two checkouts both paid: the second Stripe subscription is left
            # to the operator to refund (it is in the log and the events).
            log.warning("stripe subscription %s of user %s: %s", state.id, user_id, exc.detail)
            return "ignored", f"{exc.code}: {exc.detail}"
        repo.link_subscription(
            conn,
            stripe_subscription_id=state.id,
            subscription_id=subscription.id,
            customer_id=state.customer_id,
            now=self.clock.now(),
        )
        if state.cancel_at_period_end:
            self.billing.subscriptions.provider_changed(
                conn, subscription.id, pending_plan=None, cancel_at_period_end=True
            )
        return "applied", None

    def _reconcile(
        self,
        conn: Connection,
        subscription: Subscription,
        state: StripeSubscriptionState,
        event: Event,
    ) -> bool:
        """Bring ours in line with the subscription as Stripe has it now
        (a change made in the customer portal). True if anything changed."""
        link = repo.subscription_link(conn, state.id)
        if link.last_event_created is not None and event.created < link.last_event_created:
            return False
        if link.last_event_created is None or event.created > link.last_event_created:
            # Only a newer event moves the mark: one as old as the newest
            # (the same change told again) leaves the row untouched.
            repo.set_last_event_created(conn, state.id, event.created, self.clock.now())
        if state.status in ("canceled", "incomplete_expired"):
            if subscription.status == "canceled":
                return False
            self.billing.subscriptions.end_subscription(conn, subscription.id)
            return True
        if subscription.status == "canceled":
            return False
        pending = subscription.pending_plan
        changed = False
        if state.plan is not None and state.plan not in (subscription.plan, pending):
            # Upgrade or not by the terms ``change_plan`` reckons with: the
            # period's plan as in force when it started, the new one as now.
            catalogs = self.billing.plans.catalogs
            current = effective_plan(
                catalogs.at(conn, subscription.current_period_start), subscription.plan, "active"
            )
            try:
                new = catalogs.now(conn).plan(state.plan)
            except KeyError:
                return False
            if is_upgrade(current, new) and subscription.status == "active":
                # Stripe prorated the portal's change from when it was made,
                # which is when the event was created, not when it reached
                # us: the credits are prorated from that moment by the same
                # rule as the price (``rules.prorate_upgrade``).
                changed_at = min(
                    max(event.created, subscription.current_period_start),
                    subscription.current_period_end,
                )
                self.billing.subscriptions.upgrade_paid(
                    conn, subscription.id, plan_id=new.id, prorated_at=changed_at
                )
                subscription = self._subscription(conn, state.id)
                pending = None
                changed = True
            else:
                pending = new.id
        elif state.plan == subscription.plan:
            # Back on the plan it is on: a scheduled downgrade was withdrawn.
            pending = None
        cancel = state.cancel_at_period_end
        if subscription.stops_for_suspension:
            # While the account is suspended, Stripe's cancel_at_period_end is
            # the suspension's (the customer cannot reach the portal), not a
            # cancellation of the customer's that reinstating should keep.
            cancel = subscription.cancel_at_period_end
        if cancel:
            pending = None  # nothing is scheduled after the end
        if (pending, cancel) != (subscription.pending_plan, subscription.cancel_at_period_end):
            self.billing.subscriptions.provider_changed(
                conn, subscription.id, pending_plan=pending, cancel_at_period_end=cancel
            )
            changed = True
        return changed

    def _renewal(
        self,
        conn: Connection,
        subscription: Subscription,
        period_start: datetime,
        invoice_id: str | None,
        *,
        paid: bool,
        invoice_url: str | None = None,
    ) -> tuple[EventOutcome, str | None]:
        """The renewal for the period from ``period_start`` paid (or failed)."""
        if subscription.status == "canceled":
            return "ignored", "the subscription has ended"
        if subscription.current_period_end > period_start:
            return "ignored", "that period was renewed already"
        # An invoice for a later period: the ones before it were paid (Stripe
        # bills in order), their events are late.
        for _ in range(MAX_CATCH_UP_PERIODS):
            if subscription.current_period_end >= period_start:
                break
            subscription = self.billing.subscriptions.renewal_paid(
                conn, subscription.id, period_end=subscription.current_period_end
            )
            if subscription.status == "canceled":
                return "applied", "ended while catching up"
        if subscription.current_period_end != period_start:
            return "ignored", "the invoice's period is not one of ours"
        if paid:
            self.billing.subscriptions.renewal_paid(
                conn,
                subscription.id,
                period_end=period_start,
                external_id=invoice_id,
                invoice_url=invoice_url,
            )
        else:
            if subscription.status != "active":
                return "ignored", "the renewal had failed already"
            self.billing.subscriptions.renewal_failed(
                conn,
                subscription.id,
                period_end=period_start,
                reason="Stripe could not charge the card",
                external_id=invoice_id,
            )
        return "applied", None

    def _claw_back(
        self, conn: Connection, event: Event, prefetched: Prefetched, reason: ClawbackReason
    ) -> tuple[EventOutcome, str | None]:
        obj = event.object
        payment = self._reversed_payment(conn, obj, prefetched)
        if payment is None:
            customer = _id(obj.get("customer"))
            if customer is not None and repo.user_of_customer(conn, customer) is None:
                return "unknown_customer", f"customer {customer}"
            return "ignored", "no payment of ours matches the charge"
        if repo.clawed_back(conn, payment.id):
            return "ignored", f"payment {payment.id} was clawed back already"
        outcome = self.billing.clawbacks.claw_back(conn, payment, reason=reason, actor=ACTOR)
        repo.record_clawback(
            conn,
            repo.StripeClawback(
                payment_id=payment.id,
                reason=reason,
                event_id=event.id,
                credits=outcome.clawed_back,
                spent=outcome.spent,
                created_at=self.clock.now(),
            ),
        )
        return "applied", None

    # -- invoices' pages ---------------------------------------------------------

    def _invoice_of_no_subscription(
        self, conn: Connection, event: Event
    ) -> tuple[EventOutcome, str | None]:
        """An invoice of a one-time payment (a pack's Checkout creates one):
        its page goes to the payment its metadata names."""
        obj = event.object
        key = (obj.get("metadata") or {}).get(META_KEY)
        payment = billing_repo.payment_by_key(conn, str(key)) if key else None
        if payment is None:
            payment = repo.payment_by_external_id(conn, _id(obj.get("id")) or "")
        if (
            event.type == "invoice.paid"
            and payment is not None
            and self._link_invoice(conn, payment, hosted_invoice_url(obj))
        ):
            return "applied", "a one-time payment's invoice: its page linked to its payment"
        return "ignored", "an invoice of no subscription"

    def _link_invoice_of(self, conn: Connection, invoice_id: str | None, url: str | None) -> bool:
        """Give the payment of invoice ``invoice_id`` its page ``url``."""
        if invoice_id is None or url is None:
            return False
        payment = repo.payment_by_external_id(conn, invoice_id)
        return payment is not None and self._link_invoice(conn, payment, url)

    @staticmethod
    def _link_invoice(conn: Connection, payment: Payment, url: str | None) -> bool:
        """Record ``url`` as ``payment``'s invoice page if it has none yet."""
        if url is None or payment.hosted_invoice_url is not None:
            return False
        return billing_repo.set_hosted_invoice_url(conn, payment.id, url)

    # -- lookups ---------------------------------------------------------------

    def _lock_account(self, conn: Connection, event: Event, prefetched: Prefetched) -> None:
        """Lock the account the event is about before any of its wallets: a
        clawback or an upgrade may score a fair-use signal after moving
        credits, and a submission or a suspension takes the account first,
        then the wallets (``accounts.repository.lock_user``)."""
        customer = _id(event.object.get("customer"))
        user_id = repo.user_of_customer(conn, customer) if customer is not None else None
        if user_id is None and event.type in ("charge.refunded", "charge.dispute.created"):
            payment = self._reversed_payment(conn, event.object, prefetched)
            user_id = payment.user_id if payment is not None else None
        if user_id is not None:
            accounts_repo.lock_user(conn, user_id)

    def _reversed_payment(
        self, conn: Connection, obj: Mapping[str, Any], prefetched: Prefetched
    ) -> Payment | None:
        """The payment a charge (or a dispute of one) paid: a pack by its
        payment intent, a subscription's invoice by the invoice."""
        intent = _id(obj.get("payment_intent"))
        if intent is not None:
            found = repo.payment_by_external_id(conn, intent)
            if found is not None:
                return found
        if prefetched.invoice_id is not None:
            return repo.payment_by_external_id(conn, prefetched.invoice_id)
        return None

    def _user(
        self, conn: Connection, customer_id: str | None, metadata: Mapping[str, Any]
    ) -> str | None:
        """Our user behind a Stripe customer (or named by our metadata)."""
        if customer_id:
            user_id = repo.user_of_customer(conn, customer_id)
            if user_id is not None:
                return user_id
        named = metadata.get(META_USER)
        if named and repo.user_exists(conn, str(named)):
            return str(named)
        return None

    def _wallet(self, conn: Connection, user_id: str, metadata: Mapping[str, Any]) -> str:
        wallet = metadata.get(META_WALLET)
        if wallet:
            return str(wallet)
        return self.billing.ledger.wallet_of(conn, "user", user_id)

    def _linked(self, conn: Connection, stripe_subscription_id: str) -> bool:
        try:
            repo.subscription_link(conn, stripe_subscription_id)
        except LookupError:
            return False
        return True

    def _subscription(self, conn: Connection, stripe_subscription_id: str) -> Subscription:
        link = repo.subscription_link(conn, stripe_subscription_id)
        found = billing_repo.subscription_by_id(conn, link.subscription_id, lock=True)
        if found is None:  # pragma: no cover - the link's foreign key
            raise LookupError(link.subscription_id)
        return found

    @staticmethod
    def _timestamp(header: str) -> int:
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t" and value.isdigit():
                return int(value)
        raise InvalidSignature("the signature has no timestamp")

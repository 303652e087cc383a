"""The Stripe billing backend: where customers pay (Checkout), and what we
ask of Stripe when they change plans, cancel or pay a past-due renewal.

Prices are never created in the Stripe dashboard: every Checkout session and
subscription change carries its price inline (``price_data``), from the
catalog, against one Stripe product per plan whose id we choose
(``plasmaart_plan_<plan>``), so that a subscription item says which plan it
is. Every request carries an idempotency key derived from ours, so a retried
request never charges twice. Renewals, failures and the end of a
subscription are Stripe's to drive (``renews_on_clock = False``); its
webhooks report them (``webhooks.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import stripe
from sqlalchemy import Connection
from stripe.params import SubscriptionUpdateParams
from stripe.params.checkout import SessionCreateParams

from plasmaart.billing.backends import (
    ActionRequired,
    ChargeOutcome,
    CheckoutOutcome,
    Customer,
    Declined,
    Effective,
    OffSessionOutcome,
    Paid,
    Redirect,
)
from plasmaart.billing.repository import Subscription
from plasmaart.billing.stripe import repository as repo
from plasmaart.billing.stripe.errors import BillingPortalUnavailable, BillingProviderError
from plasmaart.catalog import CreditPack, PlanSpec
from plasmaart.clock import Clock
from plasmaart.ids import new_id

log = logging.getLogger(__name__)
T = TypeVar("T")

PLAN_PRODUCT_PREFIX = "plasmaart_plan_"
# Our ids ride along in Stripe's metadata (on the session, the subscription
# and the payment intent), so a webhook can tell whose purchase it reports.
META_USER = "plasmaart_user"
META_WALLET = "plasmaart_wallet"
META_KIND = "plasmaart_kind"
META_PLAN = "plasmaart_plan"
META_PACK = "plasmaart_pack"
META_KEY = "plasmaart_key"
# The kind of an auto top-up's off-session payment intent.
KIND_TOPUP = "topup"
# What Stripe's error codes mean for an off-session charge: the bank wants
# the customer to authenticate it (SCA), not a decline.
AUTHENTICATION_CODES = frozenset({"authentication_required"})
# Stripe answers in well under a second; a stuck connection must not hold
# the request's database transaction for long.
TIMEOUT_S = 20.0
MAX_NETWORK_RETRIES = 2


def plan_product_id(plan_id: str) -> str:
    return PLAN_PRODUCT_PREFIX + plan_id


def plan_of_product(product_id: str) -> str | None:
    """Our plan id from a subscription item's product, or None for a
    product that is not one of ours."""
    if product_id.startswith(PLAN_PRODUCT_PREFIX):
        return product_id[len(PLAN_PRODUCT_PREFIX) :]
    return None


def _id_of(value: Any) -> str:
    """An expandable field's id, whether Stripe sent the id or the object."""
    return str(value.get("id") if isinstance(value, Mapping) else value)


def stripe_time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class StripeSubscriptionState:
    """What a Stripe subscription object says, in our words."""

    id: str
    customer_id: str
    status: str
    plan: str | None
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    metadata: Mapping[str, str]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> StripeSubscriptionState:
        """From a subscription object (an API answer or an event's object).
        Since the 2025-03-31 API the period lives on the subscription's items."""
        items = data.get("items", {}).get("data") or [{}]
        item = items[0]
        price = item.get("price") or {}
        product = price.get("product") or ""
        if isinstance(product, Mapping):
            product = product.get("id", "")
        start = item.get("current_period_start") or data.get("current_period_start") or 0
        end = item.get("current_period_end") or data.get("current_period_end") or 0
        customer = data.get("customer") or ""
        if isinstance(customer, Mapping):
            customer = customer.get("id", "")
        return cls(
            id=str(data["id"]),
            customer_id=str(customer),
            status=str(data.get("status") or ""),
            plan=plan_of_product(str(product)),
            current_period_start=stripe_time(int(start)),
            current_period_end=stripe_time(int(end)),
            cancel_at_period_end=bool(data.get("cancel_at_period_end")),
            metadata=dict(data.get("metadata") or {}),
        )


class StripeBackend:
    name = "stripe"
    renews_on_clock = False

    def __init__(
        self,
        clock: Clock,
        *,
        secret_key: str,
        api_base: str,
        return_url: str,
        currency: str,
    ) -> None:
        self.clock = clock
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            http_client=stripe.RequestsClient(timeout=TIMEOUT_S),
            max_network_retries=MAX_NETWORK_RETRIES,
        )
        self.return_url = return_url
        self.currency = currency.lower()
        # Plan products known to exist at Stripe (created once, then cached).
        self._products: set[str] = set()

    # -- BillingBackend ---------------------------------------------------------

    def checkout_subscription(
        self, conn: Connection, *, customer: Customer, plan: PlanSpec, idempotency_key: str
    ) -> CheckoutOutcome:
        price = {
            "product": self._plan_product(plan),
            "unit_amount": plan.price_cents,
            "recurring": {"interval": "month"},
        }
        return self._checkout(
            conn, customer, {META_PLAN: plan.id}, price, idempotency_key=idempotency_key
        )

    def checkout_pack(
        self, conn: Connection, *, customer: Customer, pack: CreditPack, idempotency_key: str
    ) -> CheckoutOutcome:
        price = {
            "product_data": {
                "name": f"{pack.credits:,} PlasmaArt credits",
                "metadata": {META_PACK: pack.id},
            },
            "unit_amount": pack.price_cents,
        }
        return self._checkout(
            conn, customer, {META_PACK: pack.id}, price, idempotency_key=idempotency_key
        )

    def _checkout(
        self,
        conn: Connection,
        customer: Customer,
        item: dict[str, str],
        price: dict[str, Any],
        *,
        idempotency_key: str,
    ) -> CheckoutOutcome:
        """A Checkout session selling one line at ``price``: a plan (``item``
        names it under ``META_PLAN``; a subscription, the metadata kept on
        it) or a pack (``META_PACK``; a payment, the metadata on its intent).
        The webhook finds what was bought in the metadata."""
        subscription = META_PLAN in item
        metadata = {
            META_USER: customer.user_id,
            META_WALLET: customer.wallet_id,
            META_KIND: "subscription" if subscription else "pack",
            **item,
            META_KEY: idempotency_key,
        }
        # A pack's card is saved for off-session use (an auto top-up charges
        # it later); a subscription's is saved by Checkout anyway, for renewals.
        intent_data: dict[str, Any] = {"metadata": metadata}
        if not subscription:
            intent_data["setup_future_usage"] = "off_session"
        params: dict[str, Any] = {
            "mode": "subscription" if subscription else "payment",
            "customer": self.customer_id(conn, customer),
            "client_reference_id": customer.user_id,
            "line_items": [{"quantity": 1, "price_data": {"currency": self.currency, **price}}],
            "metadata": metadata,
            "subscription_data" if subscription else "payment_intent_data": intent_data,
            "success_url": self._return("checkout=success"),
            "cancel_url": self._return("checkout=canceled"),
        }
        if not subscription:
            # A one-time payment gets an invoice only when asked: its hosted
            # page is what the receipt links to, as a subscription's invoice.
            params["invoice_creation"] = {"enabled": True, "invoice_data": {"metadata": metadata}}
        session = self._call(
            lambda: self.client.v1.checkout.sessions.create(
                params=cast(SessionCreateParams, params),
                options={"idempotency_key": f"checkout:{idempotency_key}"},
            )
        )
        return Redirect(str(session.url))

    def change_plan(
        self,
        conn: Connection,  # noqa: ARG002 - Stripe keeps the subscription's state
        *,
        customer: Customer,  # noqa: ARG002
        subscription: Subscription,
        plan: PlanSpec,
        effective: Effective,
        amount_cents: int,  # noqa: ARG002 - Stripe prorates by its own reckoning
        idempotency_key: str,
        prorate_at: datetime | None = None,
    ) -> ChargeOutcome:
        """``now`` (an upgrade): the new price at once, the proration from
        ``prorate_at`` (Stripe's ``proration_date``, the moment our credits
        are prorated from too) invoiced and charged now, and what the invoice
        charged reported; a declined card refuses the change.
        ``period_end`` (a downgrade, or withdrawing one): the new price with
        no proration, so Stripe bills it from the next period on."""
        stripe_id = self._stripe_id(subscription)
        current = self._call(lambda: self.client.v1.subscriptions.retrieve(stripe_id))
        item_id = str(current["items"].data[0].id)
        product = self._plan_product(plan)
        now = effective == "now"
        params: SubscriptionUpdateParams = {
            "items": [
                {
                    "id": item_id,
                    "price_data": {
                        "currency": self.currency,
                        "product": product,
                        "unit_amount": plan.price_cents,
                        "recurring": {"interval": "month"},
                    },
                }
            ],
            "proration_behavior": "always_invoice" if now else "none",
            "payment_behavior": "error_if_incomplete",
            "cancel_at_period_end": False,
            "metadata": {META_PLAN: plan.id},
        }
        if now:
            # The invoice expanded: what it charged is what the payment records.
            params["expand"] = ["latest_invoice"]
            if prorate_at is not None:
                params["proration_date"] = int(prorate_at.timestamp())
        try:
            updated = self.client.v1.subscriptions.update(
                stripe_id,
                params=params,
                options={"idempotency_key": self._attempt_key("change", idempotency_key)},
            )
        except stripe.CardError as exc:
            return Declined(exc.user_message or "the card was declined")
        except stripe.StripeError as exc:
            raise self._unavailable(exc) from exc
        if not now:
            return Paid(None)
        # Expanded (as asked) the invoice is an object, else its id.
        invoice = updated.to_dict().get("latest_invoice")
        if not isinstance(invoice, Mapping):
            return Paid(None if invoice is None else str(invoice))
        paid = invoice.get("amount_paid")
        return Paid(
            str(invoice["id"]),
            amount_cents=None if paid is None else int(paid),
            invoice_url=invoice.get("hosted_invoice_url"),
        )

    def cancel(self, conn: Connection, *, customer: Customer, subscription: Subscription) -> None:  # noqa: ARG002
        """At the period end; a past-due subscription at once (its period is
        over and unpaid)."""
        stripe_id = self._stripe_id(subscription)
        end = int(subscription.current_period_end.timestamp())
        if subscription.status == "past_due":
            key = f"cancel:{subscription.id}:{end}"
            self._call(
                lambda: self.client.v1.subscriptions.cancel(
                    stripe_id, options={"idempotency_key": key}
                )
            )
            return
        self._set_cancel_at_period_end(subscription, True, "cancel")

    def end_now(self, conn: Connection, *, customer: Customer, subscription: Subscription) -> None:  # noqa: ARG002
        """Cancel the Stripe subscription now (the account is being deleted).
        One key per subscription: a retry of a deletion that failed after
        this call replays Stripe's first answer instead of failing on a
        subscription Stripe has already canceled."""
        stripe_id = self._stripe_id(subscription)
        key = f"end-now:{subscription.id}"
        self._call(
            lambda: self.client.v1.subscriptions.cancel(stripe_id, options={"idempotency_key": key})
        )

    def stop_renewal(
        self,
        conn: Connection,  # noqa: ARG002
        *,
        customer: Customer,  # noqa: ARG002
        subscription: Subscription,
    ) -> None:
        """Stripe renews by itself: it is told to end the subscription at the
        period end (the webhook that follows is recognised as ours, not the
        customer's: ``webhooks._reconcile``)."""
        self._set_cancel_at_period_end(subscription, True, "suspend")

    def resume_renewal(
        self,
        conn: Connection,  # noqa: ARG002
        *,
        customer: Customer,  # noqa: ARG002
        subscription: Subscription,
    ) -> None:
        self._set_cancel_at_period_end(subscription, False, "reinstate")

    def charge_renewal(
        self,
        conn: Connection,  # noqa: ARG002
        *,
        customer: Customer,  # noqa: ARG002
        subscription: Subscription,
        plan: PlanSpec,  # noqa: ARG002 - the open invoice has the price
        amount_cents: int,  # noqa: ARG002
        idempotency_key: str,
    ) -> ChargeOutcome:
        """Pay the subscription's open invoice now (the customer paying a
        past-due subscription; Stripe renews on its own otherwise)."""
        stripe_id = self._stripe_id(subscription)
        invoices = self._call(
            lambda: self.client.v1.invoices.list(params={"subscription": stripe_id, "limit": 1})
        )
        if not invoices.data:
            return Declined("Stripe has no invoice to pay for this subscription")
        invoice = invoices.data[0]
        if invoice.status == "paid":
            return Paid(str(invoice.id), invoice_url=invoice.hosted_invoice_url)
        if invoice.status != "open":
            return Declined(f"the last invoice is {invoice.status}, not open")
        invoice_id = str(invoice.id)
        try:
            settled = self.client.v1.invoices.pay(
                invoice_id, options={"idempotency_key": self._attempt_key("pay", idempotency_key)}
            )
        except stripe.CardError as exc:
            return Declined(exc.user_message or "the card was declined")
        except stripe.StripeError as exc:
            raise self._unavailable(exc) from exc
        return Paid(
            invoice_id, invoice_url=settled.hosted_invoice_url or invoice.hosted_invoice_url
        )

    def has_payment_method(self, conn: Connection, *, customer: Customer) -> bool:
        """A card saved at Stripe by an earlier Checkout (a pack's, saved
        for off-session use; a subscription's)."""
        return self._saved_card(conn, customer) is not None

    def charge_off_session(
        self,
        conn: Connection,
        *,
        customer: Customer,
        pack: CreditPack,
        idempotency_key: str,
        cards_as_of: datetime | None = None,
    ) -> OffSessionOutcome:
        """A PaymentIntent on the saved card, ``off_session`` and confirmed
        at once, keyed by ``idempotency_key`` (a retry after a crash replays
        Stripe's first answer: never a second charge). Stripe answers 402
        ``authentication_required`` (the intent in the error) when the bank
        wants the customer there: ``ActionRequired``; any other card error
        is a decline."""
        card = self._saved_card(conn, customer, cards_as_of)
        if card is None:
            return Declined("no saved card: buy a pack once through Checkout to save one")
        customer_id, payment_method = card
        metadata = {
            META_USER: customer.user_id,
            META_WALLET: customer.wallet_id,
            META_KIND: KIND_TOPUP,
            META_PACK: pack.id,
            META_KEY: idempotency_key,
        }
        try:
            intent = self.client.v1.payment_intents.create(
                params={
                    "amount": pack.price_cents,
                    "currency": self.currency,
                    "customer": customer_id,
                    "payment_method": payment_method,
                    "off_session": True,
                    "confirm": True,
                    "description": f"Auto top-up: {pack.credits:,} PlasmaArt credits",
                    "metadata": metadata,
                },
                options={"idempotency_key": f"topup:{idempotency_key}"},
            )
        except stripe.CardError as exc:
            answer = exc.json_body if isinstance(exc.json_body, Mapping) else {}
            body = answer.get("error") or {}
            failed = body.get("payment_intent") or {}
            intent_id = failed.get("id") if isinstance(failed, Mapping) else None
            reason = exc.user_message or body.get("message") or "the card was declined"
            if exc.code in AUTHENTICATION_CODES:
                return ActionRequired(str(reason), None if intent_id is None else str(intent_id))
            return Declined(str(reason))
        except stripe.StripeError as exc:
            raise self._unavailable(exc) from exc
        if intent.status == "succeeded":
            return Paid(str(intent.id), amount_cents=int(intent.amount_received or intent.amount))
        if intent.status == "requires_action":
            return ActionRequired("the bank asks the customer to authenticate", str(intent.id))
        return Declined(f"the payment is {intent.status}")

    def _saved_card(
        self, conn: Connection, customer: Customer, as_of: datetime | None = None
    ) -> tuple[str, str] | None:
        """(the Stripe customer, the payment method an off-session charge
        uses): the customer's default, else the newest card attached (by
        ``as_of`` when given: the newest saved by then, else the oldest).
        A retry of a charge must name the card its first attempt named: the
        same idempotency key with another ``payment_method`` is refused by
        Stripe (``idempotency_error``), and an auto top-up retried after a
        pack's Checkout had saved a newer card stayed pending for ever."""
        customer_id = repo.customer_id_of_user(conn, customer.user_id)
        if customer_id is None:
            return None
        found = self._call(lambda: self.client.v1.customers.retrieve(customer_id))
        settings = found.to_dict().get("invoice_settings") or {}
        default = settings.get("default_payment_method")
        if default:
            return customer_id, str(_id_of(default))
        cards = self._call(
            lambda: self.client.v1.customers.payment_methods.list(
                customer_id, params={"type": "card", "limit": 1 if as_of is None else 100}
            )
        )
        if not cards.data:
            return None
        if as_of is None:
            return customer_id, str(cards.data[0].id)
        # Newest first. Stripe's clock and ours may differ by seconds: when no
        # card predates the run, the oldest is as stable a choice.
        before = [card for card in cards.data if int(card.created) <= as_of.timestamp()]
        return customer_id, str((before[0] if before else cards.data[-1]).id)

    # -- Stripe's own ------------------------------------------------------------

    def portal_url(self, conn: Connection, user_id: str) -> str:
        """A customer portal session of the user's (cards, invoices, plan)."""
        customer_id = repo.customer_id_of_user(conn, user_id)
        if customer_id is None:
            raise BillingPortalUnavailable(
                "you have not paid through Stripe yet: subscribe or buy credits first"
            )
        session = self._call(
            lambda: self.client.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": self.return_url}
            )
        )
        return str(session.url)

    def subscription_state(self, stripe_subscription_id: str) -> StripeSubscriptionState | None:
        """The subscription as Stripe has it now; None if Stripe has no such
        subscription (an event of another account's, or made up)."""
        try:
            found = self.client.v1.subscriptions.retrieve(stripe_subscription_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise self._unavailable(exc) from exc
        except stripe.StripeError as exc:
            raise self._unavailable(exc) from exc
        return StripeSubscriptionState.parse(found.to_dict())

    def invoice_url(self, invoice_id: str) -> str | None:
        """The hosted page of an invoice (``hosted_invoice_url``), for a
        receipt; None if Stripe cannot say now: the receipt is not worth
        holding up the purchase for, and the invoice's own ``invoice.paid``
        event brings the link later."""
        try:
            invoice = self.client.v1.invoices.retrieve(invoice_id)
        except stripe.StripeError as exc:
            log.warning("stripe invoice %s: %s", invoice_id, exc)
            return None
        url = invoice.hosted_invoice_url
        return None if url is None else str(url)

    def invoice_of_payment_intent(self, payment_intent_id: str) -> str | None:
        """The invoice a payment intent paid (a subscription's charge), if any."""
        found = self._call(
            lambda: self.client.v1.invoice_payments.list(
                params={
                    "payment": {"type": "payment_intent", "payment_intent": payment_intent_id},
                    "limit": 1,
                }
            )
        )
        if not found.data:
            return None
        invoice = found.data[0].invoice
        return str(invoice if isinstance(invoice, str) else invoice.id)

    def customer_id(self, conn: Connection, customer: Customer) -> str:
        """The user's Stripe customer, created on their first checkout."""
        known = repo.customer_id_of_user(conn, customer.user_id)
        if known is not None:
            return known
        created = self._call(
            lambda: self.client.v1.customers.create(
                params={"email": customer.email, "metadata": {META_USER: customer.user_id}},
                options={"idempotency_key": f"customer:{customer.user_id}"},
            )
        )
        repo.insert_customer(
            conn, user_id=customer.user_id, customer_id=str(created.id), now=self.clock.now()
        )
        return str(created.id)

    # -- internals -------------------------------------------------------------

    def _plan_product(self, plan: PlanSpec) -> str:
        product_id = plan_product_id(plan.id)
        if product_id in self._products:
            return product_id
        try:
            self.client.v1.products.create(
                params={
                    "id": product_id,
                    "name": f"PlasmaArt {plan.name}",
                    "metadata": {META_PLAN: plan.id},
                }
            )
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_already_exists":
                raise self._unavailable(exc) from exc
        except stripe.StripeError as exc:
            raise self._unavailable(exc) from exc
        self._products.add(product_id)
        return product_id

    def _set_cancel_at_period_end(
        self, subscription: Subscription, cancel: bool, action: str
    ) -> None:
        stripe_id = self._stripe_id(subscription)
        # One key per request: a cancellation (or suspension), its withdrawal
        # and a second one, in one period or even one instant, are three
        # requests, none a replay of another (Stripe would answer a replay
        # with the first answer and apply nothing). Nothing is charged, so
        # the client's own retries of one request (same key) are all that
        # need the key.
        key = f"{action}:{subscription.id}:{new_id('req')}"
        self._call(
            lambda: self.client.v1.subscriptions.update(
                stripe_id,
                params={"cancel_at_period_end": cancel},
                options={"idempotency_key": key},
            )
        )

    def _attempt_key(self, action: str, idempotency_key: str) -> str:
        """A key for one attempt at a charge. Stripe replays a declined
        answer for the key it was given, so a customer retrying with a new
        card needs a new key; within the second, a retried request (a lost
        answer, a double click) still charges once. Our own state refuses a
        second upgrade, and Stripe a second payment of a paid invoice."""
        return f"{action}:{idempotency_key}:{int(self.clock.now().timestamp())}"

    def _return(self, query: str) -> str:
        separator = "&" if "?" in self.return_url else "?"
        return f"{self.return_url}{separator}{query}"

    @staticmethod
    def _stripe_id(subscription: Subscription) -> str:
        if not subscription.external_id:
            raise BillingProviderError(
                f"subscription {subscription.id} has no Stripe subscription id"
            )
        return subscription.external_id

    @staticmethod
    def _call(request: Callable[[], T]) -> T:
        try:
            return request()
        except stripe.StripeError as exc:
            raise StripeBackend._unavailable(exc) from exc

    @staticmethod
    def _unavailable(exc: stripe.StripeError) -> BillingProviderError:
        log.warning("stripe request failed: %s", exc)
        return BillingProviderError(
            f"Stripe refused or could not be reached ({type(exc).__name__}); try again"
        )

"""A local stand-in for Stripe's API, served on 127.0.0.1 in a thread, and the
events Stripe would send, signed as Stripe signs them.

The API part answers the calls ``plasmaart.billing.stripe.StripeBackend``
makes, in Stripe's JSON shapes (the 2025-03-31+ API: periods on subscription
items, ``invoice.parent.subscription_details``), form-encoded requests with
bracketed keys decoded as Stripe does:

* ``POST /v1/customers``, ``POST /v1/products`` (a taken ``id``: 400
  ``resource_already_exists``), ``POST /v1/checkout/sessions``,
  ``POST /v1/billing_portal/sessions``;
* ``GET|POST|DELETE /v1/subscriptions/{id}`` (an update with
  ``proration_behavior=always_invoice`` to a pricier price invoices and
  charges the difference prorated by the seconds left from
  ``proration_date`` (now by default), to the nearest cent; a declining
  card: 402 ``card_error``; ``expand[]=latest_invoice`` expands it);
* ``GET /v1/invoices?subscription=``, ``GET /v1/invoices/{id}``,
  ``POST /v1/invoices/{id}/pay``,
  ``GET /v1/invoice_payments?payment[payment_intent]=``;
* ``GET /v1/customers/{id}`` (``invoice_settings.default_payment_method``),
  ``GET /v1/customers/{id}/payment_methods`` (newest first): the cards a
  Checkout saved (a subscription's, or a payment's made with
  ``payment_intent_data[setup_future_usage]=off_session``);
* ``POST /v1/payment_intents`` with ``confirm=true``: charges the card at
  once; a declining customer's answers 402 ``card_error`` ``card_declined``,
  and one whose card wants authentication (``requiring_action``) 402
  ``card_error`` ``authentication_required`` when ``off_session=true`` (an
  intent left ``requires_action`` otherwise), each error carrying the
  ``payment_intent`` (status ``requires_payment_method``) as Stripe's does.

Invoices are finalized when created, so each has its ``hosted_invoice_url``
(a page of the fake's, ``/invoices/{id}``, standing for Stripe's
``https://invoice.stripe.com/i/...``). A payment-mode Checkout session
created with ``invoice_creation[enabled]=true`` gets a post-purchase invoice
when paid (no subscription parent; ``invoice_data[metadata]`` as its
metadata), named by the session's ``invoice``, and its ``invoice.paid``
follows the session's completion.

Every request is recorded with its ``Idempotency-Key``; a key seen before
replays the first answer, as Stripe does, and a key seen before with another
method, path or parameters is refused (400 ``idempotency_error``), as Stripe
refuses it: the first request's answer is never passed off as another's.
``Authorization: Bearer`` must be the fake's secret key.

The simulation part (``pay_checkout``, ``renew``, ``end``, ``portal``,
``refund``, ``dispute``) moves the fake's state as Stripe would and returns
the events Stripe would send; ``signed`` signs one for the webhook.

Every event the fake makes is kept in ``events`` (in the order made, each
with its ``created``), as Stripe keeps them for its redeliveries: ``storm``
sends every event of the last hour again, in a random order, each freshly
signed, over HTTP to a webhook URL (a live server, a child process), and
reports what each delivery was answered.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from plasmaart.billing.periods import period_end_after
from plasmaart.clock import Clock
from tests.support.http_fake import Answer, HttpFake

SECRET_KEY = "sk_test_fake_stripe"
WEBHOOK_SECRET = "whsec_test_fake_stripe"
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_fake{next(_ids):06d}"


# How far back a storm reaches by default: the last hour.
STORM_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Redelivery:
    """One delivery of a storm and what the webhook answered."""

    event_id: str
    event_type: str
    status: int  # 0: no answer (the connection failed or timed out)
    body: Any


@dataclass(frozen=True)
class Storm:
    """What a storm sent (in its order) and the answers."""

    deliveries: tuple[Redelivery, ...]

    @property
    def sent(self) -> int:
        return len(self.deliveries)

    def statuses(self) -> dict[int, int]:
        """How many deliveries were answered with each status."""
        found: dict[int, int] = {}
        for delivery in self.deliveries:
            found[delivery.status] = found.get(delivery.status, 0) + 1
        return found

    def outcomes(self) -> dict[str, int]:
        """How many 2xx answers named each ``outcome`` (``duplicate``, ...)."""
        found: dict[str, int] = {}
        for delivery in self.deliveries:
            if 200 <= delivery.status < 300 and isinstance(delivery.body, dict):
                name = str(delivery.body.get("outcome"))
                found[name] = found.get(name, 0) + 1
        return found


@dataclass(frozen=True)
class Call:
    """A request the fake received."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracketed form keys (``a[b][0][c]=v``) as nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _lists(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _error(status: int, kind: str, message: str, code: str | None = None) -> tuple[int, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    if kind == "card_error":
        error["decline_code"] = "generic_decline"
    return status, {"error": error}


class FakeStripe(HttpFake):
    """The fake server and Stripe's side of the story; use as a context manager."""

    name = "fake-stripe"

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.calls: list[Call] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.anchors: dict[str, datetime] = {}
        # Customers whose card declines every charge.
        self.declining: set[str] = set()
        # Customers whose bank asks to authenticate each payment (3D Secure).
        self.requiring_action: set[str] = set()
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.intents: dict[str, dict[str, Any]] = {}
        # Ids of the events a test delivered (the test's own bookkeeping).
        self.delivered: set[str] = set()
        # Every event made, in order: what a storm sends again.
        self.events: list[dict[str, Any]] = []
        # While set, every API call answers 500 (Stripe having a bad day).
        self.outage = False
        # Per idempotency key: the first request (method, path, parameters)
        # and its answer.
        self._replies: dict[str, tuple[tuple[str, str, str], tuple[int, Any]]] = {}
        self._lock = threading.RLock()

    def platform_settings(self) -> dict[str, Any]:
        """The settings (``Settings`` fields) of a platform billing through this fake."""
        return {
            "billing": "stripe",
            "stripe_secret_key": SECRET_KEY,
            "stripe_webhook_secret": WEBHOOK_SECRET,
            "stripe_api_base": self.url,
            "stripe_return_url": "http://127.0.0.1:8000/billing",
        }

    # -- the API -----------------------------------------------------------------

    def respond(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        status, answer = self.handle(method, target, headers, body)
        return status, answer, {"Request-Id": new_id("req")}

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        url = urlsplit(target)
        pairs = parse_qsl(url.query) + parse_qsl(body.decode())
        params = decode_form(pairs)
        key = headers.get("idempotency-key")
        with self._lock:
            self.calls.append(Call(method, url.path, params, key))
            if headers.get("authorization") != f"Bearer {SECRET_KEY}":
                return _error(401, "invalid_request_error", "Invalid API Key provided")
            if self.outage:
                return _error(500, "api_error", "Something went wrong on Stripe's end.")
            request = (method, url.path, json.dumps(params, sort_keys=True))
            if key is not None and key in self._replies:
                first, reply = self._replies[key]
                if first != request:
                    return _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        f"parameters they were first used with. Try using a key other "
                        f"than '{key}' if you meant to execute a different request.",
                    )
                return reply
            reply = self._route(method, url.path, params)
            if key is not None and method == "POST" and reply[0] < 500:
                self._replies[key] = (request, reply)
            return reply

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")[1:]  # without "v1"
        if method == "POST" and parts == ["customers"]:
            return 200, self._create_customer(params)
        if method == "GET" and parts[:1] == ["customers"] and len(parts) in (2, 3):
            customer = self.customers.get(parts[1])
            if customer is None:
                return _error(404, "invalid_request_error", "No such customer", "resource_missing")
            if len(parts) == 2:
                return 200, customer
            if parts[2] != "payment_methods":
                return _error(404, "invalid_request_error", f"Unrecognized request URL ({path})")
            cards = [pm for pm in self.payment_methods.values() if pm["customer"] == parts[1]]
            cards.sort(key=lambda pm: pm["created"], reverse=True)
            limit = int(params.get("limit", 10))
            return 200, self._list(cards[:limit], f"/v1/customers/{parts[1]}/payment_methods")
        if method == "POST" and parts == ["payment_intents"]:
            return self._create_intent(params)
        if method == "POST" and parts == ["products"]:
            if params["id"] in self.products:
                return _error(
                    400,
                    "invalid_request_error",
                    f"Product already exists: {params['id']}",
                    "resource_already_exists",
                )
            self.products[params["id"]] = {"object": "product", **params}
            return 200, self.products[params["id"]]
        if method == "POST" and parts == ["checkout", "sessions"]:
            return 200, self._create_session(params)
        if method == "POST" and parts == ["billing_portal", "sessions"]:
            if params.get("customer") not in self.customers:
                return _error(400, "invalid_request_error", "No such customer")
            portal_id = new_id("bps")
            return 200, {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"{self.url}/portal/{portal_id}",
            }
        if parts[:1] == ["subscriptions"] and len(parts) == 2:
            subscription = self.subscriptions.get(parts[1])
            if subscription is None:
                return _error(
                    404, "invalid_request_error", "No such subscription", "resource_missing"
                )
            if method == "GET":
                return 200, subscription
            if method == "DELETE":
                subscription["status"] = "canceled"
                return 200, subscription
            return self._update_subscription(subscription, params)
        if method == "GET" and parts == ["invoices"]:
            found = [
                invoice
                for invoice in self.invoices.values()
                if self._invoice_subscription(invoice) == params.get("subscription")
            ]
            found.sort(key=lambda invoice: invoice["created"], reverse=True)
            return 200, self._list(found[: int(params.get("limit", 10))], "/v1/invoices")
        if method == "GET" and parts[:1] == ["invoices"] and len(parts) == 2:
            found_invoice = self.invoices.get(parts[1])
            if found_invoice is None:
                return _error(404, "invalid_request_error", "No such invoice", "resource_missing")
            return 200, found_invoice
        if method == "POST" and parts[:1] == ["invoices"] and parts[2:] == ["pay"]:
            invoice = self.invoices[parts[1]]
            if invoice["customer"] in self.declining:
                return _error(402, "card_error", "Your card was declined.", "card_declined")
            self._mark_paid(invoice)
            subscription = self.subscriptions[self._invoice_subscription(invoice) or ""]
            subscription["status"] = "active"
            return 200, invoice
        if method == "GET" and parts == ["invoice_payments"]:
            intent = params.get("payment", {}).get("payment_intent")
            found = [
                {
                    "id": new_id("inpay"),
                    "object": "invoice_payment",
                    "invoice": invoice["id"],
                    "payment": {"type": "payment_intent", "payment_intent": intent},
                    "status": "paid",
                }
                for invoice in self.invoices.values()
                if invoice.get("payment_intent") == intent
            ]
            return 200, self._list(found, "/v1/invoice_payments")
        return _error(404, "invalid_request_error", f"Unrecognized request URL ({method} {path})")

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": new_id("cus"),
            "object": "customer",
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "invoice_settings": {"default_payment_method": None},
        }
        self.customers[customer["id"]] = customer
        return customer

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        session_id = new_id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params["mode"],
            "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "status": "open",
            "payment_status": "unpaid",
            "subscription": None,
            "invoice": None,
            "payment_intent": None,
            "url": f"{self.url}/checkout/{session_id}",
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "created": self._now(),
            "invoice_creation": {
                "enabled": params.get("invoice_creation", {}).get("enabled") == "true",
                "invoice_data": params.get("invoice_creation", {}).get("invoice_data", {}),
            },
            # Kept to build the subscription or the payment from.
            "line_items_params": params["line_items"],
            "subscription_data": params.get("subscription_data", {}),
            "payment_intent_data": params.get("payment_intent_data", {}),
        }
        self.sessions[session_id] = session
        return session

    def _create_intent(self, params: dict[str, Any]) -> tuple[int, Any]:
        customer = params.get("customer")
        method = self.payment_methods.get(params.get("payment_method", ""))
        if customer not in self.customers:
            return _error(400, "invalid_request_error", "No such customer", "resource_missing")
        if method is None or method["customer"] != customer:
            return _error(
                400,
                "invalid_request_error",
                "The provided PaymentMethod is not attached to this customer",
                "payment_method_invalid",
            )
        intent: dict[str, Any] = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "amount_received": 0,
            "currency": params["currency"],
            "customer": customer,
            "payment_method": method["id"],
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "off_session": params.get("off_session") == "true",
            "status": "requires_confirmation",
            "last_payment_error": None,
            "created": self._now(),
        }
        self.intents[intent["id"]] = intent
        if params.get("confirm") != "true":
            return 200, intent
        if customer in self.declining:
            return self._intent_error(intent, "card_declined", "Your card was declined.")
        if customer in self.requiring_action:
            if intent["off_session"]:
                return self._intent_error(
                    intent,
                    "authentication_required",
                    "Your card was declined. This transaction requires authentication.",
                )
            intent["status"] = "requires_action"
            return 200, intent
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        return 200, intent

    def _intent_error(
        self, intent: dict[str, Any], code: str, message: str
    ) -> tuple[int, dict[str, Any]]:
        """A failed confirmation as Stripe answers it: 402, the card error,
        and the payment intent (left ``requires_payment_method``) in it."""
        error = {
            "type": "card_error",
            "code": code,
            "decline_code": code if code == "authentication_required" else "generic_decline",
            "message": message,
            "payment_method": self.payment_methods[intent["payment_method"]],
        }
        intent["status"] = "requires_payment_method"
        intent["last_payment_error"] = dict(error)
        return 402, {"error": {**error, "payment_intent": dict(intent)}}

    def _save_card(self, customer: str) -> dict[str, Any]:
        card = {
            "id": new_id("pm"),
            "object": "payment_method",
            "type": "card",
            "customer": customer,
            "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030},
            "created": self._now(),
        }
        self.payment_methods[card["id"]] = card
        return card

    def _update_subscription(
        self, subscription: dict[str, Any], params: dict[str, Any]
    ) -> tuple[int, Any]:
        item = subscription["items"]["data"][0]
        if "items" in params:
            price = params["items"][0]["price_data"]
            amount = int(price["unit_amount"])
            old = int(item["price"]["unit_amount"])
            if params.get("proration_behavior") == "always_invoice" and amount > old:
                if subscription["customer"] in self.declining:
                    return _error(402, "card_error", "Your card was declined.", "card_declined")
                start, end = item["current_period_start"], item["current_period_end"]
                since = min(max(int(params.get("proration_date", self._now())), start), end)
                # The difference for the seconds left, to the nearest cent.
                prorated = (2 * (amount - old) * (end - since) + (end - start)) // (
                    2 * (end - start)
                )
                invoice = self._invoice(
                    subscription, "subscription_update", prorated, paid=True, since=since
                )
                subscription["latest_invoice"] = invoice["id"]
            item["price"] = self._price(price["product"], amount)
        if "cancel_at_period_end" in params:
            subscription["cancel_at_period_end"] = params["cancel_at_period_end"] == "true"
        subscription["metadata"].update(params.get("metadata", {}))
        if "latest_invoice" in params.get("expand", []) and subscription["latest_invoice"]:
            return 200, {
                **subscription,
                "latest_invoice": self.invoices[subscription["latest_invoice"]],
            }
        return 200, subscription

    # -- Stripe's side of the story -----------------------------------------------

    def pay_checkout(self, session_id: str) -> list[dict[str, Any]]:
        """The customer pays on the Checkout page: the events Stripe sends
        (a subscription's first ``invoice.paid`` among them)."""
        with self._lock:
            session = self.sessions[session_id]
            line = session["line_items_params"][0]["price_data"]
            session["status"] = "complete"
            session["payment_status"] = "paid"
            events = []
            if session["mode"] == "subscription":
                subscription = self._create_subscription(session, line)
                invoice = self.invoices[subscription["latest_invoice"]]
                session["subscription"] = subscription["id"]
                session["invoice"] = invoice["id"]
                events.append(self.event("customer.subscription.created", subscription))
                events.append(self.event("invoice.paid", invoice))
                self._save_card(session["customer"])  # kept for the renewals
            else:
                session["payment_intent"] = new_id("pi")
                intent_data = session["payment_intent_data"]
                if intent_data.get("setup_future_usage") == "off_session":
                    self._save_card(session["customer"])
                if session["invoice_creation"]["enabled"]:
                    invoice = self._one_time_invoice(session, int(line["unit_amount"]))
                    session["invoice"] = invoice["id"]
                    events.append(self.event("invoice.paid", invoice))
            events.insert(0, self.event("checkout.session.completed", session))
            return events

    def renew(self, subscription_id: str, *, paid: bool = True) -> list[dict[str, Any]]:
        """The period ends: Stripe starts the next one and invoices it;
        ``paid=False``: the card declines (past due, the invoice left open)."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            item = subscription["items"]["data"][0]
            start = datetime.fromtimestamp(item["current_period_end"], UTC)
            end = period_end_after(self.anchors[subscription_id], start)
            item["current_period_start"] = int(start.timestamp())
            item["current_period_end"] = int(end.timestamp())
            invoice = self._invoice(
                subscription,
                "subscription_cycle",
                int(item["price"]["unit_amount"]),
                paid=paid and subscription["customer"] not in self.declining,
            )
            subscription["latest_invoice"] = invoice["id"]
            subscription["status"] = "active" if invoice["status"] == "paid" else "past_due"
            kind = "invoice.paid" if invoice["status"] == "paid" else "invoice.payment_failed"
            return [
                self.event("customer.subscription.updated", subscription),
                self.event(kind, invoice),
            ]

    def period_ends(self, subscription_id: str) -> list[dict[str, Any]]:
        """What Stripe does by itself at the period end: end a subscription
        set to cancel at its period end, renew (and charge) any other."""
        with self._lock:
            ending = bool(self.subscriptions[subscription_id]["cancel_at_period_end"])
        return self.end(subscription_id) if ending else self.renew(subscription_id)

    def retry(self, invoice_id: str) -> list[dict[str, Any]]:
        """Stripe's automatic retry of an open invoice succeeds."""
        with self._lock:
            invoice = self.invoices[invoice_id]
            self._mark_paid(invoice)
            subscription = self.subscriptions[self._invoice_subscription(invoice) or ""]
            subscription["status"] = "active"
            return [self.event("invoice.paid", invoice)]

    def end(self, subscription_id: str) -> list[dict[str, Any]]:
        """The subscription ends (canceled at its period end, or unpaid)."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            subscription["status"] = "canceled"
            return [self.event("customer.subscription.deleted", subscription)]

    def portal(
        self,
        subscription_id: str,
        *,
        plan: str | None = None,
        amount: int | None = None,
        cancel_at_period_end: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The customer changes the subscription in the customer portal."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            item = subscription["items"]["data"][0]
            if plan is not None and amount is not None:
                item["price"] = self._price(f"plasmaart_plan_{plan}", amount)
            if cancel_at_period_end is not None:
                subscription["cancel_at_period_end"] = cancel_at_period_end
            return [self.event("customer.subscription.updated", subscription)]

    def refund(self, payment_intent: str, *, partial: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            charge = self._charge(payment_intent)
            charge["refunded"] = not partial
            charge["amount_refunded"] = charge["amount"] // 2 if partial else charge["amount"]
            return [self.event("charge.refunded", charge)]

    def dispute(self, payment_intent: str) -> list[dict[str, Any]]:
        with self._lock:
            charge = self._charge(payment_intent)
            dispute = {
                "id": new_id("dp"),
                "object": "dispute",
                "amount": charge["amount"],
                "charge": charge["id"],
                "payment_intent": payment_intent,
                "reason": "fraudulent",
                "status": "needs_response",
                "metadata": {},
                "created": self._now(),
            }
            return [self.event("charge.dispute.created", dispute)]

    def intent_succeeded(self, intent_id: str) -> list[dict[str, Any]]:
        """What Stripe sends after a payment intent confirmed by the API
        succeeded (an off-session charge): ``payment_intent.succeeded``."""
        with self._lock:
            return [self.event("payment_intent.succeeded", self.intents[intent_id])]

    def event(self, kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """An event as Stripe sends it: a snapshot of ``obj`` now (kept in
        ``events``)."""
        made = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": self._now(),
            "livemode": False,
            "pending_webhooks": 1,
            "type": kind,
            "data": {"object": json.loads(json.dumps(obj))},
        }
        with self._lock:
            self.events.append(made)
        return made

    def recent_events(self, within: timedelta = STORM_WINDOW) -> list[dict[str, Any]]:
        """The events made in the last ``within`` (by their ``created``), oldest first."""
        since = self._now() - within.total_seconds()
        with self._lock:
            return [event for event in self.events if event["created"] >= since]

    def storm(
        self,
        url: str,
        rng: random.Random,
        *,
        within: timedelta = STORM_WINDOW,
        new_ids: bool = False,
        timeout_s: float = 10.0,
    ) -> Storm:
        """Send every event of the last ``within`` again to the webhook at
        ``url`` (``.../v1/webhooks/stripe``), shuffled by ``rng``, each
        signed now, one after another over one HTTP connection, as Stripe's
        redeliveries do (same event ids, same bodies). ``new_ids``: each
        under a new event id instead (the same change told again by another
        event, which only the objects' own ids can recognise)."""
        chosen = self.recent_events(within)
        rng.shuffle(chosen)
        if new_ids:
            chosen = [{**event, "id": new_id("evt")} for event in chosen]
        answers = []
        with httpx.Client(timeout=timeout_s) as http:
            for event in chosen:
                payload, headers = self.signed(event)
                try:
                    response = http.post(url, content=payload, headers=headers)
                except httpx.HTTPError:
                    answers.append(Redelivery(event["id"], event["type"], 0, None))
                    continue
                try:
                    body: Any = response.json()
                except ValueError:
                    body = response.text
                answers.append(Redelivery(event["id"], event["type"], response.status_code, body))
        return Storm(tuple(answers))

    def signed(
        self,
        event: Mapping[str, Any],
        *,
        secret: str = WEBHOOK_SECRET,
        timestamp: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the webhook delivery of ``event``."""
        payload = json.dumps(event).encode()
        stamp = self._now() if timestamp is None else timestamp
        digest = hmac.new(
            secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256
        ).hexdigest()
        return payload, {
            "Stripe-Signature": f"t={stamp},v1={digest}",
            "Content-Type": "application/json; charset=utf-8",
        }

    # -- what tests look at ----------------------------------------------------------

    def calls_to(self, method: str, path_prefix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def subscription_of(self, session_id: str) -> str:
        return str(self.sessions[session_id]["subscription"])

    def latest_invoice(self, subscription_id: str) -> dict[str, Any]:
        return self.invoices[self.subscriptions[subscription_id]["latest_invoice"]]

    # -- internals -------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock.now().timestamp())

    def _price(self, product: str, amount: int) -> dict[str, Any]:
        return {
            "id": new_id("price"),
            "object": "price",
            "product": product,
            "unit_amount": amount,
            "currency": "usd",
            "recurring": {"interval": "month", "interval_count": 1},
        }

    def _create_subscription(self, session: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        subscription_id = new_id("sub")
        self.anchors[subscription_id] = now
        end = period_end_after(now, now)
        subscription: dict[str, Any] = {
            "id": subscription_id,
            "object": "subscription",
            "customer": session["customer"],
            "status": "active",
            "cancel_at_period_end": False,
            "metadata": dict(session["subscription_data"].get("metadata", {})),
            "created": self._now(),
            "latest_invoice": None,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": new_id("si"),
                        "object": "subscription_item",
                        "subscription": subscription_id,
                        "price": self._price(line["product"], int(line["unit_amount"])),
                        "quantity": 1,
                        "current_period_start": int(now.timestamp()),
                        "current_period_end": int(end.timestamp()),
                    }
                ],
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
        }
        self.subscriptions[subscription_id] = subscription
        invoice = self._invoice(
            subscription, "subscription_create", int(line["unit_amount"]), paid=True
        )
        subscription["latest_invoice"] = invoice["id"]
        return subscription

    def _invoice(
        self,
        subscription: dict[str, Any],
        reason: str,
        amount: int,
        *,
        paid: bool,
        since: int | None = None,
    ) -> dict[str, Any]:
        item = subscription["items"]["data"][0]
        invoice_id = new_id("in")
        invoice: dict[str, Any] = {
            "id": invoice_id,
            "object": "invoice",
            "customer": subscription["customer"],
            "billing_reason": reason,
            "status": "open",
            "amount_due": amount,
            "amount_paid": 0,
            "currency": "usd",
            "created": self._now(),
            "payment_intent": new_id("pi"),
            "hosted_invoice_url": f"{self.url}/invoices/{invoice_id}",
            "metadata": {},
            "parent": {
                "type": "subscription_details",
                "subscription_details": {
                    "subscription": subscription["id"],
                    "metadata": dict(subscription["metadata"]),
                },
            },
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": new_id("il"),
                        "object": "line_item",
                        "amount": amount,
                        "period": {
                            "start": item["current_period_start"] if since is None else since,
                            "end": item["current_period_end"],
                        },
                    }
                ],
                "has_more": False,
            },
        }
        self.invoices[invoice_id] = invoice
        if paid:
            self._mark_paid(invoice)
        return invoice

    def _one_time_invoice(self, session: dict[str, Any], amount: int) -> dict[str, Any]:
        """The invoice Checkout creates after a one-time payment, paid."""
        invoice_id = new_id("in")
        invoice: dict[str, Any] = {
            "id": invoice_id,
            "object": "invoice",
            "customer": session["customer"],
            "billing_reason": "manual",
            "status": "paid",
            "amount_due": amount,
            "amount_paid": amount,
            "currency": "usd",
            "created": self._now(),
            "payment_intent": session["payment_intent"],
            "hosted_invoice_url": f"{self.url}/invoices/{invoice_id}",
            "metadata": dict(session["invoice_creation"]["invoice_data"].get("metadata", {})),
            "parent": None,
            "lines": {"object": "list", "data": [], "has_more": False},
        }
        self.invoices[invoice_id] = invoice
        return invoice

    @staticmethod
    def _mark_paid(invoice: dict[str, Any]) -> None:
        invoice["status"] = "paid"
        invoice["amount_paid"] = invoice["amount_due"]

    @staticmethod
    def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
        details = (invoice.get("parent") or {}).get("subscription_details") or {}
        found = details.get("subscription")
        return None if found is None else str(found)

    def _charge(self, payment_intent: str) -> dict[str, Any]:
        customer = None
        amount = 0
        for session in self.sessions.values():
            if session.get("payment_intent") == payment_intent:
                customer = session["customer"]
                amount = int(session["line_items_params"][0]["price_data"]["unit_amount"])
        for invoice in self.invoices.values():
            if invoice.get("payment_intent") == payment_intent:
                customer = invoice["customer"]
                amount = int(invoice["amount_paid"])
        intent = self.intents.get(payment_intent)
        if intent is not None:
            customer, amount = intent["customer"], int(intent["amount_received"])
        return {
            "id": new_id("ch"),
            "object": "charge",
            "amount": amount,
            "amount_refunded": 0,
            "customer": customer,
            "payment_intent": payment_intent,
            "refunded": False,
            "metadata": {},
            "created": self._now(),
        }

    def _list(self, data: list[dict[str, Any]], url: str) -> dict[str, Any]:
        return {"object": "list", "data": data, "has_more": False, "url": url}

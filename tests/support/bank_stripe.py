"""The bank test billed through Stripe (``PLASMAART_BANK_BILLING=stripe``):
Stripe's side of the story, played by the fake Stripe
(``tests/support/fake_stripe.py``) on loopback, its events delivered signed
over HTTP to the API processes' ``/v1/webhooks/stripe`` as they happen.

``StripeSide`` is shared by the creator threads: a checkout paid (a
subscription's, a pack's), a change of plan echoed (the subscription as
Stripe has it now, and the proration invoice it made), a renewal, each
yielding the events Stripe would send, which ``deliver`` posts, one by one,
each to a random API process, again (with the same id, as Stripe retries)
when there was no answer or a 503 ``unavailable``, boundedly. Every answer
is recorded: anything else than a 2xx is a violation. The off-session
charges the workers make (auto top-ups) are told back as Stripe tells them
(``payment_intent.succeeded``).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support.fake_stripe import FakeStripe
from tests.support.faults.stripe import WebhookStorm

WEBHOOK = "/v1/webhooks/stripe"
# The refusals a fault may cause that Stripe, as it does for any non-2xx,
# delivers again later: a database outage, a full disk (nothing written).
DOCUMENTED = {(503, "unavailable"), (507, "storage_full")}
# A delivery without an answer (a killed API process) or answered 503
# ``unavailable`` is sent again, to another process at random, this many
# times at most, a moment apart (Stripe's own retries, compressed).
DELIVERY_TRIES = 40
DELIVERY_PAUSE_S = 0.25


class NewIdStorm(WebhookStorm):
    """A storm whose every event comes under a new id (``new_ids=True``),
    a kind of its own in the schedule: it may come while a storm of the
    same ids is still going, as two of Stripe's storms do."""

    kind = "webhook storm, new ids"

    def __init__(
        self, fake: FakeStripe, webhook_urls: Sequence[str], rng: random.Random, **options: Any
    ) -> None:
        super().__init__(fake, webhook_urls, rng, new_ids=True, **options)


class StripeClock:
    """The wall clock in whole seconds, as Stripe tells time (its timestamps
    are integers): the fake reckons a subscription's next period from the
    moment it started, which must be one a timestamp can say."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)


def session_of(checkout_url: str) -> str:
    """The Checkout session id a checkout URL of the fake's names."""
    return checkout_url.rstrip("/").rsplit("/", 1)[1]


@dataclass
class StripeSide:
    fake: FakeStripe
    # The API processes' base URLs, set once they run (their ports are fixed).
    urls: Sequence[str] = ()
    timeout_s: float = 10.0
    deliveries: int = 0
    retried: int = 0  # deliveries sent again (no answer, or 503 unavailable)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    paid_sessions: dict[str, str] = field(default_factory=dict)  # session -> user id
    told_intents: set[str] = field(default_factory=set)
    storms: list[WebhookStorm] = field(default_factory=list)  # the schedule's
    last_storms: list[WebhookStorm] = field(default_factory=list)  # after the run
    # Per subscription: its state when Stripe's events last told it.
    _told: dict[str, tuple[str, str | None, bool, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def webhook_urls(self) -> list[str]:
        return [url + WEBHOOK for url in self.urls]

    # -- deliveries ---------------------------------------------------------------

    def deliver(self, events: Sequence[dict[str, Any]], pick: random.Random) -> None:
        """Each event in order, each until answered 2xx (bounded)."""
        with httpx.Client(timeout=self.timeout_s) as http:
            for event in events:
                self._deliver_one(http, event, pick)

    def _deliver_one(self, http: httpx.Client, event: dict[str, Any], pick: random.Random) -> None:
        last = "no attempt"
        for attempt in range(DELIVERY_TRIES):
            if attempt:
                with self._lock:
                    self.retried += 1
                time.sleep(DELIVERY_PAUSE_S)
            payload, headers = self.fake.signed(event)  # signed at each try, as Stripe does
            url = pick.choice(list(self.urls)) + WEBHOOK
            try:
                response = http.post(url, content=payload, headers=headers)
            except httpx.TransportError as error:
                last = f"no answer ({error!r})"
                continue
            body: Any = None
            with contextlib.suppress(ValueError):
                body = response.json()
            code = body.get("code") if isinstance(body, dict) else None
            if (response.status_code, code) in DOCUMENTED:
                last = f"{response.status_code} {code}"
                continue
            with self._lock:
                self.deliveries += 1
                if 200 <= response.status_code < 300:
                    outcome = body.get("outcome") if isinstance(body, dict) else None
                    self.outcomes[str(outcome)] += 1
                else:
                    self.violations.append(
                        f"webhook {event['type']} {event['id']}: "
                        f"{response.status_code} {response.text[:300]}"
                    )
            return
        with self._lock:
            self.violations.append(
                f"webhook {event['type']} {event['id']}: not delivered in "
                f"{DELIVERY_TRIES} tries ({last})"
            )

    # -- Stripe's side of the operations ----------------------------------------------

    def pay(self, session_id: str, user_id: str, pick: random.Random) -> bool:
        """The customer pays the Checkout session (once: a session already
        paid is not paid again) and Stripe's events are delivered. False if
        it was paid already."""
        with self._lock:
            if session_id in self.paid_sessions:
                return False
            self.paid_sessions[session_id] = user_id
        self.deliver(self.fake.pay_checkout(session_id), pick)
        return True

    def state_of(self, subscription_id: str) -> tuple[str, str | None, bool, str]:
        """What an event would tell of a subscription: its price, latest
        invoice, cancellation at the period end and status."""
        with self.fake._lock:
            subscription = self.fake.subscriptions[subscription_id]
            return (
                str(subscription["items"]["data"][0]["price"]["id"]),
                subscription["latest_invoice"],
                bool(subscription["cancel_at_period_end"]),
                str(subscription["status"]),
            )

    def told(self, subscription_id: str) -> None:
        """Stripe's events told the subscription as it is now."""
        with self._lock:
            self._told[subscription_id] = self.state_of(subscription_id)

    def tell_changes(self, subscription_id: str, pick: random.Random) -> int:
        """What Stripe sends when the platform changed the subscription at
        Stripe since it was last told (a plan change through the API,
        answered or not; a suspension's cancellation at the period end; a
        reinstatement's withdrawal of it): the subscription as it is now,
        and the invoice the change made (a proration, paid). The number of
        events sent."""
        now = self.state_of(subscription_id)
        with self._lock:
            before = self._told.get(subscription_id)
            self._told[subscription_id] = now
        if before is None or now == before:
            return 0
        with self.fake._lock:
            events = [
                self.fake.event(
                    "customer.subscription.updated", self.fake.subscriptions[subscription_id]
                )
            ]
            if now[1] != before[1] and now[1] is not None:
                events.append(self.fake.event("invoice.paid", self.fake.invoices[now[1]]))
        self.deliver(events, pick)
        return len(events)

    def renew(self, subscription_id: str, pick: random.Random) -> None:
        """The subscription's period ends at Stripe: the next one starts and
        is invoiced and charged; the events delivered."""
        self.tell_changes(subscription_id, pick)  # what changed before, told first
        self.deliver(self.fake.period_ends(subscription_id), pick)
        self.told(subscription_id)

    def tell_charges(self, customer_id: str, pick: random.Random) -> None:
        """The off-session charges of ``customer_id`` that succeeded (the
        workers' auto top-ups) and were not told yet: their
        ``payment_intent.succeeded``."""
        with self.fake._lock:
            new = [
                intent_id
                for intent_id, intent in self.fake.intents.items()
                if intent["customer"] == customer_id
                and intent["status"] == "succeeded"
                and intent_id not in self.told_intents
            ]
            self.told_intents.update(new)
        for intent_id in new:
            self.deliver(self.fake.intent_succeeded(intent_id), pick)

    # -- what the test checks -----------------------------------------------------

    def storm_problems(self, killable: Callable[[str], bool]) -> list[str]:
        """Every storm delivery answered 2xx, but for the documented ones: no
        answer from an API process the schedule may kill (``killable``, by
        webhook URL), a 503 ``unavailable``."""
        problems: list[str] = []
        for fault in self.storms:
            for url, storm in zip(
                fault.webhook_urls * len(fault.storms), fault.storms, strict=False
            ):
                for delivery in storm.deliveries:
                    if 200 <= delivery.status < 300:
                        continue
                    body = delivery.body if isinstance(delivery.body, dict) else {}
                    if delivery.status == 0 and killable(url):
                        continue
                    if (delivery.status, body.get("code")) in DOCUMENTED:
                        continue
                    problems.append(
                        f"storm to {url}: {delivery.event_type} {delivery.event_id}: "
                        f"{delivery.status} {str(delivery.body)[:300]}"
                    )
        return problems

    def storm_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for fault in self.storms:
            name = "new-id storms" if fault.new_ids else "same-id storms"
            counts[name] += len(fault.storms) // max(len(fault.webhook_urls), 1)
            counts["storm deliveries"] += fault.sent
        counts["last storms' deliveries"] = sum(fault.sent for fault in self.last_storms)
        return counts

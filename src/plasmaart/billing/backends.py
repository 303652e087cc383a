"""Where money comes from: the interface every billing backend implements.

A backend only moves money; it never touches subscriptions or credits. The
billing services (``subscriptions.py``, ``packs.py``) validate a request, ask
the backend, and apply the outcome through the same methods whatever the
backend:

* ``Paid`` — the money moved now (the sandbox; Stripe charging a saved card):
  the service applies it in the same transaction.
* ``Declined`` — nothing is applied; a customer's request gets 402
  ``payment_failed``, a renewal puts the subscription ``past_due``.
* ``Redirect`` — the customer pays on the provider's page (Stripe Checkout).
  Nothing is applied now; the provider's webhook later calls
  ``SubscriptionService.subscribe_paid`` / ``upgrade_paid`` /
  ``renewal_paid`` / ``renewal_failed`` / ``end_subscription`` or
  ``PackService.paid``, which are idempotent per subscription period or
  idempotency key.

``renews_on_clock`` says who drives subscription periods: the worker's clock
(the sandbox: it charges each renewal through ``charge_renewal``), or the
provider (Stripe: renewals, failures and the end of a subscription arrive as
webhooks, and the clock leaves its subscriptions alone).

Each method receives the caller's connection, inside the transaction that
applies the outcome, and an idempotency key that is stable for the operation
(a subscription period, an HTTP ``Idempotency-Key``), to hand to the
provider's own idempotency so that a retried request never charges twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from sqlalchemy import Connection

from plasmaart.billing.repository import Subscription
from plasmaart.catalog import CreditPack, PlanSpec


@dataclass(frozen=True)
class Customer:
    """Who pays: the user, the wallet their credits go to, and their e-mail
    (for the provider's receipts and its customer record)."""

    user_id: str
    wallet_id: str
    email: str


@dataclass(frozen=True)
class Paid:
    """The money moved. ``external_id``: the provider's id of the charge
    (invoice, payment intent), kept with the payment for refunds;
    ``amount_cents``: what the provider charged, when it reckoned the amount
    itself (Stripe's proration invoice), else the amount asked for;
    ``invoice_url``: the provider's hosted page of the invoice (Stripe's
    ``hosted_invoice_url``), linked from the receipt."""

    external_id: str | None = None
    amount_cents: int | None = None
    invoice_url: str | None = None


@dataclass(frozen=True)
class Declined:
    reason: str


@dataclass(frozen=True)
class Checkout:
    """What a customer's purchase answers when the backend redirects: the
    customer pays on the backend's page; the webhook finishes the job."""

    url: str


@dataclass(frozen=True)
class Redirect:
    """Send the customer to ``url`` to pay; the webhook completes the purchase."""

    url: str


@dataclass(frozen=True)
class ActionRequired:
    """An off-session charge the customer's bank wants authenticated (SCA,
    3D Secure): nothing moved; the customer must pay on-session.
    ``external_id``: the provider's id of the payment left waiting."""

    reason: str
    external_id: str | None = None


ChargeOutcome = Paid | Declined
# What charging a saved payment method with the customer away can answer.
OffSessionOutcome = Paid | Declined | ActionRequired
CheckoutOutcome = Paid | Declined | Redirect
# When a plan change takes effect: at once (an upgrade, charged prorated now),
# or at the period end (a downgrade, or withdrawing a scheduled change).
Effective = Literal["now", "period_end"]


class BillingBackend(Protocol):
    # Stored with each subscription and payment: the backend that handles them.
    name: str
    renews_on_clock: bool

    def checkout_subscription(
        self, conn: Connection, *, customer: Customer, plan: PlanSpec, idempotency_key: str
    ) -> CheckoutOutcome:
        """Start a subscription to ``plan`` at ``plan.price_cents`` a month."""
        ...

    def checkout_pack(
        self, conn: Connection, *, customer: Customer, pack: CreditPack, idempotency_key: str
    ) -> CheckoutOutcome:
        """Sell ``pack`` once, at ``pack.price_cents``."""
        ...

    def change_plan(
        self,
        conn: Connection,
        *,
        customer: Customer,
        subscription: Subscription,
        plan: PlanSpec,
        effective: Effective,
        amount_cents: int,
        idempotency_key: str,
        prorate_at: datetime | None = None,
    ) -> ChargeOutcome:
        """Move ``subscription`` to ``plan``: ``now`` charges ``amount_cents``
        (the difference in price prorated from ``prorate_at``, a whole
        second, to the period end) at once; ``period_end`` charges nothing
        now and bills ``plan`` from the next period on, clearing any
        scheduled cancellation."""
        ...

    def cancel(self, conn: Connection, *, customer: Customer, subscription: Subscription) -> None:
        """Stop renewing ``subscription`` after its current period."""
        ...

    def end_now(self, conn: Connection, *, customer: Customer, subscription: Subscription) -> None:
        """End ``subscription`` at once, charging nothing more and refunding
        nothing (the account is being deleted: ``leaving/deletion.py``).
        Safe to repeat: a retry after a crash ends it again, or finds it ended."""
        ...

    def stop_renewal(
        self, conn: Connection, *, customer: Customer, subscription: Subscription
    ) -> None:
        """The account is suspended: charge no renewal of ``subscription``,
        which ends at its current period end unless ``resume_renewal`` comes
        first. Not the customer's cancellation: the service keeps the two apart."""
        ...

    def resume_renewal(
        self, conn: Connection, *, customer: Customer, subscription: Subscription
    ) -> None:
        """The account is reinstated before the period end: renew
        ``subscription`` as before (never called when the customer canceled)."""
        ...

    def charge_renewal(
        self,
        conn: Connection,
        *,
        customer: Customer,
        subscription: Subscription,
        plan: PlanSpec,
        amount_cents: int,
        idempotency_key: str,
    ) -> ChargeOutcome:
        """Collect the next period of ``subscription`` on ``plan`` (by the
        clock when ``renews_on_clock``; and when the customer pays a past-due
        subscription)."""
        ...

    def has_payment_method(self, conn: Connection, *, customer: Customer) -> bool:
        """Whether ``customer`` has a payment method this backend can charge
        off-session (an auto top-up may be enabled only then)."""
        ...

    def charge_off_session(
        self,
        conn: Connection,
        *,
        customer: Customer,
        pack: CreditPack,
        idempotency_key: str,
        cards_as_of: datetime | None = None,
    ) -> OffSessionOutcome:
        """Charge ``pack.price_cents`` to the customer's saved payment method
        with the customer away (an auto top-up). The same ``idempotency_key``
        never charges twice: a retry after a crash gets the first answer.
        ``cards_as_of`` (when the charge was decided) keeps the card chosen
        the same across retries: a card saved after it is not used."""
        ...


class Backends:
    """The billing backends by name, and ``default``: the one new checkouts
    go through (a subscription keeps the backend it was made with)."""

    def __init__(self, by_name: Mapping[str, BillingBackend], default: str) -> None:
        self.by_name: dict[str, BillingBackend] = dict(by_name)
        self.default = self.by_name[default]

    def get(self, name: str) -> BillingBackend | None:
        return self.by_name.get(name)

    def of(self, subscription: Subscription) -> BillingBackend:
        """The backend that handles ``subscription``."""
        return self.by_name.get(subscription.backend, self.default)

    def clock_driven(self) -> list[str]:
        """The names of the backends whose periods the worker's clock drives."""
        return [name for name, backend in self.by_name.items() if backend.renews_on_clock]

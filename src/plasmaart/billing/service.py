"""Billing, one service per use case, built together.

* ``plans.py`` — ``PlanService.plan_of`` / ``plans_of``: which plan's
  benefits a wallet has now (the rule every package asks);
* ``subscriptions.py`` — ``SubscriptionService``: subscribe, preview, change
  plan, cancel, pay a past-due renewal, suspension, what a backend reports,
  and the billing clock's renewals;
* ``packs.py`` — ``PackService``: credit packs;
* ``payments.py`` — ``PaymentService``: recording payments, the history;
* ``receipts.py`` — ``ReceiptService``: receipt numbers, mails and pages;
* ``clawbacks.py`` — ``ClawbackService``: refunds and disputes.

``BillingService`` holds them (``platform.billing.subscriptions`` …), the
backends, the sandbox's test clock and the hooks the packages above hear
billing's facts through (``hooks.py``: clawbacks, payments), and answers who
a customer is.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.backends import Backends, BillingBackend, Customer
from plasmaart.billing.clawbacks import ClawbackService
from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.packs import PackService
from plasmaart.billing.payments import PaymentService
from plasmaart.billing.plans import PlanService
from plasmaart.billing.receipts import ReceiptService
from plasmaart.billing.sandbox_clock import SandboxTestClock
from plasmaart.billing.subscriptions import SubscriptionService
from plasmaart.caches import CacheHub
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.ledger.service import LedgerService
from plasmaart.links import Links
from plasmaart.outbox import Outbox
from plasmaart.outbox.webhooks import WebhookEvents


class BillingService:
    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        ledger: LedgerService,
        *,
        backends: Mapping[str, BillingBackend],
        default_backend: str = "sandbox",
        grace_days: int = 7,
        purchased_credits_expire_days: int | None = None,
        test_clock: SandboxTestClock | None = None,
        outbox: Outbox,
        links: Links,
        caches: CacheHub | None = None,
        webhook_events: WebhookEvents | None = None,
    ) -> None:
        if "sandbox" not in backends:
            # ``plasmaart users create --plan`` subscribes through it whatever
            # backend sells to customers (``billing.create_backends``).
            raise ValueError("the sandbox billing backend is always there")
        self.ledger = ledger
        self.backends = Backends(backends, default_backend)
        # Set when billing is the sandbox: what /v1/admin/clock/advance moves.
        self.test_clock = test_clock
        # Who hears of clawbacks and payments (fair use registers itself).
        self.hooks = BillingHooks()
        # ``caches``: each wallet's subscription cached per process.
        self.plans = PlanService(clock, catalogs, grace_days=grace_days, caches=caches)
        # ``links``: where receipts point (the server's public address).
        self.receipts = ReceiptService(clock, catalogs, outbox, links)
        # ``webhook_events``: every payment's payment.succeeded/failed event.
        self.payments = PaymentService(
            clock, catalogs, self.hooks, self.receipts, webhook_events=webhook_events
        )
        self.clawbacks = ClawbackService(clock, ledger, self.hooks)
        self.subscriptions = SubscriptionService(
            clock, catalogs, ledger, self.plans, self.payments, self.backends, outbox=outbox
        )
        self.packs = PackService(
            clock,
            catalogs,
            ledger,
            self.payments,
            self.backends,
            purchased_credits_expire_days=purchased_credits_expire_days,
        )

    @property
    def backend(self) -> BillingBackend:
        """The backend new checkouts go through."""
        return self.backends.default

    def customer(self, conn: Connection, user_id: str) -> Customer:
        """Who pays for ``user_id``'s own wallet."""
        wallet_id = self.ledger.wallet_of(conn, "user", user_id)
        return Customer(user_id, wallet_id, repo.user_email(conn, user_id))

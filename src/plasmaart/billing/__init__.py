"""Subscriptions and payments: plans over time, and the credits they grant.

One module per use case (every credit moved through the ledger): ``plans.py``
the plan of a wallet (``plan_of`` / ``plans_of``, the rule every package
asks), ``subscriptions.py`` the plan lifecycle, ``packs.py`` credit packs,
``payments.py`` recording payments, ``receipts.py`` their receipts (numbers,
mails, pages), ``clawbacks.py`` refunds and disputes;
``service.py`` holds them together. ``backends.py`` is the interface of where
money comes from, ``sandbox.py`` its offline implementation,
``sandbox_clock.py`` the sandbox's test clock, ``stripe/`` the Stripe
implementation (Checkout, portal, webhooks), ``tasks.py`` the worker's clock
job, ``rules.py`` and ``periods.py`` the pure rules. ``docs/billing.md`` walks
through it.
"""

from __future__ import annotations

from plasmaart.billing.backends import BillingBackend
from plasmaart.clock import Clock
from plasmaart.config import ConfigError, Settings


def create_backends(
    settings: Settings, clock: Clock, *, currency: str = "usd"
) -> dict[str, BillingBackend]:
    """The billing backends by name: the sandbox always (the CLI subscribes
    through it), and the one the settings choose. Stripe needs both of its
    secrets: without them no checkout could be paid or confirmed."""
    from plasmaart.billing.sandbox import SandboxBackend

    backends: dict[str, BillingBackend] = {"sandbox": SandboxBackend(clock)}
    if settings.billing == "stripe":
        from plasmaart.billing.stripe import StripeBackend

        secret_key = settings.stripe_secret_key
        if not secret_key:
            raise ConfigError("STRIPE_SECRET_KEY: required when PLASMAART_BILLING=stripe")
        if not settings.stripe_webhook_secret:
            raise ConfigError("STRIPE_WEBHOOK_SECRET: required when PLASMAART_BILLING=stripe")
        backends["stripe"] = StripeBackend(
            clock,
            secret_key=secret_key,
            api_base=settings.stripe_api_base,
            # Customers come back to the public address (PLASMAART_PUBLIC_URL).
            return_url=settings.stripe_return_url or f"{settings.public_base_url}/",
            currency=currency,
        )
    return backends

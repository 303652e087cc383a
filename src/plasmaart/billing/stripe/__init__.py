"""The Stripe billing backend: Checkout, the customer portal and webhooks.

``backend.py`` is the ``BillingBackend`` that talks to Stripe's API (Checkout
sessions with inline prices, subscription changes, paying an open invoice,
portal sessions); ``webhooks.py`` verifies ``Stripe-Signature`` and applies
each event once, by event id, through the same ``BillingService`` methods the
sandbox uses; ``repository.py`` keeps Stripe's ids and the events applied.
``docs/billing.md`` says how to set it up.
"""

from __future__ import annotations

from plasmaart.billing.stripe.backend import StripeBackend
from plasmaart.billing.stripe.webhooks import StripeWebhooks

__all__ = ["StripeBackend", "StripeWebhooks"]

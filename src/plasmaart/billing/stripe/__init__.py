"""The Stripe billing backend: Checkout, the customer portal and webhooks.

``backend.py`` is the ``BillingBackend`` that talks to Stripe's API (Checkout
sessions with inline prices, subscription changes, paying an open invoice,
portal sessions); ``webhooks.py`` verifies ``Stripe-Signature`` and applies
each event once, by event id, through the same ``BillingService`` methods the
sandbox uses; ``repository.py`` keeps Stripe's ids and the events applied.
``docs/billing.md`` says how to set it up.

The Stripe SDK is large (its import alone costs a server ~30 MB): nothing
here imports it until a Stripe class is asked for, which only happens when
billing is ``stripe``; ``errors`` and ``repository`` do without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plasmaart.billing.stripe.backend import StripeBackend
    from plasmaart.billing.stripe.webhooks import StripeWebhooks

__all__ = ["StripeBackend", "StripeWebhooks"]


def __getattr__(name: str) -> Any:
    if name == "StripeBackend":
        from plasmaart.billing.stripe.backend import StripeBackend

        return StripeBackend
    if name == "StripeWebhooks":
        from plasmaart.billing.stripe.webhooks import StripeWebhooks

        return StripeWebhooks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

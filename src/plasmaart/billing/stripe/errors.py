"""The Stripe backend's refusals, each with a stable code."""

from __future__ import annotations

from plasmaart.errors import Conflict, DomainError


class InvalidSignature(DomainError):
    """A webhook whose ``Stripe-Signature`` is missing, forged or stale."""

    code = "invalid_signature"
    status = 400
    title = "Invalid signature"


class BillingPortalUnavailable(Conflict):
    """The customer portal exists only under Stripe billing, for customers
    who have been to Checkout."""

    code = "billing_portal_unavailable"
    title = "Billing portal unavailable"


class BillingProviderError(DomainError):
    """Stripe could not be reached or refused a request that is not about
    the customer's card: nothing was changed, try again."""

    code = "billing_provider_error"
    status = 503
    title = "Billing provider unavailable"

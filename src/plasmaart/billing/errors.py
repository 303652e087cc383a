"""Billing's refusals, each with a stable code."""

from __future__ import annotations

from plasmaart.errors import Conflict, DomainError, NotFound


class AlreadySubscribed(Conflict):
    code = "already_subscribed"
    title = "Already subscribed"


class NoSubscription(NotFound):
    """PATCH or DELETE of a subscription the caller does not have."""


class SubscriptionPastDue(Conflict):
    code = "subscription_past_due"
    title = "Subscription past due"


class NothingToPay(Conflict):
    code = "nothing_to_pay"
    title = "Nothing to pay"


class RenewalPending(Conflict):
    """The period ended and its renewal has not been reported yet (a backend
    that renews by webhook): a plan change now would be priced on a period
    that is over."""

    code = "renewal_pending"
    title = "Renewal pending"


class PaymentFailed(DomainError):
    code = "payment_failed"
    status = 402
    title = "Payment failed"


class NoReceipt(Conflict):
    """The caller's own payment failed: nothing was bought, so there is no
    receipt (the payments list shows why it failed)."""

    code = "no_receipt"
    title = "No receipt"

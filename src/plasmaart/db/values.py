"""The closed sets of values the schema allows (its CHECK constraints), as
tuples and ``Literal`` types: one list each, shared by the tables and by the
code that writes those values."""

from __future__ import annotations

from typing import Literal, get_args

LOT_SOURCES = ("promo", "subscription", "rollover", "adjustment", "purchase")
EntryKind = Literal[
    "grant",
    "hold",
    "capture",
    "release",
    "expire",
    "rollover",
    "refund",
    "clawback",
    "adjustment",
]
ENTRY_KINDS: tuple[str, ...] = get_args(EntryKind)
# The accounts of the double-entry journal. ``wallet`` and ``holds`` are the
# wallet's own (its available and held credits); the others are the platform's.
ACCOUNTS = ("wallet", "holds", "issuance", "consumed", "expired")

GenerationStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
GENERATION_STATUSES: tuple[str, ...] = get_args(GenerationStatus)

PAYMENT_KINDS = ("subscription", "renewal", "upgrade", "pack")

# An auto top-up run: charging, paid, refused, or waiting for the customer
# to authenticate the charge (SCA).
TopupStatus = Literal["pending", "succeeded", "failed", "action_required"]
TOPUP_STATUSES: tuple[str, ...] = get_args(TopupStatus)

# The events a user's webhooks can receive (docs/webhooks.md).
WebhookEventType = Literal[
    "generation.succeeded",
    "generation.failed",
    "generation.canceled",
    "credits.low",
    "credits.expiring",
    "payment.succeeded",
    "payment.failed",
    "topup.succeeded",
    "topup.failed",
]
WEBHOOK_EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)
# A delivery: waiting (or between attempts), delivered, or given up.
WebhookDeliveryStatus = Literal["pending", "succeeded", "failed"]
WEBHOOK_DELIVERY_STATUSES: tuple[str, ...] = get_args(WebhookDeliveryStatus)

CHANGE_TARGETS = ("model", "plan")

EMAIL_STATUSES = ("pending", "sent", "skipped", "failed")

AccountTokenPurpose = Literal["password_reset", "email_verification", "email_change"]
ACCOUNT_TOKEN_PURPOSES: tuple[AccountTokenPurpose, ...] = (
    "password_reset",
    "email_verification",
    "email_change",
)

AbuseSignalKind = Literal[
    "rate_limited",
    "submit_cancel",
    "identical_prompt",
    "invalid_input",
    "clawback",
    # Migration 0008: card testing and plan-change cycling.
    "payment_declined",
    "plan_cycling",
]
ABUSE_SIGNAL_KINDS: tuple[str, ...] = get_args(AbuseSignalKind)
ABUSE_FLAG_STATUSES = ("open", "suspended", "resolved")

FAL_WEBHOOK_RESULTS = ("succeeded", "failed", "payload_error")
FAL_WEBHOOK_OUTCOMES = ("woken", "finished", "unknown_request")

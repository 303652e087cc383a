"""Every table, in SQLAlchemy Core, with the invariants the database can enforce.

Constraints carry names from one naming convention so that migrations can
refer to them. The CHECK constraints are the last line of defence of the
ledger: whatever a bug in Python does, no balance, lot or hold can go negative
and no journal entry can disagree with the accounts it moves between.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)

from plasmaart.db.values import (
    ABUSE_FLAG_STATUSES,
    ABUSE_SIGNAL_KINDS,
    ACCOUNT_TOKEN_PURPOSES,
    ACCOUNTS,
    CHANGE_TARGETS,
    EMAIL_STATUSES,
    ENTRY_KINDS,
    FAL_WEBHOOK_OUTCOMES,
    FAL_WEBHOOK_RESULTS,
    GENERATION_STATUSES,
    LOT_SOURCES,
    PAYMENT_KINDS,
    TOPUP_STATUSES,
    WEBHOOK_DELIVERY_STATUSES,
    WEBHOOK_EVENT_TYPES,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)


# The columns most tables share; a Column belongs to one table, so each call
# makes a new one.
def _id() -> Column[str]:
    return Column("id", String(40), primary_key=True)


def _created_at() -> Column[datetime]:
    return Column("created_at", Timestamp, nullable=False)


def _updated_at() -> Column[datetime]:
    return Column("updated_at", Timestamp, nullable=False)


def _ref(name: str, table: str, **options: Any) -> Column[str]:
    """A reference to ``table``'s id."""
    return Column(name, String(40), ForeignKey(f"{table}.id"), **options)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


users = Table(
    "users",
    metadata,
    _id(),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False, server_default="user"),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("status_reason", Text),
    Column("remove_watermark", Boolean, nullable=False, server_default=false()),
    _created_at(),
    # When the owner proved the address is theirs (a link mailed to it, or an
    # operator's ``users create``); None: not yet (docs/accounts.md).
    Column("email_verified_at", Timestamp),
    # TOTP two-factor: the shared secret (the authenticator app needs it in
    # the clear, so it cannot be hashed), set once confirmed with a code;
    # ``totp_pending_secret`` is the one being enrolled. ``totp_last_step``:
    # the time step of the last code accepted, so a code is never used twice.
    Column("totp_secret", String(64)),
    Column("totp_pending_secret", String(64)),
    Column("totp_last_step", BigInteger),
    # Set when the account was deleted (``DELETE /v1/me``): the row stays,
    # anonymized, so the journal's wallets keep an owner.
    Column("deleted_at", Timestamp),
    CheckConstraint(_in("role", ("user", "admin")), name="role"),
    CheckConstraint(_in("status", ("active", "suspended")), name="status"),
)

wallets = Table(
    "wallets",
    metadata,
    _id(),
    Column("owner_kind", String(16), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("available", BigInteger, nullable=False, server_default="0"),
    Column("held", BigInteger, nullable=False, server_default="0"),
    _created_at(),
    # The owner's own monthly spend limit (docs/credits.md); None: none.
    Column("monthly_spend_limit", BigInteger),
    # The balance watch (migration 0013): the ledger calls its watchers, in
    # the transaction, when an operation leaves ``available`` below
    # ``watch_below`` or above ``watch_above`` (an auto top-up to start, an
    # alert to fire or re-arm). Both None, the common case: nothing to look at.
    Column("watch_below", BigInteger),
    Column("watch_above", BigInteger),
    # Days before expiry the owner is told of expiring credits; None: the
    # operator's default; 0: never.
    Column("expiry_notice_days", Integer),
    CheckConstraint("available >= 0", name="available_not_negative"),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint(_in("owner_kind", ("user", "team")), name="owner_kind"),
    UniqueConstraint("owner_kind", "owner_id", name="uq_wallets_owner"),
)

lots = Table(
    "lots",
    metadata,
    _id(),
    _ref("wallet_id", "wallets", nullable=False),
    Column("source", String(16), nullable=False),
    Column("granted", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    # Credits of this lot that expired or were clawed back, so far.
    Column("expired", BigInteger, nullable=False, server_default="0"),
    Column("expires_at", Timestamp),
    Column("reference", String(200)),
    _created_at(),
    Column("closed_at", Timestamp),
    Column("closed_reason", String(16)),
    CheckConstraint("granted > 0", name="granted_positive"),
    CheckConstraint("remaining >= 0 AND remaining <= granted", name="remaining_in_range"),
    CheckConstraint("expired >= 0 AND expired <= granted", name="expired_in_range"),
    CheckConstraint(_in("source", LOT_SOURCES), name="source"),
    CheckConstraint(
        "closed_reason IS NULL OR " + _in("closed_reason", ("expired", "clawed_back")),
        name="closed_reason",
    ),
    CheckConstraint("(closed_at IS NULL) = (closed_reason IS NULL)", name="closed_consistent"),
    CheckConstraint("closed_at IS NULL OR remaining = 0", name="closed_is_empty"),
)
Index("ix_lots_wallet_open", lots.c.wallet_id, lots.c.expires_at)
Index("ix_lots_expiry", lots.c.expires_at, lots.c.closed_at)

holds = Table(
    "holds",
    metadata,
    _id(),
    _ref("wallet_id", "wallets", nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("released", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("generation_id", String(40)),
    Column("model", String(80)),
    Column("memo", Text),
    _created_at(),
    Column("resolved_at", Timestamp),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("captured >= 0 AND released >= 0", name="parts_not_negative"),
    CheckConstraint(_in("status", ("pending", "captured", "released")), name="status"),
    # A hold resolves exactly once, every credit accounted for, and its status
    # says how: the status can only change together with the amounts that
    # justify it. Pending: nothing captured or released yet. Captured: some
    # credits captured (all, or part and the rest released). Released:
    # nothing captured, everything given back.
    CheckConstraint(
        "status <> 'pending' OR (captured = 0 AND released = 0 AND resolved_at IS NULL)",
        name="pending_parts",
    ),
    CheckConstraint(
        "status <> 'captured' OR (captured > 0 AND captured + released = amount"
        " AND resolved_at IS NOT NULL)",
        name="captured_parts",
    ),
    CheckConstraint(
        "status <> 'released' OR (captured = 0 AND released = amount AND resolved_at IS NOT NULL)",
        name="released_parts",
    ),
)
Index("ix_holds_wallet_status", holds.c.wallet_id, holds.c.status)

hold_lots = Table(
    "hold_lots",
    metadata,
    _ref("hold_id", "holds", primary_key=True),
    _ref("lot_id", "lots", primary_key=True),
    # Burn-order position of this lot within the hold: captures consume from
    # the first positions, releases give back the last ones.
    Column("position", Integer, nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("released", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("credits > 0", name="credits_positive"),
    CheckConstraint(
        "captured >= 0 AND released >= 0 AND captured + released <= credits", name="parts"
    ),
)

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    _ref("wallet_id", "wallets", nullable=False),
    Column("kind", String(16), nullable=False),
    Column("from_account", String(16), nullable=False),
    Column("to_account", String(16), nullable=False),
    Column("credits", BigInteger, nullable=False),
    # Signed change of the wallet's available credits, and available after it.
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("held_after", BigInteger, nullable=False),
    _ref("lot_id", "lots"),
    _ref("hold_id", "holds"),
    Column("generation_id", String(40)),
    # What a capture paid for: the model and the outputs delivered.
    Column("model", String(80)),
    Column("outputs", Integer),
    Column("memo", Text),
    _created_at(),
    CheckConstraint("credits > 0", name="credits_positive"),
    CheckConstraint("from_account <> to_account", name="distinct_accounts"),
    CheckConstraint(_in("kind", ENTRY_KINDS), name="kind"),
    CheckConstraint(_in("from_account", ACCOUNTS), name="from_account"),
    CheckConstraint(_in("to_account", ACCOUNTS), name="to_account"),
    CheckConstraint(
        "amount = CASE WHEN to_account = 'wallet' THEN credits"
        " WHEN from_account = 'wallet' THEN -credits ELSE 0 END",
        name="amount_matches_accounts",
    ),
    CheckConstraint("balance_after >= 0 AND held_after >= 0", name="balances_not_negative"),
)
# Keyset pagination of a wallet's history, newest first; and the usage views.
Index("ix_journal_wallet_id", journal_entries.c.wallet_id, journal_entries.c.id)
# A hold's entries (hold, capture, release), for the per-generation history.
Index("ix_journal_hold", journal_entries.c.hold_id, journal_entries.c.kind)
Index(
    "ix_journal_wallet_kind_created",
    journal_entries.c.wallet_id,
    journal_entries.c.kind,
    journal_entries.c.created_at,
)

# Usage rolled up per wallet, UTC day and model as captures happen, so that
# usage over any range reads a few hundred rows whatever the journal's size.
usage_daily = Table(
    "usage_daily",
    metadata,
    _ref("wallet_id", "wallets", primary_key=True),
    Column("day", Date, primary_key=True),
    Column("model", String(80), primary_key=True),
    Column("generations", BigInteger, nullable=False),
    Column("outputs", BigInteger, nullable=False),
    Column("credits", BigInteger, nullable=False),
    CheckConstraint("generations >= 0 AND outputs >= 0 AND credits >= 0", name="not_negative"),
)

ledger_operations = Table(
    "ledger_operations",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("operation", String(32), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("result", Text, nullable=False),
    _created_at(),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    _id(),
    _ref("wallet_id", "wallets", nullable=False, unique=True),
    _ref("user_id", "users", nullable=False),
    Column("plan_id", String(40), nullable=False),
    Column("status", String(16), nullable=False),
    Column("current_period_start", Timestamp, nullable=False),
    Column("current_period_end", Timestamp, nullable=False),
    # The customer's own cancellation (or the provider portal's).
    Column("cancel_at_period_end", Boolean, nullable=False, server_default=false()),
    Column("pending_plan", String(40)),
    Column("backend", String(16), nullable=False),
    Column("external_id", String(200)),
    _created_at(),
    _updated_at(),
    # The instant monthly periods count from, so that a subscription started on
    # the 31st renews on the last day of shorter months and on the 31st again
    # after them. Null for rows from before it existed: the period start then.
    Column("billing_anchor", Timestamp),
    # Set while the account is suspended: the subscription ends at its period
    # end instead of renewing, unless the account is reinstated first. Kept
    # apart from cancel_at_period_end so that reinstating never withdraws a
    # cancellation the customer made.
    Column("stops_for_suspension", Boolean, nullable=False, server_default=false()),
    CheckConstraint(_in("status", ("active", "past_due", "canceled")), name="status"),
    CheckConstraint("current_period_end > current_period_start", name="period_order"),
)
# The clock's look-up of subscriptions whose period ended.
Index("ix_subscriptions_period_end", subscriptions.c.current_period_end)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("actor", String(340), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(340), nullable=False),
    Column("reason", Text),
    Column("data", Text, nullable=False, server_default=text("'{}'")),
    _created_at(),
)
# The admin's audit log reads newest first, by time alone or for one actor,
# subject (target) or action: each filter has its index in that order.
Index("ix_audit_log_created_at", audit_log.c.created_at, audit_log.c.id)
Index("ix_audit_log_actor", audit_log.c.actor, audit_log.c.created_at, audit_log.c.id)
Index("ix_audit_log_target", audit_log.c.target, audit_log.c.created_at, audit_log.c.id)
Index("ix_audit_log_action", audit_log.c.action, audit_log.c.created_at, audit_log.c.id)

# Single-use links mailed to an address: a password reset, the
# verification of an address (at sign-up or before a change of address takes
# effect). Only the SHA-256 of the token is stored; ``used_at`` makes it
# single-use (a conditional UPDATE), ``expires_at`` short-lived.
account_tokens = Table(
    "account_tokens",
    metadata,
    _id(),
    Column("purpose", String(32), nullable=False),
    _ref("user_id", "users", nullable=False),
    # The address the link was mailed to (for a change: the new address).
    Column("email", String(320), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    _created_at(),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp),
    CheckConstraint(_in("purpose", ACCOUNT_TOKEN_PURPOSES), name="purpose"),
)
Index("ix_account_tokens_user", account_tokens.c.user_id, account_tokens.c.purpose)

# Two-factor recovery codes: shown once, stored hashed, each usable once.
recovery_codes = Table(
    "recovery_codes",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    Column("code_hash", String(64), nullable=False, unique=True),
    _created_at(),
    Column("used_at", Timestamp),
)
Index("ix_recovery_codes_user", recovery_codes.c.user_id)

# Requests the account routes limit (a reset asked for an address, from a
# client address; a verification mail resent): one row per request, counted
# in a sliding window and purged by the worker's clock.
auth_throttle = Table(
    "auth_throttle",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("action", String(32), nullable=False),
    Column("subject", String(340), nullable=False),
    _created_at(),
)
Index(
    "ix_auth_throttle_subject",
    auth_throttle.c.action,
    auth_throttle.c.subject,
    auth_throttle.c.created_at,
)

# Receipt numbers: one row per succeeded payment, numbered by the database.
receipt_numbers = Table(
    "receipt_numbers",
    metadata,
    Column("number", BigId, primary_key=True, autoincrement=True),
    Column("payment_id", String(40), nullable=False, unique=True),
    _created_at(),
)

# Server-side sessions. The cookie carries a random token; only its SHA-256 is
# stored, so a copy of the database cannot be used to log in.
sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    _ref("user_id", "users", nullable=False),
    Column("csrf_token", String(64), nullable=False),
    _created_at(),
    Column("expires_at", Timestamp, nullable=False),
    Column("last_seen_at", Timestamp, nullable=False),
    # The id a user sees in ``GET /v1/sessions`` and revokes with (the token's
    # hash is never shown), and what the browser said it was, from where.
    Column("id", String(40), nullable=False, unique=True),
    Column("user_agent", String(300)),
    Column("address", String(64)),
)
Index("ix_sessions_user", sessions.c.user_id)

api_keys = Table(
    "api_keys",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    Column("name", String(100), nullable=False),
    # The first characters of the key, shown in lists so users can tell keys apart.
    Column("prefix", String(20), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    _created_at(),
    Column("last_used_at", Timestamp),
    Column("revoked_at", Timestamp),
    # Credits the key may spend per UTC day and per calendar month; None: no limit.
    Column("daily_credit_limit", BigInteger),
    Column("monthly_credit_limit", BigInteger),
)
Index("ix_api_keys_user", api_keys.c.user_id, api_keys.c.created_at)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),
    Column("address", String(64), nullable=False),
    _created_at(),
)
Index("ix_login_failures_email", login_failures.c.email, login_failures.c.created_at)
Index("ix_login_failures_address", login_failures.c.address, login_failures.c.created_at)

teams = Table(
    "teams",
    metadata,
    _id(),
    Column("name", String(100), nullable=False),
    _ref("owner_id", "users", nullable=False),
    # The owner's wallet: a team spends the Studio owner's credits.
    _ref("wallet_id", "wallets", nullable=False),
    _created_at(),
)
# One team per owner (the service refuses a second with a clear error first).
Index("ix_teams_owner", teams.c.owner_id, unique=True)

team_members = Table(
    "team_members",
    metadata,
    _ref("team_id", "teams", primary_key=True),
    _ref("user_id", "users", primary_key=True),
    Column("role", String(16), nullable=False),
    Column("monthly_credit_cap", BigInteger),
    Column("joined_at", Timestamp, nullable=False),
    CheckConstraint(_in("role", ("owner", "member")), name="role"),
    CheckConstraint("monthly_credit_cap IS NULL OR monthly_credit_cap >= 0", name="cap"),
)
Index("ix_team_members_user", team_members.c.user_id)

invitations = Table(
    "invitations",
    metadata,
    _id(),
    _ref("team_id", "teams", nullable=False),
    Column("email", String(320), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    _ref("invited_by", "users", nullable=False),
    _created_at(),
    Column("expires_at", Timestamp, nullable=False),
    Column("accepted_at", Timestamp),
    _ref("accepted_by", "users"),
    Column("revoked_at", Timestamp),
    Column("declined_at", Timestamp),
)
Index("ix_invitations_team", invitations.c.team_id)

# Responses to POSTs that carried an Idempotency-Key, replayed on a repeat.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("principal", String(80), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("response_status", Integer),
    Column("response_headers", Text),
    Column("response_body", LargeBinary),
    _created_at(),
    CheckConstraint(_in("status", ("running", "done")), name="status"),
)
Index("ix_idempotency_records_created", idempotency_records.c.created_at)

notifications = Table(
    "notifications",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    Column("kind", String(40), nullable=False),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("data", Text, nullable=False, server_default=text("'{}'")),
    _created_at(),
    Column("read_at", Timestamp),
)
Index("ix_notifications_user", notifications.c.user_id, notifications.c.id)


uploads = Table(
    "uploads",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    Column("storage_key", String(300), nullable=False),
    Column("content_type", String(40), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    _created_at(),
)
Index("ix_uploads_user", uploads.c.user_id, uploads.c.created_at)

# A generation is a job of the queue: claimed with a lease and a fencing
# token, ordered by its virtual start time (see generation/scheduling.py).
generations = Table(
    "generations",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    _ref("wallet_id", "wallets", nullable=False),
    _ref("team_id", "teams"),
    Column("model", String(80), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("num_outputs", Integer, nullable=False),
    Column("params", Text, nullable=False, server_default=text("'{}'")),
    Column("sandbox", Text, nullable=False, server_default=text("'{}'")),
    _ref("upload_id", "uploads"),
    Column("image_url", Text),
    # The price quoted at submission: the job keeps it whatever changes later.
    Column("credits_per_output", Integer, nullable=False),
    Column("credits_held", BigInteger, nullable=False),
    Column("credits_charged", BigInteger, nullable=False, server_default="0"),
    _ref("hold_id", "holds", nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("queue_class", String(16), nullable=False),
    Column("video", Boolean, nullable=False),
    Column("license", String(16), nullable=False),
    Column("watermark", Boolean, nullable=False),
    Column("enqueued_at", Timestamp, nullable=False),
    Column("virtual_start", Timestamp, nullable=False),
    Column("provider", String(16), nullable=False),
    Column("provider_request_id", String(200)),
    Column("lease_owner", String(80)),
    Column("lease_expires_at", Timestamp),
    # Set by the first claim, in real time like the lease (never the billing
    # test clock): past it, whoever holds the job ends it (generation/bounds.py).
    Column("deadline_at", Timestamp),
    Column("fencing_token", BigInteger, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Timestamp),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("error_code", String(40)),
    Column("error_message", Text),
    Column("idempotency_key", String(255)),
    _created_at(),
    # The API key it was submitted with (None: a session), for the key's limits.
    Column("api_key_id", String(40)),
    # Where its terminal event is delivered, signed with the account's secret.
    Column("webhook_url", Text),
    Column("started_at", Timestamp),
    Column("finished_at", Timestamp),
    CheckConstraint(_in("status", GENERATION_STATUSES), name="status"),
    CheckConstraint("num_outputs >= 1", name="outputs_positive"),
    CheckConstraint(
        "credits_charged >= 0 AND credits_charged <= credits_held", name="charged_within_held"
    ),
    CheckConstraint(_in("license", ("personal", "commercial")), name="license"),
    UniqueConstraint("user_id", "idempotency_key", name="uq_generations_user_key"),
)
Index("ix_generations_queue", generations.c.status, generations.c.virtual_start)
Index("ix_generations_wallet_status", generations.c.wallet_id, generations.c.status)
Index("ix_generations_user_created", generations.c.user_id, generations.c.created_at)
Index("ix_generations_team_created", generations.c.team_id, generations.c.created_at)
Index("ix_generations_wallet_created", generations.c.wallet_id, generations.c.created_at)
Index("ix_generations_api_key_created", generations.c.api_key_id, generations.c.created_at)

generation_outputs = Table(
    "generation_outputs",
    metadata,
    _id(),
    _ref("generation_id", "generations", nullable=False),
    Column("position", Integer, nullable=False),
    Column("storage_key", String(300), nullable=False),
    Column("content_type", String(40), nullable=False),
    Column("width", Integer),
    Column("height", Integer),
    Column("duration_s", Float),
    Column("size", BigInteger, nullable=False),
    Column("watermarked", Boolean, nullable=False),
    Column("license", String(16), nullable=False),
    _created_at(),
    UniqueConstraint("generation_id", "position", name="uq_generation_outputs_position"),
)


# Every charge of a billing backend, succeeded or failed: what was paid, when,
# for what, and the credits it granted (the lot, so a refund can claw it back).
payments = Table(
    "payments",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    _ref("wallet_id", "wallets", nullable=False),
    _ref("subscription_id", "subscriptions"),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("plan_id", String(40)),
    Column("pack_id", String(64)),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("credits", BigInteger, nullable=False, server_default="0"),
    _ref("lot_id", "lots"),
    Column("period_start", Timestamp),
    Column("period_end", Timestamp),
    Column("backend", String(16), nullable=False),
    Column("external_id", String(200)),
    # One charge per key (a subscription's period, an HTTP Idempotency-Key):
    # the clock running twice, or in two workers, cannot charge twice.
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("failure_reason", Text),
    _created_at(),
    # The receipt's number, given when the payment succeeds (in its
    # transaction, from ``receipt_numbers``): consecutive, never reused.
    Column("receipt_number", BigInteger, unique=True),
    # Stripe: the hosted invoice page of the charge, linked from the receipt.
    Column("hosted_invoice_url", Text),
    CheckConstraint(_in("kind", PAYMENT_KINDS), name="kind"),
    CheckConstraint(_in("status", ("succeeded", "failed")), name="status"),
    CheckConstraint("amount_cents >= 0 AND credits >= 0", name="not_negative"),
    CheckConstraint("status = 'succeeded' OR credits = 0", name="failed_grants_nothing"),
)
Index("ix_payments_user", payments.c.user_id, payments.c.id)

# The sandbox billing backend's test clock: one row, the offset every process
# adds to the system clock (moved forward only, by the admin endpoint).
test_clock = Table(
    "test_clock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("offset_seconds", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", Timestamp),
    CheckConstraint("id = 1", name="single_row"),
    CheckConstraint("offset_seconds >= 0", name="forward_only"),
)

# The sandbox backend's stand-in for a customer's card: while ``declines`` is
# set every sandbox charge of the user fails, like Stripe's declining test cards.
sandbox_cards = Table(
    "sandbox_cards",
    metadata,
    _ref("user_id", "users", primary_key=True),
    Column("declines", Boolean, nullable=False, server_default=false()),
    _updated_at(),
    # While set, an off-session charge (an auto top-up) asks the customer to
    # authenticate it, like Stripe's 3D Secure test cards (migration 0013).
    Column("requires_action", Boolean, nullable=False, server_default=false()),
)

# --- Stripe (migration 0004) ---

# The Stripe customer of each user who ever went to Checkout (one per user,
# created before the first checkout so that every webhook names a customer
# we know).
stripe_customers = Table(
    "stripe_customers",
    metadata,
    _ref("user_id", "users", primary_key=True),
    Column("customer_id", String(255), nullable=False, unique=True),
    _created_at(),
)

# Stripe subscriptions and ours. ``last_event_created`` is the ``created`` of
# the newest customer.subscription.* event applied: an older one arriving
# later (Stripe does not keep order) is recorded and ignored.
stripe_subscriptions = Table(
    "stripe_subscriptions",
    metadata,
    Column("stripe_subscription_id", String(255), primary_key=True),
    Column(
        "subscription_id", String(40), ForeignKey("subscriptions.id"), nullable=False, unique=True
    ),
    Column("customer_id", String(255), nullable=False),
    Column("last_event_created", Timestamp),
    _created_at(),
    _updated_at(),
)

# Every webhook event applied, by Stripe's event id: inserted in the same
# transaction as the event's effects, so an event is applied exactly once
# however often it is delivered.
stripe_events = Table(
    "stripe_events",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("type", String(100), nullable=False),
    # The event's own ``created`` (Stripe's clock), and when we applied it.
    Column("created", Timestamp, nullable=False),
    Column("processed_at", Timestamp, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    CheckConstraint(_in("outcome", ("applied", "ignored", "unknown_customer")), name="outcome"),
)

# A payment whose credits were clawed back (a refund or a dispute): once per
# payment, whichever of the two comes first.
stripe_clawbacks = Table(
    "stripe_clawbacks",
    metadata,
    _ref("payment_id", "payments", primary_key=True),
    Column("reason", String(16), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("spent", BigInteger, nullable=False),
    _created_at(),
    CheckConstraint(_in("reason", ("refund", "dispute")), name="reason"),
    CheckConstraint("credits >= 0 AND spent >= 0", name="not_negative"),
)
# A charge's refund or dispute finds its payment by the Stripe id kept with it.
Index("ix_payments_external_id", payments.c.external_id)

# --- Fair use (migration 0005) ---


# Suspicious events per account, scored over sliding windows by
# fairuse/rules.py. ``subject`` names the cause (a generation, a payment) so
# that one cause is counted once however often it is reported.
abuse_signals = Table(
    "abuse_signals",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    _ref("user_id", "users", nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(80)),
    Column("evidence", Text, nullable=False, server_default=text("'{}'")),
    _created_at(),
    CheckConstraint(_in("kind", ABUSE_SIGNAL_KINDS), name="kind"),
    UniqueConstraint("user_id", "kind", "subject", name="uq_abuse_signals_cause"),
)
Index("ix_abuse_signals_user_created", abuse_signals.c.user_id, abuse_signals.c.created_at)

# An account over the flag threshold, for an admin to review: at most one
# unresolved (open or suspended) flag per account, kept up to date with the
# score and its evidence; reinstating the account resolves it.
abuse_flags = Table(
    "abuse_flags",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    Column("status", String(16), nullable=False),
    Column("score", Integer, nullable=False),
    Column("evidence", Text, nullable=False, server_default=text("'{}'")),
    _created_at(),
    _updated_at(),
    Column("resolved_at", Timestamp),
    Column("resolved_by", String(340)),
    CheckConstraint(_in("status", ABUSE_FLAG_STATUSES), name="status"),
    CheckConstraint("score >= 0", name="score_not_negative"),
)
Index("ix_abuse_flags_user_status", abuse_flags.c.user_id, abuse_flags.c.status)
Index("ix_abuse_flags_status", abuse_flags.c.status, abuse_flags.c.id)

# --- Announced changes and the notification outbox (migration 0006) ---


# A change to the catalog announced ahead of time (the policy's "notified in
# advance of any material changes"). The catalog file stays the base; the
# catalog in force at a moment is the file with the changes due by then
# applied, so every process sees a change take effect at the same instant.
catalog_changes = Table(
    "catalog_changes",
    metadata,
    _id(),
    Column("target", String(8), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("field", String(40), nullable=False),
    # The new value, as JSON.
    Column("value", Text, nullable=False),
    Column("effective_at", Timestamp, nullable=False),
    _ref("created_by", "users", nullable=False),
    _created_at(),
    # Withdrawn before it took effect; kept for the record.
    Column("canceled_at", Timestamp),
    # When every affected user's notice was queued in the outbox: at
    # scheduling, and again a day before the change takes effect.
    Column("announced_at", Timestamp),
    Column("reminded_at", Timestamp),
    # The last user id a stage in progress has queued notices for: the
    # worker works through the users a batch per transaction.
    Column("notice_cursor", String(40)),
    CheckConstraint(_in("target", CHANGE_TARGETS), name="target"),
)
Index("ix_catalog_changes_effective_at", catalog_changes.c.effective_at)


# The notification outbox: written in the transaction of its cause and
# delivered by the worker (in-app, and by e-mail when SMTP is configured).
# ``cause_key`` is unique, so a cause notifies each user at most once however
# often the code that notices it runs, in however many workers.
notification_outbox = Table(
    "notification_outbox",
    metadata,
    _id(),
    Column("cause_key", String(200), nullable=False, unique=True),
    # None for mail to an address with no account (a team invitation).
    _ref("user_id", "users"),
    Column("kind", String(40), nullable=False),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("data", Text, nullable=False, server_default=text("'{}'")),
    _created_at(),
    # The in-app notification once written (set in the same transaction, so
    # a redelivery after a crash never writes a second one).
    Column("notification_id", String(40)),
    Column("email_status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Timestamp, nullable=False),
    # The lease of the worker delivering it; an expired lease is up for grabs.
    Column("claimed_by", String(80)),
    Column("claim_expires_at", Timestamp),
    Column("delivered_at", Timestamp),
    Column("last_error", Text),
    # Mail sent to this address rather than the user's (a new address to
    # verify, an invitation); None: the user's address at delivery.
    Column("to_address", String(320)),
    # False for mail that is not an in-app notice too (a reset link, a receipt).
    Column("in_app", Boolean, nullable=False, server_default=true()),
    # The body carries a secret (a single-use link): blanked once the mail
    # is sent or given up, so the secret is kept no longer than needed.
    Column("sensitive", Boolean, nullable=False, server_default=false()),
    CheckConstraint(_in("email_status", EMAIL_STATUSES), name="email_status"),
    CheckConstraint("user_id IS NOT NULL OR to_address IS NOT NULL", name="recipient"),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
)
Index(
    "ix_notification_outbox_due",
    notification_outbox.c.delivered_at,
    notification_outbox.c.next_attempt_at,
)

# Low-balance notices fire once per crossing: a wallet is armed once its
# balance is at or above the threshold and fires when it drops below.
balance_alerts = Table(
    "balance_alerts",
    metadata,
    _ref("wallet_id", "wallets", primary_key=True),
    Column("below", Boolean, nullable=False, server_default=false()),
    # How many times it fell below: the cause key of each crossing's notice.
    Column("crossings", Integer, nullable=False, server_default="0"),
    Column("changed_at", Timestamp, nullable=False),
)

# --- fal webhooks (migration 0007) ---


# Every signed webhook fal delivered, by fal's request id (the signed
# ``X-Fal-Webhook-Request-Id``): inserted once, so a redelivery is recognised
# and changes nothing. ``result`` is what the body said (the worker still
# reads the outcome from fal's API); ``generation_id`` is null for a request
# id we do not know, which is recorded so that fal is not made to retry it.
fal_webhooks = Table(
    "fal_webhooks",
    metadata,
    Column("request_id", String(200), primary_key=True),
    _ref("generation_id", "generations"),
    Column("result", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("received_at", Timestamp, nullable=False),
    CheckConstraint(_in("result", FAL_WEBHOOK_RESULTS), name="result"),
    CheckConstraint(_in("outcome", FAL_WEBHOOK_OUTCOMES), name="outcome"),
)
# A webhook names fal's request id; this finds its generation.
Index("ix_generations_provider_request_id", generations.c.provider_request_id)


# --- credit controls and outbound webhooks (migration 0013) ---

# A wallet's auto top-up (docs/credits.md): one pack bought off-session when
# a hold or capture leaves the balance below ``threshold``. ``run_id`` is the
# run in flight: set by a conditional UPDATE, so one wallet has at most one.
auto_topups = Table(
    "auto_topups",
    metadata,
    _ref("wallet_id", "wallets", primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default=false()),
    Column("threshold", BigInteger, nullable=False),
    Column("pack_id", String(64), nullable=False),
    Column("monthly_cap_cents", BigInteger, nullable=False),
    # Failed runs in a row; at 3 it turns itself off.
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("run_id", String(40)),
    Column("disabled_reason", Text),
    _ref("set_by", "users", nullable=False),
    _updated_at(),
    CheckConstraint(
        "threshold >= 0 AND monthly_cap_cents >= 0 AND failures >= 0", name="not_negative"
    ),
)

# Each auto top-up run: its charge and how it ended.
topup_runs = Table(
    "topup_runs",
    metadata,
    _id(),
    _ref("wallet_id", "wallets", nullable=False),
    # Who pays: the wallet's owner (a team's: its owner).
    _ref("user_id", "users", nullable=False),
    Column("pack_id", String(64), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    _ref("payment_id", "payments"),
    Column("failure_reason", Text),
    # Where the customer authenticates the charge when the bank asks (SCA).
    Column("action_url", Text),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    _created_at(),
    Column("finished_at", Timestamp),
    CheckConstraint(_in("status", TOPUP_STATUSES), name="status"),
    CheckConstraint("credits > 0 AND amount_cents >= 0", name="amounts"),
)
Index("ix_topup_runs_wallet", topup_runs.c.wallet_id, topup_runs.c.created_at)
Index("ix_topup_runs_status", topup_runs.c.status)

# A wallet's balance alerts (up to 5): a threshold in credits or in percent
# of the monthly allocation. Armed while the balance is at or above it; fires
# once when the balance drops below, and is armed again when it rises above.
wallet_alerts = Table(
    "wallet_alerts",
    metadata,
    _id(),
    _ref("wallet_id", "wallets", nullable=False),
    Column("credits", BigInteger),
    Column("percent", Integer),
    Column("armed", Boolean, nullable=False, server_default=true()),
    # How many times it fired: the cause key of each crossing's notice.
    Column("crossings", Integer, nullable=False, server_default="0"),
    Column("fired_at", Timestamp),
    _created_at(),
    CheckConstraint("(credits IS NULL) <> (percent IS NULL)", name="credits_or_percent"),
    CheckConstraint("credits IS NULL OR credits >= 0", name="credits_not_negative"),
    CheckConstraint("percent IS NULL OR (percent >= 1 AND percent <= 100)", name="percent_range"),
)
Index("ix_wallet_alerts_wallet", wallet_alerts.c.wallet_id)

# Outbound webhooks (docs/webhooks.md, Standard Webhooks). An endpoint a user
# registered, with the events it wants (a JSON list) and its ``whsec_``
# secret; after a rotation the previous secret signs too until it expires.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    _id(),
    _ref("user_id", "users", nullable=False),
    Column("url", Text, nullable=False),
    Column("events", Text, nullable=False),
    Column("description", String(200), nullable=False, server_default=""),
    Column("secret", String(100), nullable=False),
    Column("previous_secret", String(100)),
    Column("previous_secret_expires_at", Timestamp),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("disabled_at", Timestamp),
    Column("disabled_reason", Text),
    # Since when every delivery failed (None: the last one succeeded); three
    # days of it disable the endpoint.
    Column("failing_since", Timestamp),
    _created_at(),
    _updated_at(),
)
Index("ix_webhook_endpoints_user", webhook_endpoints.c.user_id)

# The account's own secret, which signs deliveries to a per-generation ``webhook_url``.
webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    _ref("user_id", "users", primary_key=True),
    Column("secret", String(100), nullable=False),
    _created_at(),
)

# An event for a user's webhooks, written in the transaction of its cause
# (``cause_key`` unique: each cause emits once). The dispatcher fans it out
# into one delivery per subscribed endpoint (and to ``webhook_url``).
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("cause_key", String(200), nullable=False, unique=True),
    _ref("user_id", "users", nullable=False),
    Column("type", String(40), nullable=False),
    # The body as delivered: {"type", "timestamp", "data"}.
    Column("payload", Text, nullable=False),
    Column("webhook_url", Text),
    _created_at(),
    Column("fanned_out_at", Timestamp),
    CheckConstraint(_in("type", WEBHOOK_EVENT_TYPES), name="type"),
)
Index("ix_webhook_events_pending", webhook_events.c.fanned_out_at, webhook_events.c.created_at)

# One event's delivery to one endpoint (or to its ``webhook_url``), retried
# with exponential backoff for 24 hours.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    _id(),
    _ref("event_id", "webhook_events", nullable=False),
    # None: the event's per-request ``webhook_url``.
    _ref("endpoint_id", "webhook_endpoints"),
    Column("url", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("claimed_by", String(80)),
    Column("claim_expires_at", Timestamp),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    _created_at(),
    Column("delivered_at", Timestamp),
    CheckConstraint(_in("status", WEBHOOK_DELIVERY_STATUSES), name="status"),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
)
Index(
    "ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at
)
Index(
    "ix_webhook_deliveries_endpoint",
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.created_at,
)
Index("ix_webhook_deliveries_event", webhook_deliveries.c.event_id)

# Every attempt of a delivery: the endpoint's delivery log.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    _ref("delivery_id", "webhook_deliveries", nullable=False),
    Column("attempted_at", Timestamp, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration_ms", Integer, nullable=False, server_default="0"),
)
Index("ix_webhook_attempts_delivery", webhook_attempts.c.delivery_id, webhook_attempts.c.id)

# Operations (docs/deployment.md#monitoring): each run of the scheduled
# ledger verification, so that /metrics can say when it last passed.
ledger_checks = Table(
    "ledger_checks",
    metadata,
    _id(),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("problems", Integer, nullable=False, server_default="0"),
    # The first problems found, as `ledger verify` prints them (bounded).
    Column("summary", Text, nullable=False, server_default=""),
    # Which process ran it (host:pid), for the operator reading the table.
    Column("checked_by", String(100), nullable=False, server_default=""),
    CheckConstraint("problems >= 0", name="problems_not_negative"),
)
Index("ix_ledger_checks_finished", ledger_checks.c.finished_at)

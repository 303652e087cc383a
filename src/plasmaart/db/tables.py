"""Every table, in SQLAlchemy Core, with the invariants the database can enforce.

Constraints carry names from one naming convention so that migrations can
refer to them. The CHECK constraints are the last line of defence of the
ledger: whatever a bug in Python does, no balance, lot or hold can go negative
and no journal entry can disagree with the accounts it moves between.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
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

LOT_SOURCES = ("promo", "subscription", "rollover", "adjustment", "purchase")
ENTRY_KINDS = (
    "grant",
    "hold",
    "capture",
    "release",
    "expire",
    "rollover",
    "refund",
    "clawback",
    "adjustment",
)
# The accounts of the double-entry journal. ``wallet`` and ``holds`` are the
# wallet's own (its available and held credits); the others are the platform's.
ACCOUNTS = ("wallet", "holds", "issuance", "consumed", "expired")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False, server_default="user"),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("status_reason", Text),
    Column("created_at", Timestamp, nullable=False),
    CheckConstraint(_in("role", ("user", "admin")), name="role"),
    CheckConstraint(_in("status", ("active", "suspended")), name="status"),
)

wallets = Table(
    "wallets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner_kind", String(16), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("available", BigInteger, nullable=False, server_default="0"),
    Column("held", BigInteger, nullable=False, server_default="0"),
    Column("created_at", Timestamp, nullable=False),
    CheckConstraint("available >= 0", name="available_not_negative"),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint(_in("owner_kind", ("user", "team")), name="owner_kind"),
    UniqueConstraint("owner_kind", "owner_id", name="uq_wallets_owner"),
)

lots = Table(
    "lots",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("wallet_id", String(40), ForeignKey("wallets.id"), nullable=False),
    Column("source", String(16), nullable=False),
    Column("granted", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    # Credits of this lot that expired or were clawed back, so far.
    Column("expired", BigInteger, nullable=False, server_default="0"),
    Column("expires_at", Timestamp),
    Column("reference", String(200)),
    Column("created_at", Timestamp, nullable=False),
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
    Column("id", String(40), primary_key=True),
    Column("wallet_id", String(40), ForeignKey("wallets.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("released", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("generation_id", String(40)),
    Column("memo", Text),
    Column("created_at", Timestamp, nullable=False),
    Column("resolved_at", Timestamp),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("captured >= 0 AND released >= 0", name="parts_not_negative"),
    CheckConstraint(_in("status", ("pending", "captured", "released")), name="status"),
    # A hold resolves exactly once, and when it does every credit is accounted for.
    CheckConstraint(
        "(status = 'pending' AND captured = 0 AND released = 0 AND resolved_at IS NULL)"
        " OR (status <> 'pending' AND captured + released = amount AND resolved_at IS NOT NULL)",
        name="resolution",
    ),
)
Index("ix_holds_wallet_status", holds.c.wallet_id, holds.c.status)

hold_lots = Table(
    "hold_lots",
    metadata,
    Column("hold_id", String(40), ForeignKey("holds.id"), primary_key=True),
    Column("lot_id", String(40), ForeignKey("lots.id"), primary_key=True),
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
    Column("wallet_id", String(40), ForeignKey("wallets.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("from_account", String(16), nullable=False),
    Column("to_account", String(16), nullable=False),
    Column("credits", BigInteger, nullable=False),
    # Signed change of the wallet's available credits, and available after it.
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("held_after", BigInteger, nullable=False),
    Column("lot_id", String(40), ForeignKey("lots.id")),
    Column("hold_id", String(40), ForeignKey("holds.id")),
    Column("generation_id", String(40)),
    Column("memo", Text),
    Column("created_at", Timestamp, nullable=False),
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
Index(
    "ix_journal_wallet_kind_created",
    journal_entries.c.wallet_id,
    journal_entries.c.kind,
    journal_entries.c.created_at,
)

ledger_operations = Table(
    "ledger_operations",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("operation", String(32), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("result", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("wallet_id", String(40), ForeignKey("wallets.id"), nullable=False, unique=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("plan_id", String(40), nullable=False),
    Column("status", String(16), nullable=False),
    Column("current_period_start", Timestamp, nullable=False),
    Column("current_period_end", Timestamp, nullable=False),
    Column("cancel_at_period_end", Boolean, nullable=False, server_default=false()),
    Column("pending_plan", String(40)),
    Column("backend", String(16), nullable=False),
    Column("external_id", String(200)),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint(_in("status", ("active", "past_due", "canceled")), name="status"),
    CheckConstraint("current_period_end > current_period_start", name="period_order"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("actor", String(340), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(340), nullable=False),
    Column("reason", Text),
    Column("data", Text, nullable=False, server_default=text("'{}'")),
    Column("created_at", Timestamp, nullable=False),
)
Index("ix_audit_log_target", audit_log.c.target, audit_log.c.id)

"""initial schema: accounts, wallets, the credit ledger, subscriptions

Revision ID: 0001
Revises:
Create Date: 2026-11-26 08:36:46.986789
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=340), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=340), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_target", ["target", "id"], unique=False)

    op.create_table(
        "ledger_operations",
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_ledger_operations")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), server_default="user", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('user', 'admin')", name=op.f("ck_users_role")),
        sa.CheckConstraint("status IN ('active', 'suspended')", name=op.f("ck_users_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "wallets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner_kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=False),
        sa.Column("available", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("owner_kind IN ('user', 'team')", name=op.f("ck_wallets_owner_kind")),
        sa.CheckConstraint("available >= 0", name=op.f("ck_wallets_available_not_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_wallets_held_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
        sa.UniqueConstraint("owner_kind", "owner_id", name="uq_wallets_owner"),
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("released", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("generation_id", sa.String(length=40), nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'pending' AND captured = 0 AND released = 0 AND resolved_at IS NULL) OR (status <> 'pending' AND captured + released = amount AND resolved_at IS NOT NULL)",
            name=op.f("ck_holds_resolution"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'captured', 'released')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_holds_amount_positive")),
        sa.CheckConstraint(
            "captured >= 0 AND released >= 0", name=op.f("ck_holds_parts_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_holds_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index("ix_holds_wallet_status", ["wallet_id", "status"], unique=False)

    op.create_table(
        "lots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("granted", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expired", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_reason", sa.String(length=16), nullable=True),
        sa.CheckConstraint(
            "closed_reason IS NULL OR closed_reason IN ('expired', 'clawed_back')",
            name=op.f("ck_lots_closed_reason"),
        ),
        sa.CheckConstraint(
            "source IN ('promo', 'subscription', 'rollover', 'adjustment', 'purchase')",
            name=op.f("ck_lots_source"),
        ),
        sa.CheckConstraint(
            "(closed_at IS NULL) = (closed_reason IS NULL)", name=op.f("ck_lots_closed_consistent")
        ),
        sa.CheckConstraint(
            "closed_at IS NULL OR remaining = 0", name=op.f("ck_lots_closed_is_empty")
        ),
        sa.CheckConstraint(
            "expired >= 0 AND expired <= granted", name=op.f("ck_lots_expired_in_range")
        ),
        sa.CheckConstraint("granted > 0", name=op.f("ck_lots_granted_positive")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= granted", name=op.f("ck_lots_remaining_in_range")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_lots_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots")),
    )
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index("ix_lots_expiry", ["expires_at", "closed_at"], unique=False)
        batch_op.create_index("ix_lots_wallet_open", ["wallet_id", "expires_at"], unique=False)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("pending_plan", sa.String(length=40), nullable=True),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'past_due', 'canceled')", name=op.f("ck_subscriptions_status")
        ),
        sa.CheckConstraint(
            "current_period_end > current_period_start", name=op.f("ck_subscriptions_period_order")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_subscriptions_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_subscriptions_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("wallet_id", name=op.f("uq_subscriptions_wallet_id")),
    )
    op.create_table(
        "hold_lots",
        sa.Column("hold_id", sa.String(length=40), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("released", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "captured >= 0 AND released >= 0 AND captured + released <= credits",
            name=op.f("ck_hold_lots_parts"),
        ),
        sa.CheckConstraint("credits > 0", name=op.f("ck_hold_lots_credits_positive")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_hold_lots_hold_id_holds")),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.id"], name=op.f("fk_hold_lots_lot_id_lots")),
        sa.PrimaryKeyConstraint("hold_id", "lot_id", name=op.f("pk_hold_lots")),
    )
    op.create_table(
        "journal_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_account", sa.String(length=16), nullable=False),
        sa.Column("to_account", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("held_after", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=True),
        sa.Column("hold_id", sa.String(length=40), nullable=True),
        sa.Column("generation_id", sa.String(length=40), nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "amount = CASE WHEN to_account = 'wallet' THEN credits WHEN from_account = 'wallet' THEN -credits ELSE 0 END",
            name=op.f("ck_journal_entries_amount_matches_accounts"),
        ),
        sa.CheckConstraint(
            "from_account IN ('wallet', 'holds', 'issuance', 'consumed', 'expired')",
            name=op.f("ck_journal_entries_from_account"),
        ),
        sa.CheckConstraint(
            "kind IN ('grant', 'hold', 'capture', 'release', 'expire', 'rollover', 'refund', 'clawback', 'adjustment')",
            name=op.f("ck_journal_entries_kind"),
        ),
        sa.CheckConstraint(
            "to_account IN ('wallet', 'holds', 'issuance', 'consumed', 'expired')",
            name=op.f("ck_journal_entries_to_account"),
        ),
        sa.CheckConstraint(
            "balance_after >= 0 AND held_after >= 0",
            name=op.f("ck_journal_entries_balances_not_negative"),
        ),
        sa.CheckConstraint("credits > 0", name=op.f("ck_journal_entries_credits_positive")),
        sa.CheckConstraint(
            "from_account <> to_account", name=op.f("ck_journal_entries_distinct_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["holds.id"], name=op.f("fk_journal_entries_hold_id_holds")
        ),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["lots.id"], name=op.f("fk_journal_entries_lot_id_lots")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_journal_entries_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
    )
    with op.batch_alter_table("journal_entries", schema=None) as batch_op:
        batch_op.create_index("ix_journal_wallet_id", ["wallet_id", "id"], unique=False)
        batch_op.create_index(
            "ix_journal_wallet_kind_created", ["wallet_id", "kind", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("journal_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_journal_wallet_kind_created")
        batch_op.drop_index("ix_journal_wallet_id")

    op.drop_table("journal_entries")
    op.drop_table("hold_lots")
    op.drop_table("subscriptions")
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index("ix_lots_wallet_open")
        batch_op.drop_index("ix_lots_expiry")

    op.drop_table("lots")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_wallet_status")

    op.drop_table("holds")
    op.drop_table("wallets")
    op.drop_table("users")
    op.drop_table("ledger_operations")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_target")

    op.drop_table("audit_log")

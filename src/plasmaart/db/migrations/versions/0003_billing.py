"""billing: payments, the sandbox test clock and cards, subscription anchors

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:12:05.114207
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    test_clock = op.create_table(
        "test_clock",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("offset_seconds", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_test_clock_single_row")),
        sa.CheckConstraint("offset_seconds >= 0", name=op.f("ck_test_clock_forward_only")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_clock")),
    )
    # The one row exists from the start, so that moving the clock is a plain
    # UPDATE (atomic on both databases) and never a racy insert.
    op.bulk_insert(test_clock, [{"id": 1, "offset_seconds": 0}])

    op.create_table(
        "sandbox_cards",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("declines", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sandbox_cards_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_sandbox_cards")),
    )

    op.create_table(
        "payments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=True),
        sa.Column("pack_id", sa.String(length=64), nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=True),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('subscription', 'renewal', 'upgrade', 'pack')", name=op.f("ck_payments_kind")
        ),
        sa.CheckConstraint("status IN ('succeeded', 'failed')", name=op.f("ck_payments_status")),
        sa.CheckConstraint(
            "amount_cents >= 0 AND credits >= 0", name=op.f("ck_payments_not_negative")
        ),
        sa.CheckConstraint(
            "status = 'succeeded' OR credits = 0", name=op.f("ck_payments_failed_grants_nothing")
        ),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.id"], name=op.f("fk_payments_lot_id_lots")),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_payments_subscription_id_subscriptions"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_payments_user_id_users")),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_payments_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payments_idempotency_key")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("ix_payments_user", ["user_id", "id"], unique=False)

    # A plain ADD COLUMN (nullable), so SQLite keeps the table and its CHECKs.
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("billing_anchor", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE subscriptions SET billing_anchor = current_period_start")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index("ix_subscriptions_period_end", ["current_period_end"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_period_end")
        batch_op.drop_column("billing_anchor")

    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_user")

    op.drop_table("payments")
    op.drop_table("sandbox_cards")
    op.drop_table("test_clock")

"""stripe: processed webhook events, customer and subscription ids

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 11:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_customers",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_stripe_customers_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_stripe_customers")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_stripe_customers_customer_id")),
    )
    op.create_table(
        "stripe_subscriptions",
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("last_event_created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_stripe_subscriptions_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("stripe_subscription_id", name=op.f("pk_stripe_subscriptions")),
        sa.UniqueConstraint(
            "subscription_id", name=op.f("uq_stripe_subscriptions_subscription_id")
        ),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('applied', 'ignored', 'unknown_customer')",
            name=op.f("ck_stripe_events_outcome"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_table(
        "stripe_clawbacks",
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "reason IN ('refund', 'dispute')", name=op.f("ck_stripe_clawbacks_reason")
        ),
        sa.CheckConstraint(
            "credits >= 0 AND spent >= 0", name=op.f("ck_stripe_clawbacks_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_stripe_clawbacks_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_stripe_clawbacks")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("ix_payments_external_id", ["external_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_external_id")
    op.drop_table("stripe_clawbacks")
    op.drop_table("stripe_events")
    op.drop_table("stripe_subscriptions")
    op.drop_table("stripe_customers")

"""credit controls and outbound webhooks: spend limits, auto top-up, balance
alerts, the balance watch, webhook endpoints, events, deliveries, attempts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 19:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auto_topups",
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("pack_id", sa.String(length=64), nullable=False),
        sa.Column("monthly_cap_cents", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("set_by", sa.String(length=40), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "threshold >= 0 AND monthly_cap_cents >= 0 AND failures >= 0",
            name=op.f("ck_auto_topups_not_negative"),
        ),
        sa.ForeignKeyConstraint(["set_by"], ["users.id"], name=op.f("fk_auto_topups_set_by_users")),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_auto_topups_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("wallet_id", name=op.f("pk_auto_topups")),
    )
    op.create_table(
        "wallet_alerts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=True),
        sa.Column("percent", sa.Integer(), nullable=True),
        sa.Column("armed", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("crossings", sa.Integer(), server_default="0", nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(credits IS NULL) <> (percent IS NULL)",
            name=op.f("ck_wallet_alerts_credits_or_percent"),
        ),
        sa.CheckConstraint(
            "credits IS NULL OR credits >= 0", name=op.f("ck_wallet_alerts_credits_not_negative")
        ),
        sa.CheckConstraint(
            "percent IS NULL OR (percent >= 1 AND percent <= 100)",
            name=op.f("ck_wallet_alerts_percent_range"),
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_wallet_alerts_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallet_alerts")),
    )
    with op.batch_alter_table("wallet_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_wallet_alerts_wallet", ["wallet_id"], unique=False)

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=200), server_default="", nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("previous_secret", sa.String(length=100), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_webhook_endpoints_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_endpoints_user", ["user_id"], unique=False)

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cause_key", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fanned_out_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "type IN ('generation.succeeded', 'generation.failed', 'generation.canceled', 'credits.low', 'credits.expiring', 'payment.succeeded', 'payment.failed', 'topup.succeeded', 'topup.failed')",
            name=op.f("ck_webhook_events_type"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_webhook_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("cause_key", name=op.f("uq_webhook_events_cause_key")),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_events_pending", ["fanned_out_at", "created_at"], unique=False
        )

    op.create_table(
        "webhook_secrets",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_webhook_secrets_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_webhook_secrets")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=80), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.CheckConstraint(
            "attempts >= 0", name=op.f("ck_webhook_deliveries_attempts_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["webhook_events.id"],
            name=op.f("fk_webhook_deliveries_event_id_webhook_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            "ix_webhook_deliveries_endpoint", ["endpoint_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_webhook_deliveries_event", ["event_id"], unique=False)

    op.create_table(
        "topup_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("pack_id", sa.String(length=64), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("action_url", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'action_required')",
            name=op.f("ck_topup_runs_status"),
        ),
        sa.CheckConstraint("credits > 0 AND amount_cents >= 0", name=op.f("ck_topup_runs_amounts")),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_topup_runs_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_topup_runs_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_topup_runs_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topup_runs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_topup_runs_idempotency_key")),
    )
    with op.batch_alter_table("topup_runs", schema=None) as batch_op:
        batch_op.create_index("ix_topup_runs_status", ["status"], unique=False)
        batch_op.create_index("ix_topup_runs_wallet", ["wallet_id", "created_at"], unique=False)

    op.create_table(
        "webhook_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_attempts_delivery", ["delivery_id", "id"], unique=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_credit_limit", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("monthly_credit_limit", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_generations_api_key_created", ["api_key_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_generations_wallet_created", ["wallet_id", "created_at"], unique=False
        )

    with op.batch_alter_table("sandbox_cards", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("requires_action", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("monthly_spend_limit", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("watch_below", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("watch_above", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("expiry_notice_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandbox_cards", schema=None) as batch_op:
        batch_op.drop_column("requires_action")
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.drop_column("expiry_notice_days")
        batch_op.drop_column("watch_above")
        batch_op.drop_column("watch_below")
        batch_op.drop_column("monthly_spend_limit")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index("ix_generations_wallet_created")
        batch_op.drop_index("ix_generations_api_key_created")
        batch_op.drop_column("webhook_url")
        batch_op.drop_column("api_key_id")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("monthly_credit_limit")
        batch_op.drop_column("daily_credit_limit")
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_topup_runs_wallet", table_name="topup_runs")
    op.drop_index("ix_topup_runs_status", table_name="topup_runs")
    op.drop_table("topup_runs")
    op.drop_index("ix_webhook_deliveries_event", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    op.drop_index("ix_webhook_events_pending", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_index("ix_webhook_endpoints_user", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_wallet_alerts_wallet", table_name="wallet_alerts")
    op.drop_table("wallet_alerts")
    op.drop_table("auto_topups")

"""announced catalog changes and the notification outbox

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 11:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_changes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=40), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notice_cursor", sa.String(length=40), nullable=True),
        sa.CheckConstraint("target IN ('model', 'plan')", name=op.f("ck_catalog_changes_target")),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_catalog_changes_created_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_changes")),
    )
    with op.batch_alter_table("catalog_changes", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_changes_effective_at", ["effective_at"], unique=False)

    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cause_key", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notification_id", sa.String(length=40), nullable=True),
        sa.Column("email_status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=80), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "email_status IN ('pending', 'sent', 'skipped', 'failed')",
            name=op.f("ck_notification_outbox_email_status"),
        ),
        sa.CheckConstraint(
            "attempts >= 0", name=op.f("ck_notification_outbox_attempts_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notification_outbox_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.UniqueConstraint("cause_key", name=op.f("uq_notification_outbox_cause_key")),
    )
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notification_outbox_due", ["delivered_at", "next_attempt_at"], unique=False
        )

    op.create_table(
        "balance_alerts",
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("below", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("crossings", sa.Integer(), server_default="0", nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_balance_alerts_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("wallet_id", name=op.f("pk_balance_alerts")),
    )


def downgrade() -> None:
    op.drop_table("balance_alerts")
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_outbox_due")
    op.drop_table("notification_outbox")
    with op.batch_alter_table("catalog_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_changes_effective_at")
    op.drop_table("catalog_changes")

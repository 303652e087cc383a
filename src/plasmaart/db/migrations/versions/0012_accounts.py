"""accounts: address verification, single-use links, two-factor, session
ids, receipts, mail to any address, deleted accounts

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_verified_at", _timestamp(), nullable=True))
        batch_op.add_column(sa.Column("totp_secret", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("totp_pending_secret", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", _timestamp(), nullable=True))
    # Accounts made before verification existed keep working as they did:
    # their addresses count as verified from the day they were registered.
    op.execute("UPDATE users SET email_verified_at = created_at")

    op.create_table(
        "account_tokens",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.Column("used_at", _timestamp(), nullable=True),
        sa.CheckConstraint(
            "purpose IN ('password_reset', 'email_verification', 'email_change')",
            name=op.f("ck_account_tokens_purpose"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_account_tokens_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_account_tokens_token_hash")),
    )
    op.create_index(
        "ix_account_tokens_user", "account_tokens", ["user_id", "purpose"], unique=False
    )
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("used_at", _timestamp(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_recovery_codes_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_recovery_codes_code_hash")),
    )
    op.create_index("ix_recovery_codes_user", "recovery_codes", ["user_id"], unique=False)
    op.create_table(
        "auth_throttle",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(340), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_throttle")),
    )
    op.create_index(
        "ix_auth_throttle_subject",
        "auth_throttle",
        ["action", "subject", "created_at"],
        unique=False,
    )
    op.create_table(
        "receipt_numbers",
        sa.Column("number", _big_id(), autoincrement=True, nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_receipt_numbers")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_receipt_numbers_payment_id")),
    )

    # Sessions get a public id; the ones open now get one from their hash.
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("id", sa.String(40), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(300), nullable=True))
        batch_op.add_column(sa.Column("address", sa.String(64), nullable=True))
    op.execute("UPDATE sessions SET id = 'ses_' || substr(token_hash, 1, 26)")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.alter_column("id", existing_type=sa.String(40), nullable=False)
        batch_op.create_unique_constraint(op.f("uq_sessions_id"), ["id"])

    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("declined_at", _timestamp(), nullable=True))

    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("receipt_number", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("hosted_invoice_url", sa.Text(), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_payments_receipt_number"), ["receipt_number"])
    # Payments that succeeded before receipts existed are numbered in order.
    op.execute(
        "INSERT INTO receipt_numbers (payment_id, created_at) "
        "SELECT id, created_at FROM payments WHERE status = 'succeeded' ORDER BY created_at, id"
    )
    op.execute(
        "UPDATE payments SET receipt_number = "
        "(SELECT number FROM receipt_numbers WHERE receipt_numbers.payment_id = payments.id)"
    )

    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.alter_column("user_id", existing_type=sa.String(40), nullable=True)
        batch_op.add_column(sa.Column("to_address", sa.String(320), nullable=True))
        batch_op.add_column(
            sa.Column("in_app", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("sensitive", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_check_constraint(
            op.f("ck_notification_outbox_recipient"),
            "user_id IS NOT NULL OR to_address IS NOT NULL",
        )


def downgrade() -> None:
    op.execute("DELETE FROM notification_outbox WHERE user_id IS NULL")
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_notification_outbox_recipient"), type_="check")
        batch_op.drop_column("sensitive")
        batch_op.drop_column("in_app")
        batch_op.drop_column("to_address")
        batch_op.alter_column("user_id", existing_type=sa.String(40), nullable=False)
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_payments_receipt_number"), type_="unique")
        batch_op.drop_column("hosted_invoice_url")
        batch_op.drop_column("receipt_number")
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_column("declined_at")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_sessions_id"), type_="unique")
        batch_op.drop_column("address")
        batch_op.drop_column("user_agent")
        batch_op.drop_column("id")
    op.drop_table("receipt_numbers")
    op.drop_index("ix_auth_throttle_subject", table_name="auth_throttle")
    op.drop_table("auth_throttle")
    op.drop_index("ix_recovery_codes_user", table_name="recovery_codes")
    op.drop_table("recovery_codes")
    op.drop_index("ix_account_tokens_user", table_name="account_tokens")
    op.drop_table("account_tokens")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_pending_secret")
        batch_op.drop_column("totp_secret")
        batch_op.drop_column("email_verified_at")

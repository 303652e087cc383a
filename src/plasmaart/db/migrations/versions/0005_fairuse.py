"""fair use: abuse signals, account flags

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 11:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "abuse_signals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=True),
        sa.Column("evidence", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('rate_limited', 'submit_cancel', 'identical_prompt', 'invalid_input', "
            "'clawback')",
            name=op.f("ck_abuse_signals_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_abuse_signals_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_abuse_signals")),
        sa.UniqueConstraint("user_id", "kind", "subject", name="uq_abuse_signals_cause"),
    )
    with op.batch_alter_table("abuse_signals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_abuse_signals_user_created", ["user_id", "created_at"], unique=False
        )

    op.create_table(
        "abuse_flags",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=340), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'suspended', 'resolved')", name=op.f("ck_abuse_flags_status")
        ),
        sa.CheckConstraint("score >= 0", name=op.f("ck_abuse_flags_score_not_negative")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_abuse_flags_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_abuse_flags")),
    )
    with op.batch_alter_table("abuse_flags", schema=None) as batch_op:
        batch_op.create_index("ix_abuse_flags_user_status", ["user_id", "status"], unique=False)
        batch_op.create_index("ix_abuse_flags_status", ["status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("abuse_flags", schema=None) as batch_op:
        batch_op.drop_index("ix_abuse_flags_status")
        batch_op.drop_index("ix_abuse_flags_user_status")
    op.drop_table("abuse_flags")

    with op.batch_alter_table("abuse_signals", schema=None) as batch_op:
        batch_op.drop_index("ix_abuse_signals_user_created")
    op.drop_table("abuse_signals")

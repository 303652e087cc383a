"""operations: the scheduled ledger verification's results

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_checks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("problems", sa.Integer(), server_default="0", nullable=False),
        sa.Column("summary", sa.Text(), server_default="", nullable=False),
        sa.Column("checked_by", sa.String(length=100), server_default="", nullable=False),
        sa.CheckConstraint("problems >= 0", name=op.f("ck_ledger_checks_problems_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_checks")),
    )
    op.create_index("ix_ledger_checks_finished", "ledger_checks", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_checks_finished", table_name="ledger_checks")
    op.drop_table("ledger_checks")

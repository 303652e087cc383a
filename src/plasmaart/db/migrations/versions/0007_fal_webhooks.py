"""fal webhooks: deliveries received, and generations by fal's request id

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 12:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fal_webhooks",
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("generation_id", sa.String(length=40), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "result IN ('succeeded', 'failed', 'payload_error')",
            name=op.f("ck_fal_webhooks_result"),
        ),
        sa.CheckConstraint(
            "outcome IN ('woken', 'finished', 'unknown_request')",
            name=op.f("ck_fal_webhooks_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_fal_webhooks_generation_id_generations"),
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_fal_webhooks")),
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_generations_provider_request_id", ["provider_request_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index("ix_generations_provider_request_id")
    op.drop_table("fal_webhooks")

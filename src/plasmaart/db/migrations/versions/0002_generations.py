"""generations, their outputs and uploads

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:46:31.798822
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("storage_key", sa.String(length=300), nullable=False),
        sa.Column("content_type", sa.String(length=40), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_uploads_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index("ix_uploads_user", ["user_id", "created_at"], unique=False)

    op.create_table(
        "generations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=True),
        sa.Column("model", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("num_outputs", sa.Integer(), nullable=False),
        sa.Column("params", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("sandbox", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("upload_id", sa.String(length=40), nullable=True),
        sa.Column("image_url", sa.Text(), nullable=True),
        sa.Column("credits_per_output", sa.Integer(), nullable=False),
        sa.Column("credits_held", sa.BigInteger(), nullable=False),
        sa.Column("credits_charged", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("hold_id", sa.String(length=40), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("queue_class", sa.String(length=16), nullable=False),
        sa.Column("video", sa.Boolean(), nullable=False),
        sa.Column("license", sa.String(length=16), nullable=False),
        sa.Column("watermark", sa.Boolean(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("virtual_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_request_id", sa.String(length=200), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "license IN ('personal', 'commercial')", name=op.f("ck_generations_license")
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')",
            name=op.f("ck_generations_status"),
        ),
        sa.CheckConstraint(
            "credits_charged >= 0 AND credits_charged <= credits_held",
            name=op.f("ck_generations_charged_within_held"),
        ),
        sa.CheckConstraint("num_outputs >= 1", name=op.f("ck_generations_outputs_positive")),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["holds.id"], name=op.f("fk_generations_hold_id_holds")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_generations_team_id_teams")
        ),
        sa.ForeignKeyConstraint(
            ["upload_id"], ["uploads.id"], name=op.f("fk_generations_upload_id_uploads")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_generations_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_generations_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_generations_user_key"),
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.create_index("ix_generations_queue", ["status", "virtual_start"], unique=False)
        batch_op.create_index(
            "ix_generations_team_created", ["team_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_generations_user_created", ["user_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_generations_wallet_status", ["wallet_id", "status"], unique=False)

    op.create_table(
        "generation_outputs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("generation_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=300), nullable=False),
        sa.Column("content_type", sa.String(length=40), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("watermarked", sa.Boolean(), nullable=False),
        sa.Column("license", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_generation_outputs_generation_id_generations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_outputs")),
        sa.UniqueConstraint("generation_id", "position", name="uq_generation_outputs_position"),
    )


def downgrade() -> None:
    op.drop_table("generation_outputs")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index("ix_generations_wallet_status")
        batch_op.drop_index("ix_generations_user_created")
        batch_op.drop_index("ix_generations_team_created")
        batch_op.drop_index("ix_generations_queue")

    op.drop_table("generations")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index("ix_uploads_user")

    op.drop_table("uploads")

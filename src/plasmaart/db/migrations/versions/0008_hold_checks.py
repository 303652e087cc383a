"""A hold's status tied to its amounts; indexes for reading the audit log

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 07:00:00.000000

``ck_holds_resolution`` only said that a resolved hold accounts for every
credit; it let ``status`` say ``captured`` for a hold that captured nothing, or
``released`` for one that captured credits. Three constraints replace it, one
per status, each tying the status to ``captured``, ``released`` and
``resolved_at``.

The ledger always wrote the status from the amounts (``captured`` when any
credit was captured, else ``released``), and the amounts are what the journal
and the hold's lots agree with, so a resolved hold whose status says otherwise
(only a direct edit of the database could make one) gets the status its
amounts give before the constraints are added. ``plasmaart ledger verify``
checks the amounts themselves against the journal.

The audit log gets an index per filter of ``GET /v1/admin/audit`` (time, actor,
target, action), each ending in ``(created_at, id)``, the page order.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

HOLD_CHECKS = {
    "ck_holds_pending_parts": (
        "status <> 'pending' OR (captured = 0 AND released = 0 AND resolved_at IS NULL)"
    ),
    "ck_holds_captured_parts": (
        "status <> 'captured' OR (captured > 0 AND captured + released = amount"
        " AND resolved_at IS NOT NULL)"
    ),
    "ck_holds_released_parts": (
        "status <> 'released' OR (captured = 0 AND released = amount AND resolved_at IS NOT NULL)"
    ),
}
RESOLUTION = (
    "(status = 'pending' AND captured = 0 AND released = 0 AND resolved_at IS NULL)"
    " OR (status <> 'pending' AND captured + released = amount AND resolved_at IS NOT NULL)"
)
AUDIT_INDEXES = {
    "ix_audit_log_created_at": ["created_at", "id"],
    "ix_audit_log_actor": ["actor", "created_at", "id"],
    "ix_audit_log_target": ["target", "created_at", "id"],
    "ix_audit_log_action": ["action", "created_at", "id"],
}


def upgrade() -> None:
    op.execute(
        "UPDATE holds SET status = CASE WHEN captured > 0 THEN 'captured' ELSE 'released' END"
        " WHERE status <> 'pending'"
        " AND status <> CASE WHEN captured > 0 THEN 'captured' ELSE 'released' END"
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_holds_resolution"), type_="check")
        for name, condition in HOLD_CHECKS.items():
            batch_op.create_check_constraint(op.f(name), condition)

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_target")
        for name, columns in AUDIT_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        for name in AUDIT_INDEXES:
            batch_op.drop_index(name)
        batch_op.create_index("ix_audit_log_target", ["target", "id"], unique=False)

    with op.batch_alter_table("holds", schema=None) as batch_op:
        for name in HOLD_CHECKS:
            batch_op.drop_constraint(op.f(name), type_="check")
        batch_op.create_check_constraint(op.f("ck_holds_resolution"), RESOLUTION)

"""The audit log: who did what to whom, when and why. Append-only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from plasmaart.db.tables import audit_log


def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str | None,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(audit_log).values(
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            data=json.dumps(data or {}, sort_keys=True, default=str),
            created_at=now,
        )
    )

"""The audit log's SQL: append an entry (``record``, which ``audit`` offers),
read a page of entries, and the names that ids are known by. Entries come
back as the frozen records below."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select

from plasmaart.clock import as_utc
from plasmaart.db.tables import audit_log, teams, users


@dataclass(frozen=True, slots=True)
class AuditPosition:
    """Where a page ended: the last entry served."""

    id: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries to read; ``None`` leaves a field unfiltered. ``since``
    is inclusive, ``until`` exclusive."""

    actor: str | None = None
    target: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    reason: str | None
    data: dict[str, Any]

    @property
    def position(self) -> AuditPosition:
        return AuditPosition(self.id, self.created_at)


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
    """Append an entry, in the caller's transaction."""
    conn.execute(
        insert(audit_log).values(
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            # ``default=str``: a datetime in ``data`` is kept as its ISO text.
            data=json.dumps(data or {}, sort_keys=True, default=str),
            created_at=now,
        )
    )


def entries(
    conn: Connection, wanted: AuditFilter, *, limit: int, before: AuditPosition | None
) -> list[AuditEntry]:
    """Up to ``limit`` entries matching ``wanted``, newest first, strictly
    older than ``before``."""
    log = audit_log.c
    query = select(log.id, log.created_at, log.actor, log.action, log.target, log.reason, log.data)
    if wanted.actor is not None:
        query = query.where(log.actor == wanted.actor)
    if wanted.target is not None:
        query = query.where(log.target == wanted.target)
    if wanted.action is not None:
        query = query.where(log.action == wanted.action)
    if wanted.since is not None:
        query = query.where(log.created_at >= as_utc(wanted.since))
    if wanted.until is not None:
        query = query.where(log.created_at < as_utc(wanted.until))
    if before is not None:
        # Spelled so that both databases bound the index range by the time.
        at = as_utc(before.created_at)
        query = query.where(log.created_at <= at, or_(log.created_at < at, log.id < before.id))
    query = query.order_by(log.created_at.desc(), log.id.desc()).limit(limit)
    return [
        AuditEntry(
            int(row.id),
            as_utc(row.created_at),
            row.actor,
            row.action,
            row.target,
            row.reason,
            json.loads(row.data),
        )
        for row in conn.execute(query)
    ]


def names(conn: Connection, ids: list[str]) -> dict[str, str]:
    """A user's e-mail or a team's name for each of ``ids`` that is one."""
    found: dict[str, str] = {}
    for row in conn.execute(select(users.c.id, users.c.email).where(users.c.id.in_(ids))):
        found[row.id] = row.email
    for row in conn.execute(select(teams.c.id, teams.c.name).where(teams.c.id.in_(ids))):
        found[row.id] = row.name
    return found

"""The audit log: who did what to whom, when and why. Append-only.

``record`` writes an entry in the caller's transaction; ``page`` reads the log
for the admins, newest first, in ``(created_at, id)`` order (the id breaks ties
between entries of the same instant), filtered by actor, target (the
``subject`` of the API), action and a time window. Each filter has an index in
that order (migration 0008), so every page is one index range however long
the log grows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select

from plasmaart.clock import as_utc
from plasmaart.db.tables import audit_log, teams, users


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


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    more: bool  # older entries match too


def page(
    conn: Connection,
    wanted: AuditFilter,
    *,
    limit: int,
    before: AuditPosition | None = None,
) -> AuditPage:
    """Entries matching ``wanted``, newest first, strictly older than
    ``before`` (the last entry of the previous page)."""
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
    query = query.order_by(log.created_at.desc(), log.id.desc()).limit(limit + 1)
    rows = conn.execute(query).all()
    entries = [
        AuditEntry(
            id=int(row.id),
            created_at=as_utc(row.created_at),
            actor=row.actor,
            action=row.action,
            target=row.target,
            reason=row.reason,
            data=json.loads(row.data),
        )
        for row in rows[:limit]
    ]
    return AuditPage(entries=entries, more=len(rows) > limit)


def labels(conn: Connection, ids: Iterable[str]) -> dict[str, str]:
    """What a person reading the log knows the ids by: a user's e-mail, a
    team's name. Ids of neither (``cli``, ``system:…``, ``model:…``) are left out."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    found: dict[str, str] = {}
    for row in conn.execute(select(users.c.id, users.c.email).where(users.c.id.in_(wanted))):
        found[row.id] = row.email
    for row in conn.execute(select(teams.c.id, teams.c.name).where(teams.c.id.in_(wanted))):
        found[row.id] = row.name
    return found

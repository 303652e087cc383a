"""The SQL of announced catalog changes (the ``catalog_changes`` table)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from plasmaart.catalog.changes import CatalogChange
from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import catalog_changes, notification_outbox, users


@dataclass(frozen=True)
class ChangeRecord:
    """A change with its bookkeeping: who scheduled it, and what became of it."""

    change: CatalogChange
    created_by: str
    created_at: datetime
    canceled_at: datetime | None
    announced_at: datetime | None
    reminded_at: datetime | None
    notice_cursor: str | None


def _record(row: Row[Any]) -> ChangeRecord:
    return ChangeRecord(
        change=CatalogChange(
            id=row.id,
            target=row.target,
            target_id=row.target_id,
            field=row.field,
            value=json.loads(row.value),
            effective_at=as_utc(row.effective_at),
        ),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        canceled_at=None if row.canceled_at is None else as_utc(row.canceled_at),
        announced_at=None if row.announced_at is None else as_utc(row.announced_at),
        reminded_at=None if row.reminded_at is None else as_utc(row.reminded_at),
        notice_cursor=row.notice_cursor,
    )


def insert_change(
    conn: Connection, change: CatalogChange, *, created_by: str, now: datetime
) -> None:
    conn.execute(
        insert(catalog_changes).values(
            id=change.id,
            target=change.target,
            target_id=change.target_id,
            field=change.field,
            value=json.dumps(change.value, separators=(",", ":")),
            effective_at=change.effective_at,
            created_by=created_by,
            created_at=now,
        )
    )
    invalidate(conn, "catalog")


def active_changes(conn: Connection, *, until: datetime | None = None) -> list[CatalogChange]:
    """Every change not withdrawn (due by ``until`` if given), in order of effect."""
    query = select(catalog_changes).where(catalog_changes.c.canceled_at.is_(None))
    if until is not None:
        query = query.where(catalog_changes.c.effective_at <= until)
    rows = conn.execute(query.order_by(catalog_changes.c.effective_at, catalog_changes.c.id)).all()
    return [_record(row).change for row in rows]


def all_records(conn: Connection, *, after: datetime | None = None) -> list[ChangeRecord]:
    """Every change ever scheduled (taking effect after ``after`` if given),
    withdrawn ones too, soonest effect first."""
    query = select(catalog_changes)
    if after is not None:
        query = query.where(catalog_changes.c.effective_at > after)
    rows = conn.execute(query.order_by(catalog_changes.c.effective_at, catalog_changes.c.id)).all()
    return [_record(row) for row in rows]


def record_by_id(conn: Connection, change_id: str, *, lock: bool = False) -> ChangeRecord | None:
    query = select(catalog_changes).where(catalog_changes.c.id == change_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else _record(row)


def cancel(conn: Connection, change_id: str, now: datetime) -> None:
    conn.execute(
        update(catalog_changes)
        .where(catalog_changes.c.id == change_id, catalog_changes.c.canceled_at.is_(None))
        .values(canceled_at=now)
    )
    invalidate(conn, "catalog")


def unannounced(conn: Connection, *, limit: int) -> list[ChangeRecord]:
    """Active changes whose affected users have not been told yet."""
    rows = conn.execute(
        select(catalog_changes)
        .where(catalog_changes.c.canceled_at.is_(None), catalog_changes.c.announced_at.is_(None))
        .order_by(catalog_changes.c.effective_at, catalog_changes.c.id)
        .limit(limit)
    ).all()
    return [_record(row) for row in rows]


def due_reminders(conn: Connection, *, remind_from: datetime, limit: int) -> list[ChangeRecord]:
    """Active, announced changes taking effect by ``remind_from`` + the
    reminder lead, not reminded yet: ``remind_from`` is now + REMINDER_BEFORE."""
    rows = conn.execute(
        select(catalog_changes)
        .where(
            catalog_changes.c.canceled_at.is_(None),
            catalog_changes.c.announced_at.is_not(None),
            catalog_changes.c.reminded_at.is_(None),
            catalog_changes.c.effective_at <= remind_from,
        )
        .order_by(catalog_changes.c.effective_at, catalog_changes.c.id)
        .limit(limit)
    ).all()
    return [_record(row) for row in rows]


def announced_users(conn: Connection, change_id: str) -> list[str]:
    """The users the change's announcement was queued for."""
    prefix = f"catalog_change:{change_id}:announced:"
    rows = conn.execute(
        select(notification_outbox.c.user_id)
        .where(notification_outbox.c.cause_key.startswith(prefix, autoescape=True))
        .order_by(notification_outbox.c.user_id)
    )
    return [str(user_id) for user_id in rows.scalars()]


def advance_notices(
    conn: Connection, change_id: str, *, cursor: str | None, done: str | None, now: datetime
) -> None:
    """Record a stage's progress: the last user id done, or (``done`` names
    the stage's column) the stage finished and the cursor cleared."""
    values: dict[str, Any] = {"notice_cursor": None if done else cursor}
    if done is not None:
        values[done] = now
    conn.execute(update(catalog_changes).where(catalog_changes.c.id == change_id).values(values))


def user_ids_after(conn: Connection, after: str | None, limit: int) -> list[str]:
    """The next ``limit`` user ids after ``after``, in order."""
    query = select(users.c.id).order_by(users.c.id).limit(limit)
    if after is not None:
        query = query.where(users.c.id > after)
    return [str(user_id) for user_id in conn.execute(query).scalars()]

"""In-app notifications: the ``notifications`` table and the live
``notification`` event that announces each new one after commit.

The row is the durable record (a client that missed the event finds it in the
list); the event is only the nudge. E-mail delivery is the outbox's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import after_commit
from plasmaart.db.tables import notifications
from plasmaart.errors import NotFound
from plasmaart.eventbus import EventBus, iso_utc
from plasmaart.ids import new_id

ID_PREFIX = "ntf"
TITLE_LENGTH = 200  # notifications.title is VARCHAR(200)


class NotificationNotFound(NotFound):
    """Unknown id, or another user's notification (the same answer for both)."""


@dataclass(frozen=True)
class Notification:
    id: str
    user_id: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None

    def as_event_data(self) -> dict[str, Any]:
        """The notification object, as ``GET /v1/notifications`` shows it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "created_at": iso_utc(self.created_at),
            "read_at": None if self.read_at is None else iso_utc(self.read_at),
        }


@dataclass(frozen=True)
class NotificationPage:
    items: list[Notification]
    # The id to pass as ``cursor`` for the next page; None on the last page.
    next_cursor: str | None


def _notification(row: Row[Any]) -> Notification:
    return Notification(
        id=row.id,
        user_id=row.user_id,
        kind=row.kind,
        title=row.title,
        body=row.body,
        data=json.loads(row.data),
        created_at=as_utc(row.created_at),
        read_at=None if row.read_at is None else as_utc(row.read_at),
    )


class NotificationService:
    def __init__(self, clock: Clock, events: EventBus) -> None:
        self.clock = clock
        self.events = events

    def notify(
        self,
        conn: Connection,
        user_id: str,
        kind: str,
        title: str,
        body: str,
        data: dict[str, Any] | None = None,
    ) -> Notification:
        """Store a notification for ``user_id`` and, once the caller's
        transaction commits, push it to their open event streams."""
        if len(title) > TITLE_LENGTH:
            # Titles may quote user-chosen names; a long one must not fail
            # the transaction that wanted to tell the user something.
            title = title[: TITLE_LENGTH - 1] + "…"
        notification = Notification(
            id=new_id(ID_PREFIX),
            user_id=user_id,
            kind=kind,
            title=title,
            body=body,
            data=dict(data or {}),
            created_at=self.clock.now(),
            read_at=None,
        )
        conn.execute(
            insert(notifications).values(
                id=notification.id,
                user_id=user_id,
                kind=kind,
                title=title,
                body=body,
                data=json.dumps(notification.data, separators=(",", ":")),
                created_at=notification.created_at,
            )
        )
        after_commit(
            conn,
            partial(self.events.publish, [user_id], "notification", notification.as_event_data()),
        )
        return notification

    def get(self, conn: Connection, user_id: str, notification_id: str) -> Notification:
        row = conn.execute(
            select(notifications).where(
                notifications.c.id == notification_id, notifications.c.user_id == user_id
            )
        ).first()
        if row is None:
            raise NotificationNotFound(f"no notification {notification_id}")
        return _notification(row)

    def mark_read(self, conn: Connection, user_id: str, notification_id: str) -> Notification:
        """Mark one of the user's notifications read (again: no change)."""
        conn.execute(
            update(notifications)
            .where(
                notifications.c.id == notification_id,
                notifications.c.user_id == user_id,
                notifications.c.read_at.is_(None),
            )
            .values(read_at=self.clock.now())
        )
        return self.get(conn, user_id, notification_id)

    def list(
        self,
        conn: Connection,
        user_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        unread_only: bool = False,
    ) -> NotificationPage:
        """The user's notifications, newest first, ``limit`` at a time.

        Keyset pagination on the time-ordered id: ``cursor`` is the id of the
        last notification of the previous page.
        """
        query = select(notifications).where(notifications.c.user_id == user_id)
        if cursor is not None:
            query = query.where(notifications.c.id < cursor)
        if unread_only:
            query = query.where(notifications.c.read_at.is_(None))
        rows = conn.execute(query.order_by(notifications.c.id.desc()).limit(limit + 1)).all()
        items = [_notification(row) for row in rows[:limit]]
        more = len(rows) > limit
        return NotificationPage(items=items, next_cursor=items[-1].id if more else None)

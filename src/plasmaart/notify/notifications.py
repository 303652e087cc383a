"""In-app notifications: the ``notifications`` table and the live
``notification`` event that announces each new one after commit.

The row is the durable record (a client that missed the event finds it in the
list); the event is only the nudge. E-mail delivery is the outbox's job
(``notify.delivery``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection

from plasmaart.clock import Clock
from plasmaart.db.engine import after_commit
from plasmaart.errors import NotFound
from plasmaart.eventbus import EventBus
from plasmaart.ids import new_id
from plasmaart.notify import repository as repo

# Imported from here by the routes and pages that show notifications.
from plasmaart.notify.repository import Notification as Notification
from plasmaart.outbox import short_title

ID_PREFIX = "ntf"


class NotificationNotFound(NotFound):
    """Unknown id, or another user's notification (the same answer for both)."""


@dataclass(frozen=True)
class NotificationPage:
    items: list[Notification]
    # The id to pass as ``cursor`` for the next page; None on the last page.
    next_cursor: str | None


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
        notification = Notification(
            id=new_id(ID_PREFIX),
            user_id=user_id,
            kind=kind,
            title=short_title(title),
            body=body,
            data=dict(data or {}),
            created_at=self.clock.now(),
            read_at=None,
        )
        repo.insert_notification(conn, notification)
        after_commit(
            conn,
            partial(self.events.publish, [user_id], "notification", notification.as_event_data()),
        )
        return notification

    def get(self, conn: Connection, user_id: str, notification_id: str) -> Notification:
        notification = repo.notification_of(conn, user_id, notification_id)
        if notification is None:
            raise NotificationNotFound(f"no notification {notification_id}")
        return notification

    def mark_read(self, conn: Connection, user_id: str, notification_id: str) -> Notification:
        """Mark one of the user's notifications read (again: no change)."""
        repo.mark_read(conn, user_id, notification_id, self.clock.now())
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
        found = repo.notifications_of(
            conn, user_id, limit=limit + 1, before=cursor, unread_only=unread_only
        )
        items = found[:limit]
        more = len(found) > limit
        return NotificationPage(items=items, next_cursor=items[-1].id if more else None)

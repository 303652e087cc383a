"""The notification outbox: what the platform has to tell a user, written in
the same transaction as its cause and delivered later by the worker.

* ``Outbox.enqueue`` inserts a message under a unique ``cause_key`` (say
  ``renewal:<subscription>:<period end>``); a second insert for the same cause
  does nothing, so each cause notifies at most once however often, and in
  however many workers, the code that noticed it runs.
* ``OutboxDelivery.run`` claims due messages with a lease (a conditional
  UPDATE; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on
  SQLite), writes the in-app notification (``notify.notifications``: the
  ``/v1/notifications`` row and the live ``notification`` event) and sends the
  e-mail when SMTP is configured. A failed send is retried with exponential
  backoff. A worker that dies mid-delivery leaves its lease to expire; the
  next claim finishes the job. The in-app row is written once (its id is
  stored with the message in the same transaction); an e-mail can only be
  sent twice if the process dies between the SMTP server accepting it and
  the commit that records it, and then carries the same Message-ID.
"""

from __future__ import annotations

import json
import logging
import smtplib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.db.tables import notification_outbox, users
from plasmaart.ids import new_id
from plasmaart.notify.email import Mailer
from plasmaart.notify.notifications import TITLE_LENGTH, NotificationService

log = logging.getLogger(__name__)

# How long a claimed message is a worker's alone; an SMTP exchange takes seconds.
LEASE = timedelta(minutes=2)
# Sending gives up after this many attempts (about a day and a half of backoff).
MAX_ATTEMPTS = 10
RETRY_FIRST = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=6)
# Messages one delivery pass takes, so one pass stays short.
BATCH = 50


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed send: 1, 2, 4 ...
    minutes, at most ``RETRY_MAX``."""
    delay: timedelta = RETRY_FIRST * (2 ** min(max(attempts - 1, 0), 20))
    return min(delay, RETRY_MAX)


@dataclass(frozen=True)
class OutboxMessage:
    id: str
    cause_key: str
    user_id: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    notification_id: str | None
    email_status: str
    attempts: int


def _message(row: Row[Any]) -> OutboxMessage:
    return OutboxMessage(
        id=row.id,
        cause_key=row.cause_key,
        user_id=row.user_id,
        kind=row.kind,
        title=row.title,
        body=row.body,
        data=json.loads(row.data),
        notification_id=row.notification_id,
        email_status=row.email_status,
        attempts=int(row.attempts),
    )


class Outbox:
    """Queues notifications in the caller's transaction."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def enqueue(
        self,
        conn: Connection,
        *,
        cause_key: str,
        user_id: str,
        kind: str,
        title: str,
        body: str,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """Queue a notification for ``user_id``; False if this cause already
        queued one (nothing is written then)."""
        if len(title) > TITLE_LENGTH:
            title = title[: TITLE_LENGTH - 1] + "…"
        now = self.clock.now()
        values = {
            "id": new_id("obx"),
            "cause_key": cause_key,
            "user_id": user_id,
            "kind": kind,
            "title": title,
            "body": body,
            "data": json.dumps(data or {}, separators=(",", ":"), sort_keys=True),
            "created_at": now,
            "next_attempt_at": now,
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(notification_outbox)
            .values(values)
            .on_conflict_do_nothing(index_elements=["cause_key"])
            # rowcount is not reliable for this statement under psycopg.
            .returning(notification_outbox.c.id)
        )
        return conn.execute(statement).first() is not None

    def queued(self, conn: Connection, cause_key: str) -> bool:
        """Whether a notification for this cause was ever queued."""
        found = conn.execute(
            select(notification_outbox.c.id).where(notification_outbox.c.cause_key == cause_key)
        ).first()
        return found is not None


@dataclass
class DeliveryResult:
    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


class OutboxDelivery:
    """Delivers queued notifications: in-app, then by e-mail if configured."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifications: NotificationService,
        mailer: Mailer | None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifications = notifications
        self.mailer = mailer

    def run(self, worker_id: str, *, limit: int = BATCH) -> DeliveryResult:
        """Deliver up to ``limit`` due messages, claiming one at a time so
        that a failing SMTP server ends the pass after one attempt (the worker's
        tick, which also claims generation jobs, must stay short) and leaves
        the rest unclaimed for the next tick or another worker."""
        result = DeliveryResult()
        for _ in range(limit):
            claimed = self.claim(worker_id, limit=1)
            if not claimed:
                break
            result.claimed += 1
            outcome = self.deliver(claimed[0], worker_id)
            if outcome == "delivered":
                result.delivered += 1
            elif outcome == "failed":
                result.failed += 1
            elif outcome == "retrying":
                result.retrying += 1
                break
        return result

    def claim(self, worker_id: str, *, limit: int = BATCH) -> list[OutboxMessage]:
        """Lease up to ``limit`` undelivered messages that are due and not
        leased by a live worker; each claim counts as an attempt."""
        now = self.clock.now()
        with self.db.write() as conn:
            query = (
                select(notification_outbox.c.id)
                .where(
                    notification_outbox.c.delivered_at.is_(None),
                    notification_outbox.c.next_attempt_at <= now,
                    or_(
                        notification_outbox.c.claim_expires_at.is_(None),
                        notification_outbox.c.claim_expires_at <= now,
                    ),
                )
                .order_by(notification_outbox.c.next_attempt_at, notification_outbox.c.id)
                .limit(limit)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            ids = [row.id for row in conn.execute(query)]
            claimed: list[OutboxMessage] = []
            for message_id in ids:
                # Conditional, so a claim that raced another one takes nothing.
                taken = conn.execute(
                    update(notification_outbox)
                    .where(
                        notification_outbox.c.id == message_id,
                        notification_outbox.c.delivered_at.is_(None),
                        or_(
                            notification_outbox.c.claim_expires_at.is_(None),
                            notification_outbox.c.claim_expires_at <= now,
                        ),
                    )
                    .values(
                        claimed_by=worker_id,
                        claim_expires_at=now + LEASE,
                        attempts=notification_outbox.c.attempts + 1,
                    )
                )
                if taken.rowcount == 1:
                    row = conn.execute(
                        select(notification_outbox).where(notification_outbox.c.id == message_id)
                    ).one()
                    claimed.append(_message(row))
        return claimed

    def deliver(self, message: OutboxMessage, worker_id: str) -> str:
        """Deliver one claimed message: ``delivered``, ``retrying``, ``failed``
        (e-mail given up), or ``lost_lease`` (another worker has it now)."""
        if message.notification_id is None and not self._deliver_in_app(message, worker_id):
            return "lost_lease"
        if self.mailer is None or message.email_status != "pending":
            status = "skipped" if message.email_status == "pending" else message.email_status
            return "delivered" if self._finish(message, worker_id, status) else "lost_lease"
        with self.db.read() as conn:
            address = conn.execute(
                select(users.c.email).where(users.c.id == message.user_id)
            ).scalar_one()
        try:
            self.mailer.send(
                to=address,
                subject=message.title,
                body=f"{message.body}\n\n-- \nPlasmaArt",
                message_id=f"<{message.id}@plasmaart>",
            )
        except (OSError, smtplib.SMTPException) as exc:
            return self._failed(message, worker_id, f"{type(exc).__name__}: {exc}")
        return "delivered" if self._finish(message, worker_id, "sent") else "lost_lease"

    # -- internals -----------------------------------------------------------

    def _deliver_in_app(self, message: OutboxMessage, worker_id: str) -> bool:
        with self.db.write() as conn:
            row = conn.execute(
                self._mine(select(notification_outbox.c.notification_id), message, worker_id)
            ).first()
            if row is None:
                return False
            if row.notification_id is not None:
                return True  # written by this worker's earlier attempt under this lease
            notification = self.notifications.notify(
                conn, message.user_id, message.kind, message.title, message.body, message.data
            )
            conn.execute(
                update(notification_outbox)
                .where(notification_outbox.c.id == message.id)
                .values(notification_id=notification.id)
            )
        return True

    def _finish(self, message: OutboxMessage, worker_id: str, email_status: str) -> bool:
        with self.db.write() as conn:
            done = conn.execute(
                self._mine(update(notification_outbox), message, worker_id).values(
                    email_status=email_status,
                    delivered_at=self.clock.now(),
                    claimed_by=None,
                    claim_expires_at=None,
                )
            )
        return done.rowcount == 1

    def _failed(self, message: OutboxMessage, worker_id: str, error: str) -> str:
        now = self.clock.now()
        # The claim counted this attempt already.
        attempts = message.attempts
        give_up = attempts >= MAX_ATTEMPTS
        values: dict[str, Any] = {
            "claimed_by": None,
            "claim_expires_at": None,
            "last_error": error[:1000],
            "next_attempt_at": now + retry_delay(attempts),
        }
        if give_up:
            values.update(email_status="failed", delivered_at=now)
        log.warning(
            "e-mail of notification %s failed (attempt %d): %s", message.id, attempts, error
        )
        with self.db.write() as conn:
            done = conn.execute(
                self._mine(update(notification_outbox), message, worker_id).values(values)
            )
        if done.rowcount != 1:
            return "lost_lease"
        return "failed" if give_up else "retrying"

    def _mine(self, statement: Any, message: OutboxMessage, worker_id: str) -> Any:
        """``statement`` restricted to the message while this worker holds its lease."""
        return statement.where(
            notification_outbox.c.id == message.id,
            notification_outbox.c.claimed_by == worker_id,
            notification_outbox.c.claim_expires_at > self.clock.now(),
        )

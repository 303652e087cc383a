"""Delivering the notification outbox: what the platform queued for a user
(``plasmaart.outbox``, in the transaction of its cause) reaches them in the app
and by e-mail.

``OutboxDelivery.run`` claims due messages with a lease (a conditional UPDATE;
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite), writes the
in-app notification (``notify.notifications``: the ``/v1/notifications`` row
and the live ``notification`` event; letters have none) and sends the e-mail
(``notify.email``: over SMTP, or into the mail folder when no SMTP server is
set). A sensitive message's body (a single-use link) is blanked in the same
statement that records its delivery. A failed send is retried with exponential
backoff. A worker that dies mid-delivery leaves its lease to expire; the next
claim finishes the job. The in-app row is written once (its id is stored with
the message in the same transaction); an e-mail can only be sent twice if the
process dies between the SMTP server accepting it and the commit that records
it, and then carries the same Message-ID.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import timedelta

from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.notify import repository as repo
from plasmaart.notify.email import Letter, Mailer, compose
from plasmaart.notify.notifications import NotificationService
from plasmaart.notify.repository import OutboxMessage

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
        *,
        sender: str,
        support_email: str,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifications = notifications
        self.mailer = mailer
        # The From address, and the support address every mail names.
        self.sender = sender
        self.support_email = support_email

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
            leased = (
                repo.take_lease(conn, message_id, worker_id, now=now, lease=LEASE)
                for message_id in repo.due_message_ids(conn, now, limit=limit)
            )
            return [message for message in leased if message is not None]

    def deliver(self, message: OutboxMessage, worker_id: str) -> str:
        """Deliver one claimed message: ``delivered``, ``retrying``, ``failed``
        (e-mail given up), or ``lost_lease`` (another worker has it now)."""
        if (
            message.in_app
            and message.notification_id is None
            and not self._deliver_in_app(message, worker_id)
        ):
            return "lost_lease"
        address = message.to_address
        if address is None and message.user_id is not None:
            with self.db.read() as conn:
                address = repo.email_of(conn, message.user_id)
        if self.mailer is None or message.email_status != "pending" or address is None:
            status = "skipped" if message.email_status == "pending" else message.email_status
            return "delivered" if self._finish(message, worker_id, status) else "lost_lease"
        letter = Letter(to=address, subject=message.title, body=message.body)
        try:
            self.mailer.send(
                compose(
                    letter,
                    sender=self.sender,
                    support_email=self.support_email,
                    message_id=f"<{message.id}@plasmaart>",
                    now=self.clock.now(),
                )
            )
        except (OSError, smtplib.SMTPException) as exc:
            return self._failed(message, worker_id, f"{type(exc).__name__}: {exc}")
        return "delivered" if self._finish(message, worker_id, "sent") else "lost_lease"

    # -- internals -----------------------------------------------------------

    def _deliver_in_app(self, message: OutboxMessage, worker_id: str) -> bool:
        user_id = message.user_id
        if user_id is None:  # the outbox writes no in-app notice without a user
            return True
        with self.db.write() as conn:
            lease = repo.lease_held(conn, message.id, worker_id, self.clock.now())
            if lease is None:
                return False
            if lease.notification_id is not None:
                return True  # written by this worker's earlier attempt under this lease
            notification = self.notifications.notify(
                conn, user_id, message.kind, message.title, message.body, message.data
            )
            repo.set_notification(conn, message.id, notification.id)
        return True

    def _finish(self, message: OutboxMessage, worker_id: str, email_status: str) -> bool:
        with self.db.write() as conn:
            return repo.finish(
                conn,
                message.id,
                worker_id,
                now=self.clock.now(),
                email_status=email_status,
                scrub=message.sensitive,
            )

    def _failed(self, message: OutboxMessage, worker_id: str, error: str) -> str:
        now = self.clock.now()
        # The claim counted this attempt already.
        attempts = message.attempts
        give_up = attempts >= MAX_ATTEMPTS
        log.warning(
            "e-mail of notification %s failed (attempt %d): %s", message.id, attempts, error
        )
        with self.db.write() as conn:
            kept = repo.send_failed(
                conn,
                message.id,
                worker_id,
                now=now,
                error=error,
                retry_at=now + retry_delay(attempts),
                give_up=give_up,
                scrub=message.sensitive,
            )
        if not kept:
            return "lost_lease"
        return "failed" if give_up else "retrying"

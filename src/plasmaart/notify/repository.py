"""The SQL of ``notify``: in-app notifications, the delivery of the outbox
(claims under a lease, then the in-app row and the e-mail's outcome), and
the worker's look for credits about to expire and balances that fell low.

The outbox's writer (``plasmaart.outbox``) inserts the messages; this module
reads and delivers them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Row,
    Select,
    Update,
    and_,
    case,
    exists,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    Timestamp,
    balance_alerts,
    lots,
    notification_outbox,
    notifications,
    users,
    wallet_alerts,
    wallets,
)
from plasmaart.eventbus import iso_utc

# -- in-app notifications ---------------------------------------------------------


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


def insert_notification(conn: Connection, notification: Notification) -> None:
    conn.execute(
        insert(notifications).values(
            id=notification.id,
            user_id=notification.user_id,
            kind=notification.kind,
            title=notification.title,
            body=notification.body,
            data=json.dumps(notification.data, separators=(",", ":")),
            created_at=notification.created_at,
        )
    )


def notification_of(conn: Connection, user_id: str, notification_id: str) -> Notification | None:
    """The user's notification with this id; None for an unknown id or
    another user's notification alike."""
    row = conn.execute(
        select(notifications).where(
            notifications.c.id == notification_id, notifications.c.user_id == user_id
        )
    ).first()
    return None if row is None else _notification(row)


def mark_read(conn: Connection, user_id: str, notification_id: str, now: datetime) -> None:
    """Mark it read unless it was already (or is not the user's)."""
    conn.execute(
        update(notifications)
        .where(
            notifications.c.id == notification_id,
            notifications.c.user_id == user_id,
            notifications.c.read_at.is_(None),
        )
        .values(read_at=now)
    )


def notifications_of(
    conn: Connection, user_id: str, *, limit: int, before: str | None, unread_only: bool
) -> list[Notification]:
    """Up to ``limit`` of the user's notifications, newest first, with ids
    below ``before`` (the ids are time-ordered)."""
    query = select(notifications).where(notifications.c.user_id == user_id)
    if before is not None:
        query = query.where(notifications.c.id < before)
    if unread_only:
        query = query.where(notifications.c.read_at.is_(None))
    rows = conn.execute(query.order_by(notifications.c.id.desc()).limit(limit))
    return [_notification(row) for row in rows]


# -- delivering the outbox ------------------------------------------------------------


@dataclass(frozen=True)
class OutboxMessage:
    id: str
    cause_key: str
    user_id: str | None
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    notification_id: str | None
    email_status: str
    attempts: int
    to_address: str | None = None
    in_app: bool = True
    sensitive: bool = False


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
        to_address=row.to_address,
        in_app=bool(row.in_app),
        sensitive=bool(row.sensitive),
    )


def _unleased(now: datetime) -> Any:
    return or_(
        notification_outbox.c.claim_expires_at.is_(None),
        notification_outbox.c.claim_expires_at <= now,
    )


def due_message_ids(conn: Connection, now: datetime, *, limit: int) -> list[str]:
    """Undelivered messages due by ``now`` and not leased by a live worker,
    the longest waiting first; rows another claim has locked are skipped on
    PostgreSQL (SQLite's write lock serialises claims anyway)."""
    query = (
        select(notification_outbox.c.id)
        .where(
            notification_outbox.c.delivered_at.is_(None),
            notification_outbox.c.next_attempt_at <= now,
            _unleased(now),
        )
        .order_by(notification_outbox.c.next_attempt_at, notification_outbox.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [row.id for row in conn.execute(query)]


def take_lease(
    conn: Connection, message_id: str, worker_id: str, *, now: datetime, lease: timedelta
) -> OutboxMessage | None:
    """Lease the message to ``worker_id``, counting an attempt; None when it
    was delivered or leased meanwhile (the UPDATE is conditional, so a claim
    that raced another one takes nothing)."""
    taken = conn.execute(
        update(notification_outbox)
        .where(
            notification_outbox.c.id == message_id,
            notification_outbox.c.delivered_at.is_(None),
            _unleased(now),
        )
        .values(
            claimed_by=worker_id,
            claim_expires_at=now + lease,
            attempts=notification_outbox.c.attempts + 1,
        )
    )
    if taken.rowcount != 1:
        return None
    row = conn.execute(
        select(notification_outbox).where(notification_outbox.c.id == message_id)
    ).one()
    return _message(row)


_Statement = TypeVar("_Statement", Select[Any], Update)


def _mine(statement: _Statement, message_id: str, worker_id: str, now: datetime) -> _Statement:
    """``statement`` restricted to the message while ``worker_id`` holds its lease."""
    return statement.where(
        notification_outbox.c.id == message_id,
        notification_outbox.c.claimed_by == worker_id,
        notification_outbox.c.claim_expires_at > now,
    )


@dataclass(frozen=True)
class Lease:
    """A message this worker still holds, and its in-app notification if
    an earlier attempt under the lease wrote it."""

    notification_id: str | None


def lease_held(conn: Connection, message_id: str, worker_id: str, now: datetime) -> Lease | None:
    """The worker's lease on the message, or None if it is gone."""
    query = select(notification_outbox.c.notification_id)
    row = conn.execute(_mine(query, message_id, worker_id, now)).first()
    return None if row is None else Lease(row.notification_id)


def set_notification(conn: Connection, message_id: str, notification_id: str) -> None:
    conn.execute(
        update(notification_outbox)
        .where(notification_outbox.c.id == message_id)
        .values(notification_id=notification_id)
    )


# What a sensitive message's body and data become once it is delivered.
SCRUBBED_BODY = "(This message carried a single-use link; it was removed after delivery.)"


def finish(
    conn: Connection,
    message_id: str,
    worker_id: str,
    *,
    now: datetime,
    email_status: str,
    scrub: bool = False,
) -> bool:
    """Mark the message delivered, if the worker still holds its lease;
    ``scrub`` blanks a body that carried a secret."""
    values: dict[str, Any] = {
        "email_status": email_status,
        "delivered_at": now,
        "claimed_by": None,
        "claim_expires_at": None,
    }
    if scrub:
        values.update(body=SCRUBBED_BODY, data="{}")
    statement = update(notification_outbox).values(values)
    return conn.execute(_mine(statement, message_id, worker_id, now)).rowcount == 1


def send_failed(
    conn: Connection,
    message_id: str,
    worker_id: str,
    *,
    now: datetime,
    error: str,
    retry_at: datetime,
    give_up: bool,
    scrub: bool = False,
) -> bool:
    """Release the lease after a failed send: due again at ``retry_at``, or
    delivered with the e-mail ``failed`` when ``give_up``. False if the
    worker no longer held the lease."""
    values: dict[str, Any] = {
        "claimed_by": None,
        "claim_expires_at": None,
        "last_error": error[:1000],
        "next_attempt_at": retry_at,
    }
    if give_up:
        values.update(email_status="failed", delivered_at=now)
        if scrub:
            values.update(body=SCRUBBED_BODY, data="{}")
    statement = update(notification_outbox).values(values)
    return conn.execute(_mine(statement, message_id, worker_id, now)).rowcount == 1


def email_of(conn: Connection, user_id: str) -> str | None:
    """The user's address; None for a deleted account (nothing is mailed)."""
    row = conn.execute(
        select(users.c.email, users.c.deleted_at).where(users.c.id == user_id)
    ).one_or_none()
    if row is None or row.deleted_at is not None:
        return None
    address: str = row.email
    return address


# -- credits about to expire, balances that fell low --------------------------


@dataclass(frozen=True)
class ExpiringLot:
    id: str
    wallet_id: str
    owner_id: str
    remaining: int
    expires_at: datetime


def expiring_lots(
    conn: Connection,
    *,
    now: datetime,
    within: timedelta,
    wallet_windows: Iterable[int] = (),
    limit: int,
) -> list[ExpiringLot]:
    """Lots of personal wallets with credits left that expire within their
    wallet's notice window of ``now`` and were never noticed (no
    ``credits_expiring:<lot>`` message), soonest first.

    A wallet's window is its ``expiry_notice_days`` when that is one of
    ``wallet_windows`` (the days a wallet may choose), none when it is 0, and
    ``within`` (the operator's default) otherwise."""
    noticed = exists().where(
        notification_outbox.c.cause_key == literal("credits_expiring:") + lots.c.id
    )
    days = wallets.c.expiry_notice_days
    windows = sorted({day for day in wallet_windows if day > 0})
    default_cutoff = literal(now + within, Timestamp)
    cutoff = (
        case(
            {day: literal(now + timedelta(days=day), Timestamp) for day in windows},
            value=days,
            else_=default_cutoff,
        )
        if windows
        else default_cutoff
    )
    widest = max([within, *(timedelta(days=day) for day in windows)])
    rows = conn.execute(
        select(lots.c.id, lots.c.wallet_id, lots.c.remaining, lots.c.expires_at, wallets.c.owner_id)
        .select_from(lots.join(wallets, wallets.c.id == lots.c.wallet_id))
        .where(
            wallets.c.owner_kind == "user",
            or_(days.is_(None), days != 0),
            lots.c.remaining > 0,
            lots.c.closed_at.is_(None),
            lots.c.expires_at > now,
            lots.c.expires_at <= now + widest,
            lots.c.expires_at <= cutoff,
            ~noticed,
        )
        .order_by(lots.c.expires_at, lots.c.id)
        .limit(limit)
    )
    return [
        ExpiringLot(row.id, row.wallet_id, row.owner_id, int(row.remaining), as_utc(row.expires_at))
        for row in rows
    ]


def arm_balance_alerts(conn: Connection, *, now: datetime, threshold: int, limit: int) -> None:
    """Arm the personal wallets at or above ``threshold``: a first alert row
    for those without one, and those that had fired armed again."""
    rows = conn.execute(
        select(wallets.c.id, balance_alerts.c.wallet_id.label("known"))
        .select_from(wallets.outerjoin(balance_alerts, balance_alerts.c.wallet_id == wallets.c.id))
        .where(
            wallets.c.owner_kind == "user",
            wallets.c.available >= threshold,
            or_(balance_alerts.c.wallet_id.is_(None), balance_alerts.c.below.is_(True)),
        )
        .limit(limit)
    ).all()
    new = [
        {"wallet_id": row.id, "below": False, "changed_at": now}
        for row in rows
        if row.known is None
    ]
    if new:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(balance_alerts)
            .values(new)
            .on_conflict_do_nothing(index_elements=["wallet_id"])
        )
    rearmed = [row.id for row in rows if row.known is not None]
    if rearmed:
        conn.execute(
            update(balance_alerts)
            .where(and_(balance_alerts.c.wallet_id.in_(rearmed), balance_alerts.c.below.is_(True)))
            .values(below=False, changed_at=now)
        )


@dataclass(frozen=True)
class LowWallet:
    id: str
    owner_id: str
    available: int
    # How often it fell below the threshold before.
    crossings: int
    # Whether its owner set balance alerts of their own (controls/alerts.py).
    own_alerts: bool


def armed_wallets_below(conn: Connection, *, threshold: int, limit: int) -> list[LowWallet]:
    """Armed personal wallets whose available credits are below ``threshold``."""
    own_alerts = exists().where(wallet_alerts.c.wallet_id == wallets.c.id).label("own_alerts")
    rows = conn.execute(
        select(
            wallets.c.id,
            wallets.c.owner_id,
            wallets.c.available,
            balance_alerts.c.crossings,
            own_alerts,
        )
        .select_from(wallets.join(balance_alerts, balance_alerts.c.wallet_id == wallets.c.id))
        .where(
            wallets.c.owner_kind == "user",
            wallets.c.available < threshold,
            balance_alerts.c.below.is_(False),
        )
        .order_by(wallets.c.id)
        .limit(limit)
    )
    return [
        LowWallet(
            row.id, row.owner_id, int(row.available), int(row.crossings), bool(row.own_alerts)
        )
        for row in rows
    ]


def fire_balance_alert(conn: Connection, wallet_id: str, now: datetime) -> bool:
    """Mark the armed wallet fired (one more crossing); False when another
    worker fired it first."""
    fired = conn.execute(
        update(balance_alerts)
        .where(balance_alerts.c.wallet_id == wallet_id, balance_alerts.c.below.is_(False))
        .values(below=True, crossings=balance_alerts.c.crossings + 1, changed_at=now)
    )
    return fired.rowcount == 1

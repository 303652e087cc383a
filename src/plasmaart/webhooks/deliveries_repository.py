"""The SQL of webhook delivery: fanning events out into deliveries, leasing
due deliveries, recording each attempt, and the endpoints' health.

Events are written by ``outbox.webhooks`` (in their cause's transaction);
endpoints and the account secrets by the endpoints API. This module reads
both and writes ``webhook_deliveries``, ``webhook_attempts``, an
endpoint's ``failing_since`` and its disabling, and (when a user has none
yet) the account secret that signs deliveries to a per-generation URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    false,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
    webhook_secrets,
)

# -- fan-out -------------------------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    id: str
    user_id: str
    type: str
    webhook_url: str | None


@dataclass(frozen=True)
class Subscriber:
    """An enabled endpoint and the event types it wants."""

    id: str
    url: str
    events: tuple[str, ...]


def pending_event_ids(conn: Connection, *, limit: int) -> list[str]:
    """Events not fanned out yet, oldest first; rows another fan-out has
    locked are skipped on PostgreSQL (SQLite's write lock serialises)."""
    query = (
        select(webhook_events.c.id)
        .where(webhook_events.c.fanned_out_at.is_(None))
        .order_by(webhook_events.c.created_at, webhook_events.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [row.id for row in conn.execute(query)]


def take_event(conn: Connection, event_id: str, now: datetime) -> PendingEvent | None:
    """Mark the event fanned out; None if another fan-out took it first (the
    UPDATE is conditional: exactly one transaction fans each event out)."""
    row = conn.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event_id, webhook_events.c.fanned_out_at.is_(None))
        .values(fanned_out_at=now)
        .returning(
            webhook_events.c.id,
            webhook_events.c.user_id,
            webhook_events.c.type,
            webhook_events.c.webhook_url,
        )
    ).one_or_none()
    if row is None:
        return None
    return PendingEvent(row.id, row.user_id, row.type, row.webhook_url)


def _event_list(raw: str) -> tuple[str, ...]:
    try:
        found = json.loads(raw)
    except ValueError:
        return ()
    if not isinstance(found, list):
        return ()
    return tuple(item for item in found if isinstance(item, str))


def subscribers(conn: Connection, user_id: str) -> list[Subscriber]:
    """The user's enabled endpoints, oldest first."""
    rows = conn.execute(
        select(webhook_endpoints.c.id, webhook_endpoints.c.url, webhook_endpoints.c.events)
        .where(webhook_endpoints.c.user_id == user_id, webhook_endpoints.c.enabled == true())
        .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
    )
    return [Subscriber(row.id, row.url, _event_list(row.events)) for row in rows]


def insert_deliveries(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert pending deliveries (``id``, ``event_id``, ``endpoint_id``,
    ``url``, ``next_attempt_at``, ``created_at``)."""
    if rows:
        conn.execute(insert(webhook_deliveries), [{"status": "pending", **row} for row in rows])


# -- leasing deliveries ------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A leased delivery with everything its attempt needs."""

    id: str
    event_id: str
    endpoint_id: str | None
    url: str
    attempts: int  # counting the one this lease is for
    payload: str
    user_id: str
    event_type: str
    # The endpoint as it is now (None for a per-request URL).
    endpoint_enabled: bool | None
    secret: str | None
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


def _unleased(now: datetime) -> Any:
    return or_(
        webhook_deliveries.c.claim_expires_at.is_(None),
        webhook_deliveries.c.claim_expires_at <= now,
    )


@dataclass(frozen=True)
class Due:
    id: str
    # Where it goes: its endpoint, or its URL when it has none.
    destination: str


def due_deliveries(conn: Connection, now: datetime, *, limit: int) -> list[Due]:
    """Pending deliveries due by ``now`` and not leased by a live worker,
    the longest waiting first (locked rows skipped on PostgreSQL)."""
    query = (
        select(
            webhook_deliveries.c.id,
            func.coalesce(webhook_deliveries.c.endpoint_id, webhook_deliveries.c.url).label(
                "destination"
            ),
        )
        .where(
            webhook_deliveries.c.status == "pending",
            webhook_deliveries.c.next_attempt_at <= now,
            _unleased(now),
        )
        .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [Due(row.id, row.destination) for row in conn.execute(query)]


def take_delivery(
    conn: Connection, delivery_id: str, worker_id: str, *, now: datetime, lease: timedelta
) -> Delivery | None:
    """Lease the delivery to ``worker_id``, counting an attempt; None when it
    ended or was leased meanwhile (a conditional UPDATE)."""
    taken = conn.execute(
        update(webhook_deliveries)
        .where(
            webhook_deliveries.c.id == delivery_id,
            webhook_deliveries.c.status == "pending",
            _unleased(now),
        )
        .values(
            claimed_by=worker_id,
            claim_expires_at=now + lease,
            attempts=webhook_deliveries.c.attempts + 1,
        )
    )
    if taken.rowcount != 1:
        return None
    row = conn.execute(
        select(
            webhook_deliveries.c.id,
            webhook_deliveries.c.event_id,
            webhook_deliveries.c.endpoint_id,
            # An endpoint's deliveries go where it is now (its URL may change).
            func.coalesce(webhook_endpoints.c.url, webhook_deliveries.c.url).label("url"),
            webhook_deliveries.c.attempts,
            webhook_events.c.payload,
            webhook_events.c.user_id,
            webhook_events.c.type,
            webhook_endpoints.c.enabled,
            webhook_endpoints.c.secret,
            webhook_endpoints.c.previous_secret,
            webhook_endpoints.c.previous_secret_expires_at,
        )
        .select_from(
            webhook_deliveries.join(
                webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id
            ).outerjoin(
                webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id
            )
        )
        .where(webhook_deliveries.c.id == delivery_id)
    ).one()
    expires = row.previous_secret_expires_at
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        url=row.url,
        attempts=int(row.attempts),
        payload=row.payload,
        user_id=row.user_id,
        event_type=row.type,
        endpoint_enabled=None if row.enabled is None else bool(row.enabled),
        secret=row.secret,
        previous_secret=row.previous_secret,
        previous_secret_expires_at=None if expires is None else as_utc(expires),
    )


def account_secret(conn: Connection, user_id: str, fresh: str, now: datetime) -> str:
    """The user's account webhook secret, created as ``fresh`` if they have
    none yet (INSERT … ON CONFLICT DO NOTHING, then read: two creators agree)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(webhook_secrets)
        .values(user_id=user_id, secret=fresh, created_at=now)
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    secret: str = conn.execute(
        select(webhook_secrets.c.secret).where(webhook_secrets.c.user_id == user_id)
    ).scalar_one()
    return secret


# -- the outcome of an attempt ------------------------------------------------------


def delivery_exists(conn: Connection, delivery_id: str) -> bool:
    """Whether the delivery is still there (deleting an endpoint deletes its log)."""
    found = conn.execute(
        select(webhook_deliveries.c.id).where(webhook_deliveries.c.id == delivery_id)
    ).first()
    return found is not None


def insert_attempt(
    conn: Connection,
    delivery_id: str,
    *,
    attempted_at: datetime,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
) -> None:
    conn.execute(
        insert(webhook_attempts).values(
            delivery_id=delivery_id,
            attempted_at=attempted_at,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
        )
    )


def settle(
    conn: Connection,
    delivery_id: str,
    worker_id: str,
    *,
    now: datetime,
    status: str,
    next_attempt_at: datetime | None,
    status_code: int | None,
    error: str | None,
) -> bool:
    """Record an attempt's outcome on the delivery and end the lease:
    ``succeeded``, ``failed`` (given up), or ``pending`` again at
    ``next_attempt_at``. False (nothing written) when the lease was lost."""
    values: dict[str, Any] = {
        "status": status,
        "claimed_by": None,
        "claim_expires_at": None,
        "last_status_code": status_code,
        "last_error": error,
    }
    if status == "succeeded":
        values["delivered_at"] = now
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    done = conn.execute(
        update(webhook_deliveries)
        .where(
            webhook_deliveries.c.id == delivery_id,
            webhook_deliveries.c.status == "pending",
            webhook_deliveries.c.claimed_by == worker_id,
            webhook_deliveries.c.claim_expires_at > now,
        )
        .values(**values)
    )
    return done.rowcount == 1


# -- the endpoints' health ------------------------------------------------------------


@dataclass(frozen=True)
class DisabledEndpoint:
    id: str
    user_id: str
    url: str
    failing_since: datetime


def endpoint_succeeded(conn: Connection, endpoint_id: str) -> None:
    """A delivery got through: the endpoint is not failing any more. (An
    UPDATE of the row whatever it holds: it locks the endpoint, see
    ``endpoint_failing``.)"""
    conn.execute(
        update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id)
        .values(failing_since=None)
    )


def endpoint_failing(conn: Connection, endpoint_id: str, *, now: datetime) -> None:
    """An attempt failed: the endpoint is failing since now unless it was
    already. The UPDATE always matches the row, so it locks the endpoint
    until the transaction ends: an outcome locks its endpoint before its
    delivery, and two outcomes of one endpoint (one of which may disable it
    and stop the other's delivery) wait for each other instead of deadlocking."""
    conn.execute(
        update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id)
        .values(failing_since=func.coalesce(webhook_endpoints.c.failing_since, now))
    )


def disable_if_failing(
    conn: Connection, endpoint_id: str, *, now: datetime, failing_for: timedelta, reason: str
) -> DisabledEndpoint | None:
    """Disable the endpoint if it has failed for ``failing_for`` (once: the
    UPDATE is conditional); the endpoint just disabled, or None."""
    row = conn.execute(
        update(webhook_endpoints)
        .where(
            webhook_endpoints.c.id == endpoint_id,
            webhook_endpoints.c.enabled == true(),
            webhook_endpoints.c.failing_since <= now - failing_for,
        )
        .values(enabled=false(), disabled_at=now, disabled_reason=reason, updated_at=now)
        .returning(
            webhook_endpoints.c.id,
            webhook_endpoints.c.user_id,
            webhook_endpoints.c.url,
            webhook_endpoints.c.failing_since,
        )
    ).one_or_none()
    if row is None:
        return None
    return DisabledEndpoint(row.id, row.user_id, row.url, as_utc(row.failing_since))


def stop_deliveries(conn: Connection, endpoint_id: str, *, reason: str) -> int:
    """End every pending delivery of a disabled endpoint as failed (a worker
    holding one loses its lease); how many."""
    done = conn.execute(
        update(webhook_deliveries)
        .where(
            and_(
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.status == "pending",
            )
        )
        .values(status="failed", last_error=reason, claimed_by=None, claim_expires_at=None)
    )
    return int(done.rowcount)

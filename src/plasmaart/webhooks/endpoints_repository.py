"""Webhook endpoints' SQL: the endpoints a user registered, the account's own
secret, and the reads of the delivery log (``webhook_deliveries`` and
``webhook_attempts``, written by the dispatcher) that the endpoint pages show.

Rows come back as the frozen ``Endpoint``, ``Delivery`` and ``Attempt``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
    webhook_secrets,
)


@dataclass(frozen=True)
class Endpoint:
    id: str
    user_id: str
    url: str
    events: tuple[str, ...]
    description: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to an endpoint, with the event's type."""

    id: str
    event_id: str
    type: str
    endpoint_id: str | None
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class Attempt:
    id: int
    delivery_id: str
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        user_id=row.user_id,
        url=row.url,
        events=tuple(json.loads(row.events)),
        description=row.description,
        secret=row.secret,
        previous_secret=row.previous_secret,
        previous_secret_expires_at=_maybe_utc(row.previous_secret_expires_at),
        enabled=bool(row.enabled),
        disabled_at=_maybe_utc(row.disabled_at),
        disabled_reason=row.disabled_reason,
        failing_since=_maybe_utc(row.failing_since),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def insert_endpoint(
    conn: Connection,
    *,
    endpoint_id: str,
    user_id: str,
    url: str,
    events: Sequence[str],
    description: str,
    secret: str,
    now: datetime,
) -> Endpoint:
    conn.execute(
        insert(webhook_endpoints).values(
            id=endpoint_id,
            user_id=user_id,
            url=url,
            events=json.dumps(list(events)),
            description=description,
            secret=secret,
            enabled=True,
            created_at=now,
            updated_at=now,
        )
    )
    found = endpoint_of(conn, user_id, endpoint_id)
    if found is None:
        raise LookupError(f"webhook endpoint {endpoint_id} vanished as it was inserted")
    return found


def endpoints_of(conn: Connection, user_id: str) -> list[Endpoint]:
    """The user's endpoints, oldest first."""
    rows = conn.execute(
        select(webhook_endpoints)
        .where(webhook_endpoints.c.user_id == user_id)
        .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
    )
    return [_endpoint(row) for row in rows]


def count_endpoints(conn: Connection, user_id: str) -> int:
    statement = select(func.count()).where(webhook_endpoints.c.user_id == user_id)
    return int(conn.execute(statement).scalar_one())


def endpoint_of(conn: Connection, user_id: str, endpoint_id: str) -> Endpoint | None:
    """The endpoint ``endpoint_id`` if it is ``user_id``'s."""
    row = conn.execute(
        select(webhook_endpoints).where(
            webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.user_id == user_id
        )
    ).first()
    return None if row is None else _endpoint(row)


def update_endpoint(conn: Connection, endpoint_id: str, now: datetime, **values: Any) -> None:
    """Set ``values`` (column names; ``events`` as a sequence) on the endpoint."""
    if "events" in values:
        values["events"] = json.dumps(list(values["events"]))
    conn.execute(
        update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id)
        .values(updated_at=now, **values)
    )


def _deliveries_of_endpoints(endpoint_ids: Any) -> Any:
    return select(webhook_deliveries.c.id).where(webhook_deliveries.c.endpoint_id.in_(endpoint_ids))


def delete_endpoint(conn: Connection, endpoint_id: str) -> None:
    """Delete the endpoint with its delivery log (its deliveries and their attempts)."""
    ids = [endpoint_id]
    conn.execute(
        delete(webhook_attempts).where(
            webhook_attempts.c.delivery_id.in_(_deliveries_of_endpoints(ids))
        )
    )
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id))
    conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id))


# --- the delivery log ---

_DELIVERY_COLUMNS = (
    webhook_deliveries.c.id,
    webhook_deliveries.c.event_id,
    webhook_events.c.type,
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.url,
    webhook_deliveries.c.status,
    webhook_deliveries.c.attempts,
    webhook_deliveries.c.next_attempt_at,
    webhook_deliveries.c.last_status_code,
    webhook_deliveries.c.last_error,
    webhook_deliveries.c.created_at,
    webhook_deliveries.c.delivered_at,
)
_DELIVERIES = webhook_deliveries.join(
    webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id
)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        type=row.type,
        endpoint_id=row.endpoint_id,
        url=row.url,
        status=row.status,
        attempts=int(row.attempts),
        next_attempt_at=as_utc(row.next_attempt_at),
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=as_utc(row.created_at),
        delivered_at=_maybe_utc(row.delivered_at),
    )


def deliveries_page(
    conn: Connection, endpoint_id: str, *, limit: int, before: tuple[datetime, str] | None
) -> list[Delivery]:
    """Up to ``limit`` deliveries to the endpoint, newest first, after the
    position ``before`` (the ``(created_at, id)`` of the last one served)."""
    statement = select(*_DELIVERY_COLUMNS).select_from(_DELIVERIES)
    statement = statement.where(webhook_deliveries.c.endpoint_id == endpoint_id)
    if before is not None:
        created_at, delivery_id = before
        statement = statement.where(
            or_(
                webhook_deliveries.c.created_at < created_at,
                and_(
                    webhook_deliveries.c.created_at == created_at,
                    webhook_deliveries.c.id < delivery_id,
                ),
            )
        )
    statement = statement.order_by(
        webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.id.desc()
    ).limit(limit)
    return [_delivery(row) for row in conn.execute(statement)]


def delivery_of(conn: Connection, endpoint_id: str, delivery_id: str) -> Delivery | None:
    row = conn.execute(
        select(*_DELIVERY_COLUMNS)
        .select_from(_DELIVERIES)
        .where(
            webhook_deliveries.c.id == delivery_id,
            webhook_deliveries.c.endpoint_id == endpoint_id,
        )
    ).first()
    return None if row is None else _delivery(row)


def attempts_of(conn: Connection, delivery_ids: Sequence[str]) -> list[Attempt]:
    """Every attempt of these deliveries, in the order they were made."""
    if not delivery_ids:
        return []
    rows = conn.execute(
        select(webhook_attempts)
        .where(webhook_attempts.c.delivery_id.in_(list(delivery_ids)))
        .order_by(webhook_attempts.c.delivery_id, webhook_attempts.c.id)
    )
    return [
        Attempt(
            id=int(row.id),
            delivery_id=row.delivery_id,
            attempted_at=as_utc(row.attempted_at),
            status_code=row.status_code,
            error=row.error,
            duration_ms=int(row.duration_ms),
        )
        for row in rows
    ]


def insert_delivery(
    conn: Connection, *, delivery_id: str, event_id: str, endpoint_id: str, url: str, now: datetime
) -> None:
    """A new pending delivery of ``event_id`` to the endpoint, due now."""
    conn.execute(
        insert(webhook_deliveries).values(
            id=delivery_id,
            event_id=event_id,
            endpoint_id=endpoint_id,
            url=url,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


# --- the account's own secret ---


def account_secret(conn: Connection, user_id: str) -> str | None:
    statement = select(webhook_secrets.c.secret).where(webhook_secrets.c.user_id == user_id)
    found = conn.execute(statement).scalar_one_or_none()
    return None if found is None else str(found)


def insert_account_secret(conn: Connection, user_id: str, secret: str, now: datetime) -> str:
    """Store ``secret`` as the user's unless they have one already; the one kept."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(webhook_secrets)
        .values(user_id=user_id, secret=secret, created_at=now)
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    kept = account_secret(conn, user_id)
    if kept is None:
        raise LookupError(f"the webhook secret of {user_id} vanished as it was inserted")
    return kept


def replace_account_secret(conn: Connection, user_id: str, secret: str, now: datetime) -> None:
    conn.execute(delete(webhook_secrets).where(webhook_secrets.c.user_id == user_id))
    conn.execute(insert(webhook_secrets).values(user_id=user_id, secret=secret, created_at=now))

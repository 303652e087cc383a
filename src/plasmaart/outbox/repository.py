"""The outboxes' writes: a notice, or a webhook event, inserted unless its
cause already queued one; and whether a webhook event would be heard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, exists, select, true
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.db.tables import notification_outbox, webhook_endpoints, webhook_events


def insert_message(
    conn: Connection,
    *,
    message_id: str,
    cause_key: str,
    user_id: str | None,
    kind: str,
    title: str,
    body: str,
    data: str,
    now: datetime,
    to_address: str | None = None,
    in_app: bool = True,
    sensitive: bool = False,
) -> bool:
    """Insert a message due now; False (and nothing written) when a message
    with this ``cause_key`` exists."""
    return _insert_once(
        conn,
        notification_outbox,
        id=message_id,
        cause_key=cause_key,
        user_id=user_id,
        kind=kind,
        title=title,
        body=body,
        data=data,
        to_address=to_address,
        in_app=in_app,
        sensitive=sensitive,
        created_at=now,
        next_attempt_at=now,
    )


def insert_webhook_event(
    conn: Connection,
    *,
    event_id: str,
    cause_key: str,
    user_id: str,
    type: str,
    payload: str,
    webhook_url: str | None,
    now: datetime,
) -> bool:
    """Insert a webhook event; False (and nothing written) when an event
    with this ``cause_key`` exists."""
    return _insert_once(
        conn,
        webhook_events,
        id=event_id,
        cause_key=cause_key,
        user_id=user_id,
        type=type,
        payload=payload,
        webhook_url=webhook_url,
        created_at=now,
    )


def _insert_once(conn: Connection, table: Table, **values: Any) -> bool:
    """Insert a row into ``table`` (an outbox: unique ``cause_key``, id
    ``id``) unless one of its cause exists; whether it was written."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["cause_key"])
        # rowcount is not reliable for this statement under psycopg.
        .returning(table.c.id)
    )
    return conn.execute(statement).first() is not None


def webhook_subscribed(user_id: Any, type: str) -> ColumnElement[bool]:
    """Whether ``user_id`` (a value or a column) has an enabled endpoint whose
    ``events`` (a JSON list of strings) names ``type``: an SQL expression, so
    that a statement the cause sends anyway can carry it (``generation``'s
    end of a job asks it in its UPDATE's RETURNING)."""
    return exists(
        select(webhook_endpoints.c.id).where(
            webhook_endpoints.c.user_id == user_id,
            webhook_endpoints.c.enabled == true(),
            webhook_endpoints.c.events.contains(f'"{type}"', autoescape=True),
        )
    )


def webhook_wanted(conn: Connection, user_id: str, type: str) -> bool:
    """Whether an event ``type`` of ``user_id`` would reach an endpoint now."""
    return bool(conn.execute(select(webhook_subscribed(user_id, type))).scalar())

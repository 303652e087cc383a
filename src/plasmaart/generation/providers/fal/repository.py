"""All SQL of fal's webhooks: the record of each delivery (``fal_webhooks``),
and the generation a fal request id belongs to. Callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.db.tables import fal_webhooks, generations


@dataclass(frozen=True, slots=True)
class RequestedGeneration:
    """The generation a provider's request id belongs to, and its status."""

    id: str
    status: str


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """One delivery, as recorded (a row of ``fal_webhooks``)."""

    request_id: str
    generation_id: str | None
    result: str
    outcome: str
    received_at: datetime


def generation_of_request(
    conn: Connection, provider: str, request_id: str
) -> RequestedGeneration | None:
    row = conn.execute(
        select(generations.c.id, generations.c.status).where(
            generations.c.provider == provider,
            generations.c.provider_request_id == request_id,
        )
    ).first()
    return None if row is None else RequestedGeneration(str(row.id), str(row.status))


def insert_webhook(conn: Connection, record: WebhookRecord) -> bool:
    """Record a delivery; False (and nothing written) if one with its request
    id is recorded already. Two racing each other: the second waits for the
    first (the primary key) and then finds it, so neither fails."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(fal_webhooks)
        .values(
            request_id=record.request_id,
            generation_id=record.generation_id,
            result=record.result,
            outcome=record.outcome,
            received_at=record.received_at,
        )
        .on_conflict_do_nothing(index_elements=["request_id"])
        # rowcount is not reliable for this statement under psycopg.
        .returning(fal_webhooks.c.request_id)
    )
    return conn.execute(statement).first() is not None

"""The ``idempotency_records`` table: one record per (principal, key), from
the first request's claim (``running``) to its stored answer (``done``).
web/idempotency.py decides what a record means; the SQL is here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, delete, insert, select, update

from plasmaart.clock import as_utc
from plasmaart.db.tables import idempotency_records

RecordStatus = Literal["running", "done"]

_table = idempotency_records


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    headers: str  # JSON: a list of [name, value]
    body: bytes


@dataclass(frozen=True)
class IdempotencyRecord:
    path: str
    request_hash: str  # the request's fingerprint: path, query and body
    status: RecordStatus
    created_at: datetime
    answer: StoredAnswer | None  # once done


def find(conn: Connection, principal: str, key: str) -> IdempotencyRecord | None:
    row = conn.execute(
        select(_table).where(_table.c.principal == principal, _table.c.key == key)
    ).one_or_none()
    if row is None:
        return None
    return IdempotencyRecord(
        path=row.path,
        request_hash=row.request_hash,
        status=row.status,
        created_at=as_utc(row.created_at),
        answer=(
            None
            if row.status == "running"
            else StoredAnswer(
                status=int(row.response_status),
                headers=row.response_headers or "[]",
                body=bytes(row.response_body or b""),
            )
        ),
    )


def forget(conn: Connection, principal: str, key: str) -> None:
    conn.execute(delete(_table).where(_table.c.principal == principal, _table.c.key == key))


def claim(
    conn: Connection, principal: str, key: str, *, path: str, request_hash: str, now: datetime
) -> None:
    """A running record; IntegrityError if another request holds the key."""
    conn.execute(
        insert(_table).values(
            principal=principal,
            key=key,
            method="POST",
            path=path,
            request_hash=request_hash,
            status="running",
            created_at=now,
        )
    )


def store_answer(
    conn: Connection, principal: str, key: str, *, status: int, headers: str, body: bytes
) -> None:
    conn.execute(
        update(_table)
        .where(_table.c.principal == principal, _table.c.key == key)
        .values(status="done", response_status=status, response_headers=headers, response_body=body)
    )

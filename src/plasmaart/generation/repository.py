"""All SQL of generations: the jobs, their outputs, and the uploaded input
images (the claims and leases of the queue: ``queue_repository.py``).

Rows leave as typed named tuples (``GenerationRow``, ``OutputRow``,
``UploadRow``): one per table, their fields the table's columns in order, so
that a row of ``select(table)`` becomes one with no copy by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Integer,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from plasmaart.db.tables import generation_outputs, generations, uploads, wallets
from plasmaart.outbox.repository import webhook_subscribed


class GenerationRow(NamedTuple):
    """A row of ``generations``, as stored."""

    id: str
    user_id: str
    wallet_id: str
    team_id: str | None
    model: str
    kind: str
    prompt: str
    num_outputs: int
    params: str  # JSON
    sandbox: str  # JSON
    upload_id: str | None
    image_url: str | None
    credits_per_output: int
    credits_held: int
    credits_charged: int
    hold_id: str
    balance_after: int
    status: str
    queue_class: str
    video: bool
    license: str
    watermark: bool
    enqueued_at: datetime
    virtual_start: datetime
    provider: str
    provider_request_id: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    deadline_at: datetime | None
    fencing_token: int
    attempts: int
    next_attempt_at: datetime | None
    cancel_requested: bool
    error_code: str | None
    error_message: str | None
    idempotency_key: str | None
    created_at: datetime
    api_key_id: str | None
    webhook_url: str | None
    started_at: datetime | None
    finished_at: datetime | None


class OutputRow(NamedTuple):
    """A row of ``generation_outputs``: one file a job stored."""

    id: str
    generation_id: str
    position: int
    storage_key: str
    content_type: str
    width: int | None
    height: int | None
    duration_s: float | None
    size: int
    watermarked: bool
    license: str
    created_at: datetime


class UploadRow(NamedTuple):
    """A row of ``uploads``: an input image a user uploaded."""

    id: str
    user_id: str
    storage_key: str
    content_type: str
    width: int
    height: int
    size: int
    sha256: str
    created_at: datetime


def _same_columns(row_type: type[tuple[Any, ...]], table: Table) -> None:
    fields: tuple[str, ...] = getattr(row_type, "_fields", ())
    if fields != tuple(table.c.keys()):  # pragma: no cover - caught at import by any test
        raise RuntimeError(f"{row_type.__name__} does not list the columns of {table.name}")


_same_columns(GenerationRow, generations)
_same_columns(OutputRow, generation_outputs)
_same_columns(UploadRow, uploads)


def by_idempotency_key(conn: Connection, user_id: str, key: str) -> str | None:
    return conn.execute(
        select(generations.c.id).where(
            generations.c.user_id == user_id, generations.c.idempotency_key == key
        )
    ).scalar_one_or_none()


# Built once: the read step of every submission runs them (building a
# statement and its cache key costs more than SQLite running it).
_COUNT_QUEUED = (
    select(func.count())
    .select_from(generations)
    .where(
        generations.c.wallet_id == bindparam("wallet_id"),
        generations.c.status == "queued",
    )
)


def count_queued(conn: Connection, wallet_id: str) -> int:
    return int(conn.execute(_COUNT_QUEUED, {"wallet_id": wallet_id}).scalar_one())


# The wallet's queued jobs and its owner's monthly spend limit, in the one
# statement the read step already sent for the first.
_QUEUED_AND_LIMIT = select(_COUNT_QUEUED.scalar_subquery(), wallets.c.monthly_spend_limit).where(
    wallets.c.id == bindparam("wallet_id")
)


def queued_and_limit(conn: Connection, wallet_id: str) -> tuple[int, int | None]:
    """How many of the wallet's jobs are queued, and its monthly spend limit
    (None: none)."""
    queued, limit = conn.execute(_QUEUED_AND_LIMIT, {"wallet_id": wallet_id}).one()
    return int(queued), None if limit is None else int(limit)


def queued_of_user(conn: Connection, user_id: str) -> list[str]:
    return list(
        conn.execute(
            select(generations.c.id).where(
                generations.c.user_id == user_id, generations.c.status == "queued"
            )
        ).scalars()
    )


# The columns a submission writes, in the order of the guarded INSERT below.
SUBMITTED_COLUMNS = (
    "id",
    "user_id",
    "wallet_id",
    "team_id",
    "model",
    "kind",
    "prompt",
    "num_outputs",
    "params",
    "sandbox",
    "upload_id",
    "image_url",
    "credits_per_output",
    "credits_held",
    "credits_charged",
    "hold_id",
    "balance_after",
    "status",
    "queue_class",
    "video",
    "license",
    "watermark",
    "enqueued_at",
    "virtual_start",
    "provider",
    "idempotency_key",
    "created_at",
    "webhook_url",
    "api_key_id",
)
# Built once (SQLAlchemy then compiles it once per dialect): the job's values
# as parameters, written only while the wallet's queued jobs are fewer than
# ``max_queued``.
_INSERT_QUEUED_WITHIN = (
    insert(generations)
    .from_select(
        SUBMITTED_COLUMNS,
        select(
            *(bindparam(f"v_{name}", type_=generations.c[name].type) for name in SUBMITTED_COLUMNS)
        ).where(
            select(func.count())
            .select_from(generations)
            .where(
                generations.c.wallet_id == bindparam("v_wallet_id"),
                generations.c.status == "queued",
            )
            .scalar_subquery()
            < bindparam("max_queued", type_=Integer)
        ),
    )
    .returning(generations.c.id)
)


def insert_queued_within(conn: Connection, values: dict[str, Any], max_queued: int) -> bool:
    """INSERT the queued job ``values`` (every one of ``SUBMITTED_COLUMNS``)
    only while its wallet has fewer than ``max_queued`` queued jobs: the cap
    checked and the job written in one guarded statement. False (nothing
    written) when the queue is full.

    Run after the hold, which locks the wallet (PostgreSQL; SQLite's write
    transactions are serial): every submission on the wallet then passes here
    one at a time, and this statement's count sees the jobs of those before."""
    if values.keys() != set(SUBMITTED_COLUMNS):
        raise ValueError(f"a submission writes exactly {SUBMITTED_COLUMNS}")
    params: dict[str, Any] = {f"v_{name}": values[name] for name in SUBMITTED_COLUMNS}
    params["max_queued"] = max_queued
    return conn.execute(_INSERT_QUEUED_WITHIN, params).first() is not None


def get_generation(conn: Connection, generation_id: str) -> GenerationRow | None:
    row = conn.execute(select(generations).where(generations.c.id == generation_id)).one_or_none()
    return None if row is None else GenerationRow._make(row)


def lock_generation(conn: Connection, generation_id: str) -> GenerationRow | None:
    row = conn.execute(
        select(generations).where(generations.c.id == generation_id).with_for_update()
    ).one_or_none()
    return None if row is None else GenerationRow._make(row)


class Finished(NamedTuple):
    """A job just ended (``finish``), and whether its submitter has an
    enabled webhook endpoint subscribed to the event of its end."""

    row: GenerationRow
    webhook_wanted: bool


def finish(
    conn: Connection,
    generation_id: str,
    *,
    status: str,
    charged: int,
    balance_after: int,
    now: datetime,
    error_code: str | None = None,
    error_message: str | None = None,
    provider_request_id: str | None = None,
    webhook_event: tuple[str, str] | None = None,
) -> Finished | None:
    """Move a job to a terminal state; only from queued or running (terminal
    states never change). The job as it is now, or None if it had ended.
    ``provider_request_id``: the provider's request id, if not stored yet.
    ``webhook_event``: (the submitter, the event of this end): the same
    statement asks whether an endpoint of theirs wants it (no statement more)."""
    values: dict[str, Any] = {
        "status": status,
        "credits_charged": charged,
        "balance_after": balance_after,
        "finished_at": now,
        "error_code": error_code,
        "error_message": error_message,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if provider_request_id is not None:
        values["provider_request_id"] = provider_request_id
    wanted = literal(False) if webhook_event is None else webhook_subscribed(*webhook_event)
    row = conn.execute(
        update(generations)
        .where(generations.c.id == generation_id, generations.c.status.in_(("queued", "running")))
        .values(**values)
        .returning(*generations.c, wanted.label("webhook_wanted"))
    ).one_or_none()
    if row is None:
        return None
    return Finished(GenerationRow._make(row[:-1]), bool(row[-1]))


def request_cancel(conn: Connection, generation_id: str) -> None:
    conn.execute(
        update(generations).where(generations.c.id == generation_id).values(cancel_requested=True)
    )


def list_ids(
    conn: Connection,
    user_id: str,
    team_ids: list[str],
    *,
    limit: int,
    before: str | None,
    status: str | None,
    model: str | None,
    personal: bool,
) -> list[str]:
    """Newest first (ids are time-ordered): the user's own generations, and
    those of the given teams."""
    whose = []
    if personal:
        whose.append(and_(generations.c.user_id == user_id, generations.c.team_id.is_(None)))
    if team_ids:
        whose.append(generations.c.team_id.in_(team_ids))
    if not whose:
        return []
    query = select(generations.c.id).where(or_(*whose))
    if before is not None:
        query = query.where(generations.c.id < before)
    if status is not None:
        query = query.where(generations.c.status == status)
    if model is not None:
        query = query.where(generations.c.model == model)
    return list(conn.execute(query.order_by(generations.c.id.desc()).limit(limit)).scalars())


def upload_of(conn: Connection, user_id: str, upload_id: str) -> bool:
    return (
        conn.execute(
            select(uploads.c.id).where(uploads.c.id == upload_id, uploads.c.user_id == user_id)
        ).scalar_one_or_none()
        is not None
    )


def outputs_of(conn: Connection, generation_id: str) -> list[OutputRow]:
    """The outputs a job stored, by position."""
    return [
        OutputRow._make(row)
        for row in conn.execute(
            select(generation_outputs)
            .where(generation_outputs.c.generation_id == generation_id)
            .order_by(generation_outputs.c.position)
        )
    ]


def get_output(conn: Connection, output_id: str) -> OutputRow | None:
    """One output by its id (its job: ``generation_id``)."""
    row = conn.execute(
        select(generation_outputs).where(generation_outputs.c.id == output_id)
    ).one_or_none()
    return None if row is None else OutputRow._make(row)


def output_positions(conn: Connection, generation_id: str) -> set[int]:
    """The positions of the outputs already in our storage (a job stores each
    as it arrives, so a job resumed after a crash fetches only the rest)."""
    return {
        int(position)
        for position in conn.execute(
            select(generation_outputs.c.position).where(
                generation_outputs.c.generation_id == generation_id
            )
        ).scalars()
    }


def insert_outputs(conn: Connection, rows: Iterable[OutputRow]) -> None:
    """Outputs of a job, in one statement (``executemany``)."""
    values = [row._asdict() for row in rows]
    if values:
        conn.execute(insert(generation_outputs), values)


def insert_upload(conn: Connection, upload: UploadRow) -> None:
    conn.execute(insert(uploads).values(upload._asdict()))


def get_upload(conn: Connection, upload_id: str) -> UploadRow | None:
    row = conn.execute(select(uploads).where(uploads.c.id == upload_id)).one_or_none()
    return None if row is None else UploadRow._make(row)


def queue_position(conn: Connection, row: GenerationRow) -> int:
    """1 + the queued jobs ahead of this one in queue order."""
    return position_at(conn, row.virtual_start, row.id)


def position_at(conn: Connection, start: datetime, generation_id: str) -> int:
    """1 + the queued jobs ahead of a job at ``(start, generation_id)`` in
    queue order (the job itself need not be written yet)."""
    ahead = conn.execute(_AHEAD, {"start": start, "generation_id": generation_id}).scalar_one()
    return int(ahead) + 1


_START = bindparam("start", type_=generations.c.virtual_start.type)
_AHEAD = (
    select(func.count())
    .select_from(generations)
    .where(
        generations.c.status == "queued",
        or_(
            generations.c.virtual_start < _START,
            and_(
                generations.c.virtual_start == _START,
                generations.c.id < bindparam("generation_id"),
            ),
        ),
    )
)

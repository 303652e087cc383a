"""All SQL of generations: the jobs, their outputs, and the queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, func, insert, or_, select, update

from plasmaart.db.tables import generation_outputs, generations, uploads

AnyRow = Row[*tuple[Any, ...]]


def by_idempotency_key(conn: Connection, user_id: str, key: str) -> str | None:
    return conn.execute(
        select(generations.c.id).where(
            generations.c.user_id == user_id, generations.c.idempotency_key == key
        )
    ).scalar_one_or_none()


def count_queued(conn: Connection, wallet_id: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(generations)
            .where(generations.c.wallet_id == wallet_id, generations.c.status == "queued")
        ).scalar_one()
    )


def queued_of_user(conn: Connection, user_id: str) -> list[str]:
    return list(
        conn.execute(
            select(generations.c.id).where(
                generations.c.user_id == user_id, generations.c.status == "queued"
            )
        ).scalars()
    )


def insert_generation(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(generations).values(**values))


def get_generation(conn: Connection, generation_id: str) -> AnyRow | None:
    return conn.execute(select(generations).where(generations.c.id == generation_id)).one_or_none()


def lock_generation(conn: Connection, generation_id: str) -> AnyRow | None:
    return conn.execute(
        select(generations).where(generations.c.id == generation_id).with_for_update()
    ).one_or_none()


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
) -> AnyRow | None:
    """Move a job to a terminal state; only from queued or running (terminal
    states never change). The job as it is now, or None if it had ended.
    ``provider_request_id``: the provider's request id, if not stored yet."""
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
    return conn.execute(
        update(generations)
        .where(generations.c.id == generation_id, generations.c.status.in_(("queued", "running")))
        .values(**values)
        .returning(*generations.c)
    ).one_or_none()


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


def member_spend(conn: Connection, team_id: str, user_id: str, since: datetime) -> int:
    """Credits a member spent (charged, or still held) in the team since ``since``."""
    spent = conn.execute(
        select(
            func.coalesce(
                func.sum(
                    func.coalesce(
                        func.nullif(generations.c.credits_charged, 0),
                        generations.c.credits_held,
                    )
                ),
                0,
            )
        ).where(
            generations.c.team_id == team_id,
            generations.c.user_id == user_id,
            generations.c.created_at >= since,
            generations.c.status.in_(("queued", "running", "succeeded")),
        )
    ).scalar_one()
    return int(spent)


def outputs_of(conn: Connection, generation_id: str) -> list[AnyRow]:
    return list(
        conn.execute(
            select(generation_outputs)
            .where(generation_outputs.c.generation_id == generation_id)
            .order_by(generation_outputs.c.position)
        ).all()
    )


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


def insert_output(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(generation_outputs).values(**values))


def insert_outputs(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Several outputs of a job in one statement (``executemany``)."""
    if rows:
        conn.execute(insert(generation_outputs), rows)


def queue_position(conn: Connection, row: AnyRow) -> int:
    """1 + the queued jobs ahead of this one in queue order."""
    ahead = conn.execute(
        select(func.count())
        .select_from(generations)
        .where(
            generations.c.status == "queued",
            or_(
                generations.c.virtual_start < row.virtual_start,
                and_(
                    generations.c.virtual_start == row.virtual_start,
                    generations.c.id < row.id,
                ),
            ),
        )
    ).scalar_one()
    return int(ahead) + 1

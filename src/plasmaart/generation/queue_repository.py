"""All SQL of the queue's claims and leases (the rules that pick the jobs:
``scheduling.py``; a claim from start to end: ``queue.py``).

A claim reads the head of the queue (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent workers never block on or take the same row; the
write lock of ``BEGIN IMMEDIATE`` on SQLite) and marks the chosen jobs
running with a lease and a new fencing token, in one ``UPDATE … RETURNING``.
Every later write of the worker is conditional on that token, so a worker
whose lease expired (and whose job another worker took over) can no longer
change it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, and_, case, func, or_, select, update

from plasmaart.db.tables import generations
from plasmaart.generation.repository import GenerationRow
from plasmaart.generation.scheduling import Running

# How far down the queue one claim looks for a job whose wallet is under its caps.
CLAIM_WINDOW = 64


class Candidate(NamedTuple):
    """A job a claim may take: queued, or running under an expired lease."""

    id: str
    wallet_id: str
    queue_class: str
    enqueued_at: datetime
    video: bool
    status: str
    kind: str
    deadline_at: datetime | None


_g = generations
_CANDIDATE_COLUMNS = [_g.c[name] for name in Candidate._fields]


def candidates(conn: Connection, now: datetime) -> list[Candidate]:
    """The head of the queue, locked: jobs whose worker died (lease expired
    before ``now``) first, as they are already under way, then queue order."""
    expired = and_(_g.c.status == "running", _g.c.lease_expires_at < now)
    return [
        Candidate._make(row)
        for row in conn.execute(
            select(*_CANDIDATE_COLUMNS)
            .where(or_(_g.c.status == "queued", expired))
            .order_by(
                (_g.c.status == "queued").asc(), _g.c.virtual_start, _g.c.enqueued_at, _g.c.id
            )
            .limit(CLAIM_WINDOW)
            .with_for_update(skip_locked=True)
        )
    ]


def running_by_wallet(
    conn: Connection, wallets: Collection[str], now: datetime
) -> dict[str, Running]:
    """What each of ``wallets`` has running under a live lease."""
    rows = conn.execute(
        select(
            _g.c.wallet_id,
            func.count(),
            func.sum(case((_g.c.video, 1), else_=0)),
        )
        .where(_g.c.wallet_id.in_(wallets), _g.c.status == "running", _g.c.lease_expires_at >= now)
        .group_by(_g.c.wallet_id)
    ).all()
    return {row[0]: Running(int(row[1]), int(row[2] or 0)) for row in rows}


def mark_claimed(
    conn: Connection,
    ids: Sequence[str],
    *,
    worker_id: str,
    lease_until: datetime,
    started_at: datetime,
    deadlines: Mapping[str, datetime],
) -> dict[str, GenerationRow]:
    """Mark the jobs ``ids`` running for ``worker_id`` with a new fencing
    token and one more attempt, in one statement; the rows as they are then,
    by id. ``started_at`` and the ``deadlines`` (by id) are set only where
    none was set (a resumed job keeps its own)."""
    deadline = (
        func.coalesce(
            _g.c.deadline_at, case(dict(deadlines), value=_g.c.id, else_=_g.c.deadline_at)
        )
        if deadlines
        else _g.c.deadline_at
    )
    rows = conn.execute(
        update(_g)
        .where(_g.c.id.in_(ids))
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=lease_until,
            fencing_token=_g.c.fencing_token + 1,
            started_at=func.coalesce(_g.c.started_at, started_at),
            deadline_at=deadline,
            attempts=_g.c.attempts + 1,
        )
        .returning(*_g.c)
    )
    return {job.id: job for job in map(GenerationRow._make, rows)}


def lease_beyond(conn: Connection, beyond: datetime) -> bool:
    """Whether a running job's lease runs out after ``beyond``."""
    found = conn.execute(
        select(_g.c.id).where(_g.c.status == "running", _g.c.lease_expires_at > beyond).limit(1)
    ).first()
    return found is not None


def clamp_leases(conn: Connection, beyond: datetime, until: datetime) -> list[str]:
    """Move every running job's lease that runs out after ``beyond`` to
    ``until`` (its fencing token untouched); the ids of those moved."""
    return list(
        conn.execute(
            update(_g)
            .where(_g.c.status == "running", _g.c.lease_expires_at > beyond)
            .values(lease_expires_at=until)
            .returning(_g.c.id)
        ).scalars()
    )


def renew_many(conn: Connection, jobs: Sequence[tuple[str, int]], until: datetime) -> set[str]:
    """Extend the leases of ``jobs`` (id, fencing token) in one statement; the
    ids of those still ours."""
    if not jobs:
        return set()
    return set(
        conn.execute(
            update(_g)
            .where(
                or_(
                    *(
                        and_(_g.c.id == job_id, _g.c.fencing_token == token)
                        for job_id, token in jobs
                    )
                ),
                _g.c.status == "running",
            )
            .values(lease_expires_at=until)
            .returning(_g.c.id)
        ).scalars()
    )


def check_in(
    conn: Connection,
    generation_id: str,
    token: int,
    until: datetime,
    request_id: str | None = None,
) -> bool | None:
    """Between two polls, in one statement: the job is still ours (else
    None), its lease extended, the provider's ``request_id`` stored if given;
    whether its user asked to cancel it."""
    values: dict[str, object] = {"lease_expires_at": until}
    if request_id is not None:
        values["provider_request_id"] = request_id
    cancel = conn.execute(
        update(_g)
        .where(_g.c.id == generation_id, _g.c.fencing_token == token, _g.c.status == "running")
        .values(**values)
        .returning(_g.c.cancel_requested)
    ).scalar_one_or_none()
    return None if cancel is None else bool(cancel)


def hand_back(
    conn: Connection,
    generation_id: str,
    token: int,
    now: datetime,
    request_id: str | None = None,
) -> bool:
    """A worker stopping gracefully leaves its job (at the provider, whose
    ``request_id`` it stores if not stored yet) for whoever claims it next:
    its lease ends ``now``, so the next claim takes it at once (as a job
    whose worker is gone, resumed under a new fencing token), and a clean
    hand-over does not count as one of the job's attempts."""
    values: dict[str, object] = {"attempts": _g.c.attempts - 1, "lease_expires_at": now}
    if request_id is not None:
        values["provider_request_id"] = request_id
    result = conn.execute(
        update(_g)
        .where(
            _g.c.id == generation_id,
            _g.c.fencing_token == token,
            _g.c.status == "running",
            _g.c.attempts > 0,
        )
        .values(**values)
    )
    return bool(result.rowcount)


def lock_if_owned(conn: Connection, generation_id: str, token: int) -> GenerationRow | None:
    """The job's row, locked, if it is still ours (running under ``token``)."""
    row = conn.execute(select(_g).where(_g.c.id == generation_id).with_for_update()).one_or_none()
    if row is None:
        return None
    job = GenerationRow._make(row)
    if int(job.fencing_token) != token or job.status != "running":
        return None
    return job

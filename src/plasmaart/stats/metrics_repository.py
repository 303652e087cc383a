"""The queries behind the business metrics of ``/metrics`` (docs/deployment.md#monitoring).

Each one is read-only and bounded by an index, so that a scrape costs the
same on a young and on a large database:

- the journal is read incrementally, by its increasing ``id`` (primary key):
  ``journal_flow`` sums a range of ids, ``journal_ids`` and
  ``journal_entries_by_id`` find what a range is missing;
- live jobs and holds past their deadline go through ``ix_generations_queue``
  (``status`` first), which holds only the few queued and running jobs;
- recent jobs and payments are a primary-key range: their ids are
  time-ordered (``plasmaart.ids.first_id_at``);
- backlogs use the indexes their workers claim with
  (``ix_notification_outbox_due``, ``ix_webhook_events_pending``,
  ``ix_webhook_deliveries_due``, ``ix_topup_runs_status``);
- the last ledger verification is the newest row of ``ix_ledger_checks_finished``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select

from plasmaart.db.tables import (
    generations,
    holds,
    journal_entries,
    ledger_checks,
    notification_outbox,
    payments,
    topup_runs,
    webhook_deliveries,
    webhook_events,
)

_j = journal_entries
_g = generations
LIVE_STATES = ("queued", "running")


@dataclass(frozen=True)
class FlowPart:
    """Credits the journal moved between two accounts, by kind of entry."""

    kind: str
    from_account: str
    to_account: str
    credits: int
    entries: int


@dataclass(frozen=True)
class FlowRange:
    """The entries of an id range, summed: ``rows`` of them were found."""

    parts: tuple[FlowPart, ...]
    rows: int


def journal_top(conn: Connection) -> int:
    """The highest journal id written so far (0: none)."""
    top = conn.execute(select(func.max(_j.c.id))).scalar()
    return int(top or 0)


def journal_stamp(conn: Connection, entry_id: int) -> tuple[Any, ...] | None:
    """What identifies one entry (its wallet, kind, credits and time), to
    tell that the entry a cursor stopped at is still the same one."""
    row = conn.execute(
        select(_j.c.wallet_id, _j.c.kind, _j.c.credits, _j.c.created_at).where(_j.c.id == entry_id)
    ).one_or_none()
    return None if row is None else (row.wallet_id, row.kind, int(row.credits), row.created_at)


def journal_flow(conn: Connection, after: int, upto: int) -> FlowRange:
    """The entries with ``after < id <= upto``, summed by kind and accounts."""
    rows = conn.execute(
        select(
            _j.c.kind,
            _j.c.from_account,
            _j.c.to_account,
            func.sum(_j.c.credits).label("credits"),
            func.count().label("entries"),
        )
        .where(_j.c.id > after, _j.c.id <= upto)
        .group_by(_j.c.kind, _j.c.from_account, _j.c.to_account)
    ).all()
    parts = tuple(
        FlowPart(
            str(row.kind),
            str(row.from_account),
            str(row.to_account),
            int(row.credits),
            int(row.entries),
        )
        for row in rows
    )
    return FlowRange(parts, sum(part.entries for part in parts))


def journal_ids(conn: Connection, after: int, upto: int) -> list[int]:
    """The ids present in ``after < id <= upto`` (a short range: the tail)."""
    rows = conn.execute(select(_j.c.id).where(_j.c.id > after, _j.c.id <= upto))
    return [int(row.id) for row in rows]


def journal_entries_by_id(conn: Connection, ids: Collection[int]) -> dict[int, FlowPart]:
    """The entries among ``ids`` that exist now, each as a part of one entry."""
    if not ids:
        return {}
    rows = conn.execute(
        select(_j.c.id, _j.c.kind, _j.c.from_account, _j.c.to_account, _j.c.credits).where(
            _j.c.id.in_(list(ids))
        )
    )
    return {
        int(row.id): FlowPart(
            str(row.kind), str(row.from_account), str(row.to_account), int(row.credits), 1
        )
        for row in rows
    }


@dataclass(frozen=True)
class LiveJobs:
    state: str  # queued or running
    queue_class: str
    jobs: int
    oldest_enqueued_at: datetime


def live_jobs(conn: Connection) -> list[LiveJobs]:
    """Queued and running jobs by queue class, with the oldest enqueue time."""
    rows = conn.execute(
        select(
            _g.c.status,
            _g.c.queue_class,
            func.count().label("jobs"),
            func.min(_g.c.enqueued_at).label("oldest"),
        )
        .where(_g.c.status.in_(LIVE_STATES))
        .group_by(_g.c.status, _g.c.queue_class)
    )
    return [
        LiveJobs(str(row.status), str(row.queue_class), int(row.jobs), row.oldest) for row in rows
    ]


def holds_past_deadline(conn: Connection, cutoff: datetime) -> int:
    """Pending holds of live jobs whose deadline passed before ``cutoff``:
    generations that should have ended (and released or captured) by now."""
    count = conn.execute(
        select(func.count())
        .select_from(_g.join(holds, holds.c.id == _g.c.hold_id))
        .where(
            _g.c.status.in_(LIVE_STATES),
            _g.c.deadline_at < cutoff,
            holds.c.status == "pending",
        )
    ).scalar_one()
    return int(count)


@dataclass(frozen=True)
class RecentJob:
    model: str
    queue_class: str
    status: str
    error_code: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def recent_jobs(conn: Connection, *, first_id: str, since: datetime) -> list[RecentJob]:
    """Jobs made at ``first_id`` or later that started or finished at ``since`` or later."""
    rows = conn.execute(
        select(
            _g.c.model,
            _g.c.queue_class,
            _g.c.status,
            _g.c.error_code,
            _g.c.enqueued_at,
            _g.c.started_at,
            _g.c.finished_at,
        ).where(
            _g.c.id >= first_id,
            or_(_g.c.started_at >= since, _g.c.finished_at >= since),
        )
    )
    return [
        RecentJob(
            str(row.model),
            str(row.queue_class),
            str(row.status),
            row.error_code,
            row.enqueued_at,
            row.started_at,
            row.finished_at,
        )
        for row in rows
    ]


@dataclass(frozen=True)
class PaymentCount:
    kind: str
    status: str
    payments: int


def recent_payments(conn: Connection, *, first_id: str, since: datetime) -> list[PaymentCount]:
    """Payments made since ``since`` (ids from ``first_id``) by kind and outcome."""
    rows = conn.execute(
        select(payments.c.kind, payments.c.status, func.count().label("payments"))
        .where(payments.c.id >= first_id, payments.c.created_at >= since)
        .group_by(payments.c.kind, payments.c.status)
    )
    return [PaymentCount(str(row.kind), str(row.status), int(row.payments)) for row in rows]


@dataclass(frozen=True)
class Backlog:
    items: int
    oldest: datetime | None  # created_at of the oldest (None: empty)


def _backlog(conn: Connection, created_at: Any, waiting: Any) -> Backlog:
    row = conn.execute(
        select(func.count().label("items"), func.min(created_at).label("oldest")).where(waiting)
    ).one()
    return Backlog(int(row.items), row.oldest)


def outbox_backlog(conn: Connection) -> Backlog:
    """Notices and mails not delivered yet (retries included)."""
    o = notification_outbox
    return _backlog(conn, o.c.created_at, o.c.delivered_at.is_(None))


def webhook_fanout_backlog(conn: Connection) -> Backlog:
    """Webhook events not fanned out into deliveries yet."""
    e = webhook_events
    return _backlog(conn, e.c.created_at, e.c.fanned_out_at.is_(None))


def webhook_delivery_backlog(conn: Connection) -> Backlog:
    """Webhook deliveries still pending (first attempt or retries)."""
    d = webhook_deliveries
    return _backlog(conn, d.c.created_at, d.c.status == "pending")


def topup_backlog(conn: Connection) -> dict[str, Backlog]:
    """Auto top-up runs not finished: ``pending`` (to charge) and
    ``action_required`` (waiting for the customer), by status."""
    t = topup_runs
    rows = conn.execute(
        select(
            t.c.status,
            func.count().label("items"),
            func.min(t.c.created_at).label("oldest"),
        )
        .where(t.c.status.in_(("pending", "action_required")))
        .group_by(t.c.status)
    )
    return {str(row.status): Backlog(int(row.items), row.oldest) for row in rows}


@dataclass(frozen=True)
class LedgerCheck:
    id: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    problems: int
    summary: str
    checked_by: str


def latest_ledger_check(conn: Connection) -> LedgerCheck | None:
    """The newest run of the ledger verification (None: never run)."""
    c = ledger_checks
    row = conn.execute(
        select(c).order_by(c.c.finished_at.desc(), c.c.id.desc()).limit(1)
    ).one_or_none()
    if row is None:
        return None
    return LedgerCheck(
        str(row.id),
        row.started_at,
        row.finished_at,
        bool(row.ok),
        int(row.problems),
        str(row.summary),
        str(row.checked_by),
    )

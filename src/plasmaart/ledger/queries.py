"""Read-side SQL of the credits pages: ledger pages, usage and generation history.

These reads never lock and never write, and each one follows an index so that
it costs the same whether the wallet's journal holds a hundred entries or a
million (``benchmarks/ledger_queries.py`` measures them):

* a ledger page walks ``ix_journal_wallet_id`` backwards from a keyset cursor
  (the entry id); filtered by kind, it walks ``ix_journal_wallet_kind_created``
  by time instead, the only order that index gives;
* usage reads the ``usage_daily`` roll-up for the whole UTC days of the range,
  and the capture entries (``ix_journal_wallet_kind_created``) only for the
  partial first and last day, so any datetime range is exact;
* the generation history (one row per hold) walks the wallet's hold entries by
  time on the same index, finds each hold's capture and release on
  ``ix_journal_hold`` (hold id, kind), and its generation's status by the
  generation's primary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Select, and_, func, or_, select

from plasmaart.clock import as_utc
from plasmaart.db.tables import generations, holds, journal_entries, usage_daily
from plasmaart.errors import InvalidInput

UsageGrouping = Literal["model", "day"]

# The history shows a generation's own status (queued, running, succeeded,
# failed, canceled): a released hold alone cannot tell a failure from a
# cancellation. A hold no generation records (only the ledger's own tests
# make one) is named from the hold.
HISTORY_STATUS = {
    "captured": "succeeded",
    "released": "released",
    "pending": "running",
}


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """Where a page ended: the last entry served. Pages by id use ``id``;
    pages by time use both (``id`` breaks ties between equal times)."""

    id: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerLine:
    id: int
    created_at: datetime
    kind: str
    amount: int
    credits: int
    balance_after: int
    generation_id: str | None
    model: str | None
    outputs: int | None
    memo: str | None

    @property
    def position(self) -> JournalPosition:
        return JournalPosition(self.id, self.created_at)


@dataclass(frozen=True, slots=True)
class LedgerPage:
    lines: list[LedgerLine]
    # More entries follow the last line (the caller hands out a cursor).
    more: bool


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    generations: int
    outputs: int
    credits: int


@dataclass(frozen=True, slots=True)
class UsageSpans:
    """How a usage range is read: whole UTC days ``[first, end)`` from the
    roll-up, and windows that each lie within one UTC day from the journal."""

    days: tuple[date, date] | None
    windows: list[tuple[datetime, datetime]]


@dataclass(frozen=True, slots=True)
class GenerationLine:
    """One generation (one hold) as the dashboard's history shows it."""

    position: JournalPosition  # of the hold's entry
    generation_id: str | None
    model: str | None
    outputs: int
    credits_consumed: int
    remaining_balance: int
    status: str  # the generation's: queued, running, succeeded, failed, canceled

    @property
    def created_at(self) -> datetime:
        return self.position.created_at


# -- ledger pages -----------------------------------------------------------


def ledger_page(
    conn: Connection,
    wallet_id: str,
    *,
    limit: int,
    before: JournalPosition | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> LedgerPage:
    """The wallet's entries, newest first, after ``before`` (the last entry of
    the previous page).

    Unfiltered, the order is the entry id's. With ``kind`` it is
    ``(created_at, id)`` and ``since``/``until`` (until exclusive) may narrow
    it; a time window without a kind is refused, because no index would serve
    it: the last page would scan the wallet's whole history.
    """
    j = journal_entries
    query = select(
        j.c.id,
        j.c.created_at,
        j.c.kind,
        j.c.amount,
        j.c.credits,
        j.c.balance_after,
        j.c.generation_id,
        j.c.model,
        j.c.outputs,
        j.c.memo,
    ).where(j.c.wallet_id == wallet_id)
    if kind is None:
        if since is not None or until is not None:
            raise InvalidInput(
                "since/until filter the ledger together with kind= (for example "
                "kind=capture); without a kind, page through it with the cursor",
                field="kind",
            )
        if before is not None:
            query = query.where(j.c.id < before.id)
        query = query.order_by(j.c.id.desc())
    else:
        query = query.where(j.c.kind == kind, *_time_window(j.c.created_at, since, until))
        query = _by_time_before(query, before).order_by(j.c.created_at.desc(), j.c.id.desc())
    rows = conn.execute(query.limit(limit + 1)).all()
    lines = [
        LedgerLine(
            id=int(row.id),
            created_at=as_utc(row.created_at),
            kind=row.kind,
            amount=int(row.amount),
            credits=int(row.credits),
            balance_after=int(row.balance_after),
            generation_id=row.generation_id,
            model=row.model,
            outputs=row.outputs,
            memo=row.memo,
        )
        for row in rows[:limit]
    ]
    return LedgerPage(lines=lines, more=len(rows) > limit)


def _time_window(
    column: Any, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    conditions = []
    if since is not None:
        conditions.append(column >= as_utc(since))
    if until is not None:
        conditions.append(column < as_utc(until))
    return conditions


def _by_time_before(query: Select[Any], before: JournalPosition | None) -> Select[Any]:
    """Entries strictly older than ``before`` in ``(created_at, id)`` order.

    Spelled ``created_at <= t AND (created_at < t OR id < i)`` rather than as a
    row comparison so that both databases bound the index range by the time.
    """
    if before is None:
        return query
    j = journal_entries
    at = as_utc(before.created_at)
    return query.where(j.c.created_at <= at, or_(j.c.created_at < at, j.c.id < before.id))


# -- usage --------------------------------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def usage_spans(since: datetime, until: datetime) -> UsageSpans:
    """Split ``[since, until)`` into whole UTC days and partial-day windows.

    Raises ``ValueError`` unless ``since < until``.
    """
    since, until = as_utc(since), as_utc(until)
    if until <= since:
        raise ValueError("until must come after since")
    first_whole = since.date() if since == _midnight(since.date()) else since.date() + timedelta(1)
    end_whole = until.date()  # the day holding ``until`` is never whole: until is exclusive
    if first_whole < end_whole:
        windows = []
        if since < _midnight(first_whole):
            windows.append((since, _midnight(first_whole)))
        if _midnight(end_whole) < until:
            windows.append((_midnight(end_whole), until))
        return UsageSpans(days=(first_whole, end_whole), windows=windows)
    # No whole day inside: at most two partial days, cut at midnight.
    windows = []
    start = since
    while start < until:
        end = min(_midnight(start.date() + timedelta(1)), until)
        windows.append((start, end))
        start = end
    return UsageSpans(days=None, windows=windows)


def usage(
    conn: Connection,
    wallet_id: str,
    since: datetime,
    until: datetime,
    *,
    group_by: UsageGrouping,
) -> list[UsageRow]:
    """What the wallet consumed (its captures) in ``[since, until)``, grouped
    by model id or by UTC day (``YYYY-MM-DD``), sorted by key."""
    spans = usage_spans(since, until)
    totals: dict[str, list[int]] = {}

    def add(key: str, generations: Any, outputs: Any, credits: Any) -> None:
        total = totals.setdefault(key, [0, 0, 0])
        total[0] += int(generations)
        total[1] += int(outputs)
        total[2] += int(credits)

    if spans.days is not None:
        u = usage_daily
        key = u.c.model if group_by == "model" else u.c.day
        rows = conn.execute(
            select(key, func.sum(u.c.generations), func.sum(u.c.outputs), func.sum(u.c.credits))
            .where(u.c.wallet_id == wallet_id, u.c.day >= spans.days[0], u.c.day < spans.days[1])
            .group_by(key)
        ).all()
        for row in rows:
            add(row[0] if group_by == "model" else row[0].isoformat(), *row[1:])
    j = journal_entries
    # The roll-up files a capture without a model under "": so does this.
    model = func.coalesce(j.c.model, "")
    for start, end in spans.windows:
        rows = conn.execute(
            select(
                model,
                func.count(),
                func.coalesce(func.sum(func.coalesce(j.c.outputs, 0)), 0),
                func.sum(j.c.credits),
            )
            .where(
                j.c.wallet_id == wallet_id,
                j.c.kind == "capture",
                j.c.created_at >= start,
                j.c.created_at < end,
            )
            .group_by(model)
        ).all()
        for row in rows:
            add(row[0] if group_by == "model" else start.date().isoformat(), *row[1:])
    return [UsageRow(key, *total) for key, total in sorted(totals.items())]


# -- generation history -------------------------------------------------------


def generation_history(
    conn: Connection,
    wallet_id: str,
    since: datetime,
    until: datetime,
    *,
    limit: int,
    before: JournalPosition | None = None,
) -> list[GenerationLine]:
    """Up to ``limit`` generations (holds) made in ``[since, until)``, newest
    first, after ``before`` (the position of the last one already read)."""
    j = journal_entries
    capture, release = journal_entries.alias("capture"), journal_entries.alias("release")

    def settled_by(entry: Any, kind: str) -> ColumnElement[bool]:
        # The hold's capture (or release) entry: a hold resolves once, so
        # there is at most one of each.
        return and_(entry.c.hold_id == holds.c.id, entry.c.kind == kind)

    query = (
        select(
            j.c.id,
            j.c.created_at,
            holds.c.generation_id,
            holds.c.model,
            holds.c.status,
            generations.c.status.label("generation_status"),
            holds.c.captured,
            func.coalesce(capture.c.outputs, 0).label("outputs"),
            # The generation's last entry: a release follows its capture.
            func.coalesce(
                release.c.balance_after, capture.c.balance_after, j.c.balance_after
            ).label("remaining_balance"),
        )
        .select_from(
            j.join(holds, holds.c.id == j.c.hold_id)
            .outerjoin(capture, settled_by(capture, "capture"))
            .outerjoin(release, settled_by(release, "release"))
            .outerjoin(generations, generations.c.id == holds.c.generation_id)
        )
        .where(
            j.c.wallet_id == wallet_id,
            j.c.kind == "hold",
            *_time_window(j.c.created_at, since, until),
        )
    )
    query = _by_time_before(query, before).order_by(j.c.created_at.desc(), j.c.id.desc())
    return [
        GenerationLine(
            position=JournalPosition(int(row.id), as_utc(row.created_at)),
            generation_id=row.generation_id,
            model=row.model,
            outputs=int(row.outputs),
            credits_consumed=int(row.captured),
            remaining_balance=int(row.remaining_balance),
            status=row.generation_status or HISTORY_STATUS[row.status],
        )
        for row in conn.execute(query.limit(limit)).all()
    ]

"""``/v1/balance``, ``/v1/ledger``, ``/v1/usage`` and ``/v1/usage.csv``: the
caller's own wallet, as API.md shows it. Admins see their own wallet here too."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import Connection

from plasmaart.clock import as_utc
from plasmaart.db.values import EntryKind
from plasmaart.errors import InvalidInput
from plasmaart.ledger import queries
from plasmaart.platform import Platform
from plasmaart.web.auth import CurrentPrincipal, Principal
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.pagination import Page, cursor_after, position_from

router = APIRouter(prefix="/v1", tags=["credits"])

DEFAULT_USAGE_RANGE = timedelta(days=30)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
CSV_HEADER = (
    "time",
    "generation_id",
    "model",
    "outputs",
    "credits_consumed",
    "remaining_balance",
    "status",
)
# Generations per read transaction while streaming the CSV: no transaction
# stays open while the client is slow to read.
HISTORY_BATCH = 1000
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

SinceQuery = Annotated[
    str | None,
    Query(
        description="ISO 8601 date or datetime, UTC (a naive time is UTC); inclusive; "
        "by default 30 days before until"
    ),
]
UntilQuery = Annotated[
    str | None,
    Query(
        description="ISO 8601 date or datetime, UTC (a naive time is UTC); exclusive; "
        "by default the end of today"
    ),
]


class LotOut(BaseModel):
    id: str
    source: Literal["promo", "subscription", "rollover", "adjustment", "purchase"]
    granted: int
    remaining: int
    expires_at: datetime | None


class NextExpiryOut(BaseModel):
    credits: int
    expires_at: datetime


class BalanceOut(BaseModel):
    available: int
    held: int
    lots: list[LotOut]
    next_expiry: NextExpiryOut | None


class LedgerEntryOut(BaseModel):
    id: int
    created_at: datetime
    kind: EntryKind
    amount: int
    credits: int
    balance_after: int
    generation_id: str | None
    model: str | None
    memo: str | None


class UsageOut(BaseModel):
    key: str
    generations: int
    outputs: int
    credits: int


class UsageList(BaseModel):
    data: list[UsageOut]


def _own_wallet(conn: Connection, platform: Platform, principal: Principal) -> str:
    # The first of the user's wallets, cached per process (a wallet never
    # changes owner): no query on the balance's path.
    return platform.teams.wallets_of(conn, principal.user.id)[0]


def _instant(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        # Python 3.11 reads both dates ("2026-01-31": its midnight) and datetimes.
        moment = as_utc(datetime.fromisoformat(value))
    except OverflowError:  # 9999-12-31T23:00-05:00 is in no UTC year Python knows
        raise InvalidInput(
            f"{value!r} is out of range ({EARLIEST.year} to {LATEST.year - 1})", field=field
        ) from None
    except ValueError:
        raise InvalidInput(
            f"{value!r} is not an ISO 8601 date or datetime (e.g. 2026-01-31 or "
            "2026-01-31T12:00:00Z)",
            field=field,
        ) from None
    # Far enough from datetime's limits that day arithmetic cannot overflow.
    if not EARLIEST <= moment < LATEST:
        raise InvalidInput(
            f"{value!r} is out of range ({EARLIEST.year} to {LATEST.year - 1})", field=field
        )
    return moment


def _range(platform: Platform, since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """``[since, until)``. By default the last 30 UTC days, today included:
    whole days, which the usage roll-up answers alone."""
    today = platform.clock.now().date()
    end = _instant(until, "until") or datetime.combine(today + timedelta(1), time(0), tzinfo=UTC)
    start = _instant(since, "since") or end - DEFAULT_USAGE_RANGE
    if end <= start:
        raise InvalidInput("until must come after since", field="until")
    return start, end


@router.get("/balance", response_model=BalanceOut)
def balance(principal: CurrentPrincipal, platform: PlatformDep) -> BalanceOut:
    """Available and held credits, the lots in the order they will be spent,
    and the soonest expiry."""
    with platform.db.read() as conn:
        found = platform.ledger.balance(conn, _own_wallet(conn, platform, principal))
    return BalanceOut(
        available=found.available,
        held=found.held,
        lots=[LotOut.model_validate(lot, from_attributes=True) for lot in found.lots],
        next_expiry=(
            None
            if found.next_expiry is None
            else NextExpiryOut(credits=found.next_expiry[0], expires_at=found.next_expiry[1])
        ),
    )


@dataclass(frozen=True)
class JournalQuery:
    """The ledger's filters, as sent (read in the route, after the cursor)."""

    kind: EntryKind | None
    since: str | None
    until: str | None


async def _journal_query(
    kind: Annotated[
        EntryKind | None, Query(description="Only entries of this kind (then ordered by time)")
    ] = None,
    since: Annotated[
        str | None, Query(description="With kind: entries at or after this ISO 8601 time (UTC)")
    ] = None,
    until: Annotated[
        str | None, Query(description="With kind: entries before this ISO 8601 time (UTC)")
    ] = None,
) -> JournalQuery:
    """Async for the reason ``deps.get_platform`` is."""
    return JournalQuery(kind, since, until)


@router.get("/ledger", response_model=Page[LedgerEntryOut])
def ledger(
    principal: CurrentPrincipal,
    platform: PlatformDep,
    paging: PageQuery,
    wanted: Annotated[JournalQuery, Depends(_journal_query)],
) -> Page[LedgerEntryOut]:
    """The wallet's journal, newest first. ``amount`` is the signed change of
    ``available`` and ``balance_after`` the available balance right after it."""
    cursor = paging.cursor
    before = None if cursor is None else position_from(cursor, queries.JournalPosition)
    with platform.db.read() as conn:
        page = queries.ledger_page(
            conn,
            _own_wallet(conn, platform, principal),
            limit=paging.limit,
            before=before,
            kind=wanted.kind,
            since=_instant(wanted.since, "since"),
            until=_instant(wanted.until, "until"),
        )
    return Page[LedgerEntryOut](
        data=[LedgerEntryOut.model_validate(line, from_attributes=True) for line in page.lines],
        next_cursor=cursor_after(page.lines[-1].position) if page.more else None,
    )


@router.get("/usage", response_model=UsageList)
def usage(
    principal: CurrentPrincipal,
    platform: PlatformDep,
    since: SinceQuery = None,
    until: UntilQuery = None,
    group_by: Annotated[
        queries.UsageGrouping, Query(description="Key rows by model id or by UTC day")
    ] = "model",
) -> UsageList:
    """Generations, outputs and credits consumed in ``[since, until)`` (by
    default the last 30 UTC days, today included), grouped by model or by UTC
    day, sorted by key."""
    start, end = _range(platform, since, until)
    with platform.db.read() as conn:
        rows = queries.usage(
            conn, _own_wallet(conn, platform, principal), start, end, group_by=group_by
        )
    return UsageList(data=[UsageOut.model_validate(row, from_attributes=True) for row in rows])


def _cell(value: object) -> str:
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _history_rows(
    platform: Platform, wallet_id: str, since: datetime, until: datetime
) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    before = None
    while True:
        with platform.db.read() as conn:
            lines = queries.generation_history(
                conn, wallet_id, since, until, limit=HISTORY_BATCH, before=before
            )
        for line in lines:
            writer.writerow(
                _cell(value)
                for value in (
                    line.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    line.generation_id or "",
                    line.model or "",
                    line.outputs,
                    line.credits_consumed,
                    line.remaining_balance,
                    line.status,
                )
            )
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(lines) < HISTORY_BATCH:
            return
        before = lines[-1].position


def _file_stamp(moment: datetime) -> str:
    if moment.time() == time(0):
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%dT%H%M%SZ")


@router.get(
    "/usage.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per generation"}},
)
def usage_csv(
    principal: CurrentPrincipal,
    platform: PlatformDep,
    since: SinceQuery = None,
    until: UntilQuery = None,
) -> StreamingResponse:
    """The dashboard's generation history in ``[since, until)`` (by default
    the last 30 days), newest first: ``time, generation_id, model, outputs,
    credits_consumed, remaining_balance, status`` (the generation's:
    queued, running, succeeded, failed or canceled)."""
    start, end = _range(platform, since, until)
    with platform.db.read() as conn:
        wallet_id = _own_wallet(conn, platform, principal)
    filename = f"plasmaart-usage-{_file_stamp(start)}-{_file_stamp(end)}.csv"
    return StreamingResponse(
        _history_rows(platform, wallet_id, start, end),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

"""Cursor pagination: ``?limit=&cursor=`` in, ``{data, next_cursor}`` out."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from plasmaart.accounts.audit import AuditPosition
from plasmaart.clock import as_utc
from plasmaart.errors import InvalidInput

T = TypeVar("T")
P = TypeVar("P")
DEFAULT_LIMIT = 50


class Position(Protocol):
    """The last row served of a page ordered by ``(created_at, id)``: an
    audit entry's, a journal entry's."""

    @property
    def id(self) -> int: ...

    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True)
class PageParams:
    """What a paged list was asked for (``?limit=&cursor=``, web/deps.py's ``PageQuery``)."""

    limit: int
    cursor: str | None


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput("not a cursor this API handed out", field="cursor") from None


def position_text(entry_id: int, created_at: datetime) -> str:
    """The last row served of a page ordered by ``(created_at, id)``, as
    ``id|created_at``; ``encode_cursor`` makes it opaque for the API."""
    return f"{entry_id}|{created_at.isoformat()}"


def parse_position(text: str) -> tuple[int, datetime] | None:
    """``(id, created_at)`` back from ``position_text``, or None when ``text``
    is not one (a time in no UTC year Python knows included)."""
    entry_id, _, created_at = text.partition("|")
    try:
        return int(entry_id), as_utc(datetime.fromisoformat(created_at))
    except (ValueError, OverflowError):
        return None


def position_cursor(entry_id: int, created_at: datetime) -> str:
    return encode_cursor(position_text(entry_id, created_at))


def decode_position(cursor: str) -> tuple[int, datetime]:
    """An API cursor made by ``position_cursor``; anything else is 422."""
    found = parse_position(decode_cursor(cursor))
    if found is None:
        raise InvalidInput("not a cursor this API handed out", field="cursor")
    return found


def cursor_after(position: Position) -> str:
    """The API cursor of the page after the one that ended at ``position``."""
    return position_cursor(position.id, position.created_at)


def position_from(cursor: str, make: Callable[[int, datetime], P]) -> P:
    """The position an API cursor made by ``cursor_after`` stands for (422 if
    it is none), as ``make`` builds it (``JournalPosition``, ``AuditPosition``)."""
    return make(*decode_position(cursor))


def audit_cursor(position: AuditPosition) -> str:
    """The cursor of the audit log's next page (the API's and the dashboard's)."""
    return cursor_after(position)


def audit_position(cursor: str) -> AuditPosition:
    return position_from(cursor, AuditPosition)


class Keyed(Protocol):
    @property
    def id(self) -> str: ...


K = TypeVar("K", bound=Keyed)


def page_of(items: Sequence[K], paging: PageParams) -> Page[K]:
    """A page of a small in-memory list ordered by unique ids: the cursor is
    the id of the last item served, so pages stay stable as items change."""
    keys = [item.id for item in items]
    limit, cursor = paging.limit, paging.cursor
    start = 0
    if cursor is not None:
        after = decode_cursor(cursor)
        if after not in keys:
            raise InvalidInput("this cursor no longer points into the list", field="cursor")
        start = keys.index(after) + 1
    chunk = list(items[start : start + limit])
    more = start + limit < len(items)
    return Page(data=chunk, next_cursor=encode_cursor(keys[start + limit - 1]) if more else None)

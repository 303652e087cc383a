"""web/schemas.py's ``shape`` and web/pagination.py's in-memory pages and
position cursors: the helpers every router answers through."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from plasmaart.errors import InvalidInput
from plasmaart.ledger.queries import JournalPosition
from plasmaart.web.pagination import PageParams, cursor_after, page_of, position_from
from plasmaart.web.schemas import shape


@dataclass(frozen=True)
class Inner:
    jobs: int


@dataclass(frozen=True)
class Record:
    id: str
    name: str
    tags: tuple[str, ...]
    inner: Inner
    secret: str  # not part of the answer


class InnerOut(BaseModel):
    jobs: int


class RecordOut(BaseModel):
    id: str
    name: str
    tags: list[str]
    inner: InnerOut
    label: str


RECORD = Record(id="r1", name="first", tags=("a", "b"), inner=Inner(jobs=2), secret="s")


def test_shape_copies_fields_of_the_same_names_and_takes_the_computed_ones() -> None:
    out = shape(RecordOut, RECORD, label="First")
    assert out.model_dump() == {
        "id": "r1",
        "name": "first",
        "tags": ["a", "b"],
        "inner": {"jobs": 2},
        "label": "First",
    }


def test_a_computed_field_wins_over_the_records_own() -> None:
    assert shape(RecordOut, RECORD, name="renamed", label="x").name == "renamed"


def test_a_field_found_nowhere_is_refused() -> None:
    with pytest.raises(ValidationError, match="label"):
        shape(RecordOut, RECORD)


def test_page_of_walks_a_list_by_ids() -> None:
    items = [shape(RecordOut, RECORD, id=f"r{n}", label=str(n)) for n in range(5)]
    first = page_of(items, PageParams(limit=2, cursor=None))
    assert [item.id for item in first.data] == ["r0", "r1"]
    assert first.next_cursor is not None
    second = page_of(items, PageParams(limit=2, cursor=first.next_cursor))
    assert [item.id for item in second.data] == ["r2", "r3"]
    assert second.next_cursor is not None
    last = page_of(items, PageParams(limit=2, cursor=second.next_cursor))
    assert [item.id for item in last.data] == ["r4"]
    assert last.next_cursor is None
    with pytest.raises(InvalidInput):
        page_of(items[:1], PageParams(limit=2, cursor=second.next_cursor))


def test_a_position_cursor_reads_back_as_the_position() -> None:
    position = JournalPosition(id=41, created_at=datetime(2026, 1, 31, 8, 30, tzinfo=UTC))
    cursor = cursor_after(position)
    assert position_from(cursor, JournalPosition) == position
    with pytest.raises(InvalidInput):
        position_from("bm90LWEtcG9zaXRpb24", JournalPosition)  # "not-a-position"

"""The API's JSON answers through orjson: the bytes Starlette's
``JSONResponse`` (the standard library's ``json``) wrote for the same content."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from fastapi.encoders import jsonable_encoder
from starlette.responses import JSONResponse

from plasmaart.web.problems import PROBLEM_JSON, problem
from plasmaart.web.responses import FastJSONResponse

CONTENTS: list[Any] = [
    {"type": "https://plasmaart.dev/problems/x", "title": "Zoë's «crédits» — 日本語 ✓", "n": 3},
    {"escapes": 'quote " backslash \\ tab \t newline \n nul \x00 esc \x1b del \x7f \u2028'},
    {"nested": [{"a": [1, 2, {"b": None}]}, [], {}], "flags": [True, False]},
    {"numbers": [0, -1, 2**53, 2**63 - 1, -(2**63), 0.5, 1.25, -3.75, 100.0]},
    # What FastAPI hands over for a route without a response model: datetimes,
    # dates, decimals and ids already as text.
    jsonable_encoder(
        {
            "at": datetime(2026, 1, 31, 12, 0, 5, 123456, tzinfo=UTC),
            "local": datetime(2026, 1, 31, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            "day": date(2026, 2, 1),
            "price": Decimal("9.90"),
            "id": UUID("12345678-1234-5678-1234-567812345678"),
        }
    ),
    {1: "int keys become text, as json does"},
    {"big": 2**70},  # beyond orjson: json writes it
    [],
    "text",
]


@pytest.mark.parametrize("content", CONTENTS)
def test_the_bytes_are_the_standard_librarys(content: Any) -> None:
    assert FastJSONResponse(content).body == JSONResponse(content).body


def test_datetimes_keep_the_offset_notation() -> None:
    body = FastJSONResponse(jsonable_encoder({"at": datetime(2026, 1, 31, tzinfo=UTC)})).body
    assert body == b'{"at":"2026-01-31T00:00:00+00:00"}'


def test_problems_go_out_through_orjson() -> None:
    answer = problem(409, "conflict", "Conflict", "déjà vu", {"Retry-After": "1"}, extra=[1])
    assert isinstance(answer, FastJSONResponse)
    assert answer.media_type == PROBLEM_JSON
    assert answer.headers["retry-after"] == "1"
    assert (
        answer.body
        == JSONResponse(
            {
                "type": "https://plasmaart.dev/problems/conflict",
                "title": "Conflict",
                "status": 409,
                "detail": "déjà vu",
                "code": "conflict",
                "extra": [1],
            }
        ).body
    )

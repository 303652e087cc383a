"""The API's JSON answers through orjson (several times faster than the
standard library's ``json``), byte for byte what Starlette's ``JSONResponse``
writes: UTF-8 without escaping non-ASCII text, no spaces. What orjson cannot
write (an integer beyond 64 bits) falls back to ``json``.

Routes with a response model keep FastAPI's own fast path (pydantic writes
the JSON); this class serves the others, the problem+json refusals and the
framework's errors. Datetimes reach it as text already (FastAPI's
``jsonable_encoder`` turns them into ISO 8601 with ``+00:00``), and the
problems carry none."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_NON_STR_KEYS


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError: what only ``json`` writes
            return super().render(content)

"""One place turns every refusal into ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from plasmaart.db.group_commit import GroupCommitError
from plasmaart.db.outage import is_unavailable, reason
from plasmaart.errors import DomainError
from plasmaart.web.responses import FastJSONResponse

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://plasmaart.dev/problems/"

_HTTP_CODES = {
    400: ("invalid_input", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return FastJSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def http_problem(exc: StarletteHTTPException) -> JSONResponse:
    """An HTTP error raised by the framework (no route, wrong method) as problem+json."""
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem(exc.status_code, code, title, detail, headers=exc.headers)


def _plural(count: object, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _choices(expected: object) -> str:
    """pydantic's ``'a', 'b' or 'c'`` as ``a, b, c``."""
    text = str(expected)
    quoted = re.findall(r"'((?:[^'\\]|\\.)*)'", text)
    return ", ".join(quoted) if quoted else text


def _line_column(document: object, position: int) -> tuple[int, int]:
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else str(document)
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


# pydantic's error types, in the project's words. A message is what follows
# the field's name: "email is required", "limit must be at most 200".
_SIMPLE = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request",
    "string_type": "must be a string",
    "string_unicode": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "is too large a number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dataclass_type": "must be a JSON object",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "none_required": "must be null",
    "datetime_type": "must be a date and time (ISO 8601)",
    "datetime_parsing": "must be a date and time (ISO 8601)",
    "datetime_from_date_parsing": "must be a date and time (ISO 8601)",
    "datetime_object_invalid": "must be a date and time (ISO 8601)",
    "timezone_aware": "must carry a time zone",
    "timezone_naive": "must not carry a time zone",
    "date_type": "must be a date (YYYY-MM-DD)",
    "date_parsing": "must be a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
    "date_from_datetime_inexact": "must be a date (YYYY-MM-DD)",
    "url_type": "must be a URL",
    "url_parsing": "must be a URL",
    "url_syntax_violation": "must be a URL",
    "url_scheme": "must be an http or https URL",
    "uuid_type": "must be a UUID",
    "uuid_parsing": "must be a UUID",
    "string_pattern_mismatch": "is not in the expected format",
    "union_tag_invalid": "is not one of the accepted kinds",
    "union_tag_not_found": "is not one of the accepted kinds",
}


def message_for(error: Mapping[str, Any]) -> str:
    """The project's message for one of pydantic's errors (never pydantic's
    own phrasing, which names Python types and links pydantic's docs)."""
    kind = str(error.get("type", ""))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        # Our validators' own message, without "Value error, ".
        return str(ctx["error"])
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {_plural(ctx.get('min_length'), 'character')}"
    if kind == "string_too_long":
        return f"must be at most {_plural(ctx.get('max_length'), 'character')}"
    if kind == "too_short":
        return f"must have at least {_plural(ctx.get('min_length'), 'item')}"
    if kind == "too_long":
        return f"must have at most {_plural(ctx.get('max_length'), 'item')}"
    bounds = {
        "greater_than": "must be greater than {}",
        "greater_than_equal": "must be at least {}",
        "less_than": "must be less than {}",
        "less_than_equal": "must be at most {}",
        "multiple_of": "must be a multiple of {}",
    }
    if kind in bounds and ctx:
        return bounds[kind].format(next(iter(ctx.values())))
    if kind in ("literal_error", "enum") and "expected" in ctx:
        return f"must be one of: {_choices(ctx['expected'])}"
    return "is not valid"


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        kind = error.get("type")
        if kind == "json_invalid":
            position = loc[-1] if loc and isinstance(loc[-1], int) else 0
            line, column = _line_column(exc.body, position)
            message = f"the body is not valid JSON (line {line}, column {column})"
            errors.append({"field": "body", "message": message})
            continue
        field = _field(loc)
        if field == "body" and kind == "missing":
            message = "the body must be a JSON object; it is empty"
        elif field == "body" and isinstance(error.get("input"), bytes):
            # Not sent as JSON: FastAPI hands the raw bytes to the model.
            message = "the body must be a JSON object sent as application/json"
        elif field == "body" and kind in ("model_attributes_type", "dict_type", "model_type"):
            message = "the body must be a JSON object"
        else:
            message = message_for(error)
        errors.append({"field": field, "message": message})
    return errors


def _detail(errors: list[dict[str, str]]) -> str:
    return "; ".join(
        e["message"] if e["message"].startswith("the body") else f"{e['field']}: {e['message']}"
        for e in errors
    )


# How long a client should wait before retrying a 503 ``unavailable``.
UNAVAILABLE_RETRY_AFTER_S = 2


def database_unavailable() -> JSONResponse:
    """The 503 of a request that could not reach the database: nothing was
    done, or (the connection lost during the commit) its outcome is unknown;
    a retry under the same Idempotency-Key finds it either way."""
    return problem(
        503,
        "unavailable",
        "Service unavailable",
        "the database is unavailable; try again shortly (with the same Idempotency-Key)",
        {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        headers = None
        retry_after = exc.extra.get("retry_after")
        if retry_after is not None:
            headers = {"Retry-After": str(int(retry_after))}
        return problem(exc.status, exc.code, exc.title, exc.detail, headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return problem(422, "invalid_input", "Invalid input", _detail(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_problem(exc)

    @app.exception_handler(GroupCommitError)
    async def _writer_unavailable(request: Request, exc: GroupCommitError) -> JSONResponse:
        # The database's writer gave no answer in time (or stopped): the
        # write was not done, or its outcome is unknown; a retry under the
        # same Idempotency-Key finds it either way.
        log.warning("no answer from the writer on %s %s: %s", request.method, request.url.path, exc)
        return problem(
            503,
            "unavailable",
            "Service unavailable",
            "the database could not take the write in time; try again shortly "
            "(with the same Idempotency-Key)",
            {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        )

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # The database out of reach (stopped, restarting, the connection cut
        # or stalled past PLASMAART_DB_TIMEOUT_S): a 503 to retry, not a bug.
        # Anything else a statement raised is one: the 500 below.
        if not is_unavailable(exc):
            raise exc
        log.warning(
            "database unavailable on %s %s: %s", request.method, request.url.path, reason(exc)
        )
        return database_unavailable()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(
            500,
            "internal_error",
            "Internal error",
            "something went wrong on our side; it has been logged",
        )

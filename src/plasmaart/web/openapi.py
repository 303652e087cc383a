"""The OpenAPI document, told the truth about errors.

FastAPI documents its own validation error shape (``HTTPValidationError``);
this server answers every refusal with ``application/problem+json`` instead.
The document is rewritten once so that every operation lists the problem
responses it can give, with the ``Problem`` schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details, with a stable machine-readable `code`.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_DESCRIPTIONS = {
    "401": "Not authenticated (`unauthenticated`)",
    "403": "Forbidden (`forbidden`, `account_suspended`, ...)",
    "404": "Not found (`not_found`)",
    "409": "Conflict (`idempotency_conflict`, ...)",
    "413": "Body too large (`payload_too_large`)",
    "422": "Invalid input (`invalid_input`, with `errors`)",
    "429": "Too many requests (`rate_limited`, with `Retry-After`)",
    "500": "Internal error (`internal_error`)",
    "503": "Service unavailable (`unavailable`, with `Retry-After`): the database is out of reach",
    "507": "Insufficient storage (`storage_full`, with `Retry-After`): nothing was written",
}


def _problem_response(status: str) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS.get(status, "Problem"),
        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
    }


def install(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Problem"] = PROBLEM_SCHEMA
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                statuses = ["422", "500", "503"]
                if path.startswith("/v1/"):
                    statuses += ["401", "403", "404"]
                if method == "post":
                    statuses += ["409", "413"]
                if method in ("post", "put", "patch", "delete"):
                    statuses += ["507"]  # a full disk (db/disk_full.py)
                for status in statuses:
                    responses.setdefault(status, {"description": _DESCRIPTIONS[status]})
                # Every error answer is a problem, whatever FastAPI guessed.
                for status, response in responses.items():
                    if status.isdigit() and int(status) >= 400:
                        response["content"] = _problem_response(status)["content"]
                        if status in _DESCRIPTIONS and status == "422":
                            response["description"] = _DESCRIPTIONS[status]
        app.openapi_schema = document
        return document

    app.openapi = build  # type: ignore[method-assign]

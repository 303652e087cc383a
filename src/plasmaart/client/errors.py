"""What the client raises: ``ApiError`` (the server answered with a refusal,
read from its problem+json body) and its subclasses by status and code;
``TransportError`` when no answer came at all."""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

if TYPE_CHECKING:
    from plasmaart.client.models import Generation

# Fields of a problem+json body that are not "extra".
_PROBLEM_FIELDS = frozenset({"type", "title", "status", "detail", "code"})
# How much of a body that is not problem+json ends up in ``detail``.
_DETAIL_LIMIT = 500
# When the body says nothing, the status does (the same codes as the server's).
_STATUS_CODES = {
    400: "invalid_input",
    401: "unauthenticated",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_input",
    429: "rate_limited",
}


class PlasmaArtError(Exception):
    """Everything this client raises."""


class TransportError(PlasmaArtError):
    """No answer from the server (connection refused, timeout, dropped
    connection) after the retries; the httpx error is the ``__cause__``."""


class UnexpectedResponse(PlasmaArtError):
    """A successful answer the client cannot read (not the API's shape)."""


class GenerationTimeout(PlasmaArtError, TimeoutError):
    """Waiting for a generation gave up after ``timeout`` seconds. The server
    carries on: ``generation`` is its last state seen (queued or running);
    wait again, or cancel it."""

    def __init__(self, generation: Generation, timeout: float) -> None:
        super().__init__(
            f"generation {generation.id} is still {generation.status} after {timeout:g} s"
        )
        self.generation = generation
        self.timeout = timeout


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ApiError(PlasmaArtError):
    """The server refused: ``status``, the stable ``code``, ``title``,
    ``detail`` and the problem's other fields in ``extra``."""

    default_code: ClassVar[str] = "http_error"

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        extra: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" if detail else f"{status} {code}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})
        # The server's X-Request-ID: quote it when asking for support.
        self.request_id = request_id
        self._retry_after = retry_after


class AuthenticationError(ApiError):
    """401: no credentials, a revoked key, an ended session, a wrong password."""


class PermissionDenied(ApiError):
    """403: ``forbidden`` (also a missing CSRF token, or a plan that lacks a
    feature: ``extra["required_plan"]``), ``account_suspended``, ..."""


class AccountSuspendedError(PermissionDenied):
    """403 ``account_suspended``."""


class ModelNotInPlanError(PermissionDenied):
    """403 ``model_not_in_plan``: ``required_plan`` is the cheapest plan that
    includes the model (None when no plan does)."""

    @property
    def required_plan(self) -> str | None:
        found = self.extra.get("required_plan")
        return found if isinstance(found, str) else None


class NotFoundError(ApiError):
    """404: no such thing, or it is somebody else's (admin calls for non-admins too)."""


class InsufficientCreditsError(ApiError):
    """402: ``required`` credits, ``available`` ones."""

    @property
    def required(self) -> int | None:
        return _int_or_none(self.extra.get("required"))

    @property
    def available(self) -> int | None:
        return _int_or_none(self.extra.get("available"))


class ConflictError(ApiError):
    """409: ``email_taken``, ``seats_exhausted``, ``idempotency_conflict``, ..."""


class InvalidInputError(ApiError):
    """422: the request's fields that were refused, in ``errors``."""

    @property
    def errors(self) -> tuple[FieldError, ...]:
        found = self.extra.get("errors")
        if not isinstance(found, list):
            return ()
        return tuple(
            FieldError(str(item.get("field", "body")), str(item.get("message", "")))
            for item in found
            if isinstance(item, dict)
        )


class RateLimitedError(ApiError):
    """429: ``rate_limited`` or ``concurrency_limit``; ``retry_after`` seconds
    from the ``Retry-After`` header (or the body), when the server says."""

    @property
    def retry_after(self) -> float | None:
        if self._retry_after is not None:
            return self._retry_after
        from_body = self.extra.get("retry_after")
        return float(from_body) if isinstance(from_body, int | float) else None


class ServerError(ApiError):
    """5xx: the server failed (after the retries)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
    429: RateLimitedError,
}
_BY_CODE: dict[str, type[ApiError]] = {
    "account_suspended": AccountSuspendedError,
    "model_not_in_plan": ModelNotInPlanError,
}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_class(status: int, code: str) -> type[ApiError]:
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for a refused request; the body must have been read."""
    status = response.status_code
    body: Any = None
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    request_id = response.headers.get("x-request-id")
    retry_after = retry_after_seconds(response)
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code = body["code"]
        extra = {key: value for key, value in body.items() if key not in _PROBLEM_FIELDS}
        return error_class(status, code)(
            status,
            code,
            str(body.get("title") or response.reason_phrase),
            str(body.get("detail") or ""),
            extra,
            request_id=request_id,
            retry_after=retry_after,
        )
    # Not the API's problem+json (a proxy's error page, say): the status decides.
    code = _STATUS_CODES.get(status, "server_error" if status >= 500 else ApiError.default_code)
    text = response.text.strip()
    detail = text[:_DETAIL_LIMIT] if text else response.reason_phrase
    return error_class(status, code)(
        status,
        code,
        response.reason_phrase or f"HTTP {status}",
        detail,
        request_id=request_id,
        retry_after=retry_after,
    )

"""What every request goes through first: a request id (echoed as
``X-Request-ID`` and put in every log line), an access log line, security
headers, and a limit on body size (413 before the body is read in full)."""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plasmaart.logs import request_id
from plasmaart.web.problems import problem

log = logging.getLogger("plasmaart.access")

MAX_BODY = 1024 * 1024  # JSON bodies
MAX_UPLOAD_BODY = 11 * 1024 * 1024  # uploads: 10 MB of file plus the multipart envelope
UPLOAD_PATHS = ("/v1/uploads",)
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# A secret that travels in a path (an invitation token; an API key pasted by
# mistake) is logged by its first characters only, never whole.
_PATH_SECRET = re.compile(r"(pa_(?:inv|live)_[A-Za-z0-9_-]{4})[A-Za-z0-9_-]*")


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query


def loggable_path(path: str) -> str:
    return _PATH_SECRET.sub(r"\1...", path)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SANE_ID.match(incoming) else secrets.token_hex(8)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        limit = MAX_UPLOAD_BODY if scope["path"].startswith(UPLOAD_PATHS) else MAX_BODY

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                extra = [(b"x-request-id", rid.encode())]
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra += [h for h in SECURITY_HEADERS if h[0] not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            if _has_nul(scope):
                # No path or query value has a use for a NUL character, and
                # PostgreSQL cannot compare text with one: refuse it here.
                response = problem(
                    422,
                    "invalid_input",
                    "Invalid input",
                    "the path and the query must not contain NUL characters",
                    errors=[{"field": "query", "message": "must not contain NUL characters"}],
                )
                await response(scope, receive, send_with_headers)
                return
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            response = problem(
                413,
                "payload_too_large",
                "Payload too large",
                f"the request body is limited to {limit} bytes",
            )
            await response(scope, receive, send_with_headers)
        finally:
            path = loggable_path(scope["path"])
            log.info(
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            request_id.reset(token)

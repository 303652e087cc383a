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
from plasmaart.media.uploads import MAX_UPLOAD_BYTES, format_size
from plasmaart.web.problems import problem

log = logging.getLogger("plasmaart.access")

MAX_BODY = 1024 * 1024  # JSON bodies
# Uploads: the file's limit (the 10 MB the dashboard states) plus room for
# the multipart envelope; refusals name the file's limit, the one users know.
MAX_UPLOAD_BODY = MAX_UPLOAD_BYTES + 1024 * 1024
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


def _too_large_detail(upload: bool) -> str:
    if upload:
        return f"an uploaded file is limited to {format_size(MAX_UPLOAD_BYTES)}"
    return f"the request body is limited to {format_size(MAX_BODY)}"


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
        upload = scope["path"].startswith(UPLOAD_PATHS)
        limit = MAX_UPLOAD_BODY if upload else MAX_BODY
        # Set once the body passes the limit. A body without Content-Length
        # (chunked) is only found too large while the app reads it, and the
        # app's body parser may turn the exception into an answer of its own
        # (a 400): that answer is dropped and the 413 sent instead.
        exceeded = False
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if exceeded and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                extra = [(b"x-request-id", rid.encode())]
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra += [h for h in SECURITY_HEADERS if h[0] not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
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
            if exceeded and not response_started:
                raise BodyTooLarge
        except BodyTooLarge:
            exceeded = False
            response = problem(
                413,
                "payload_too_large",
                "Payload too large",
                _too_large_detail(upload),
                max_bytes=MAX_UPLOAD_BYTES if upload else MAX_BODY,
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

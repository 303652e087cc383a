"""The edge: one pure ASGI callable that every HTTP request goes through
before the framework sees it, in one pass over ``receive`` and ``send``
(no stack of middlewares, each wrapping the next). In this order:

1. the request id: the client's ``X-Request-ID`` when it is sane, a new one
   otherwise; it is put in every log line of the request and echoed;
2. the body limit: a declared ``Content-Length`` over the limit is refused
   with 413 ``payload_too_large`` before anything reads the body; a chunked
   body is counted while it is read, and its 413 replaces whatever the app
   was about to answer;
3. a NUL character in the path or the query: 422 ``invalid_input``;
4. ``Idempotency-Key`` on a POST (web/idempotency.py): a replay, a 409
   conflict, or the request runs and its answer is stored before its last
   byte goes out;
5. the app (FastAPI: routing, dependencies, the endpoint);
6. on the way out, in the same ``send``: the ``RateLimit-*`` headers that
   the rate-limit dependency left in the request state, the
   ``X-Request-ID`` and security headers, and for a counted request's 422 its
   report as an ``invalid_input`` abuse signal (web/rate_limit_guard.py);
7. at the end: the request's Prometheus metrics (web/metrics.py, labelled by
   the route template) and one access log line.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plasmaart.db.outage import is_unavailable, reason
from plasmaart.logs import request_id
from plasmaart.media.uploads import MAX_UPLOAD_BYTES, format_size
from plasmaart.platform import Platform
from plasmaart.web import idempotency
from plasmaart.web.metrics import HttpMetrics
from plasmaart.web.problems import database_unavailable, problem
from plasmaart.web.rate_limit_guard import (
    COUNTED,
    EVIDENCE_BYTES,
    WINDOW,
    rate_limit_header_pairs,
    report_invalid_input,
)

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
_SECRET_FIELDS = idempotency.SECRET_FIELDS_HEADER.encode()
_RATE_LIMIT_NAMES = frozenset(
    (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy")
)


class BodyTooLarge(Exception):
    pass


def _too_large_detail(upload: bool) -> str:
    if upload:
        return f"an uploaded file is limited to {format_size(MAX_UPLOAD_BYTES)}"
    return f"the request body is limited to {format_size(MAX_BODY)}"


def _too_large(upload: bool) -> ASGIApp:
    return problem(
        413,
        "payload_too_large",
        "Payload too large",
        _too_large_detail(upload),
        max_bytes=MAX_UPLOAD_BYTES if upload else MAX_BODY,
    )


def _nul_refusal() -> ASGIApp:
    # No path or query value has a use for a NUL character, and PostgreSQL
    # cannot compare text with one: refuse it here.
    return problem(
        422,
        "invalid_input",
        "Invalid input",
        "the path and the query must not contain NUL characters",
        errors=[{"field": "query", "message": "must not contain NUL characters"}],
    )


class _Exchange:
    """One request's passage through the edge: what ``send`` adds and
    watches, and what the end of the request reports."""

    __slots__ = (
        "chunks",
        "evidence",
        "exceeded",
        "finished",
        "idempotent",
        "invalid",
        "key",
        "limit",
        "platform",
        "principal",
        "receive",
        "received",
        "request_id",
        "scope",
        "send",
        "start",
        "started",
        "state",
        "status",
        "unfinished",
    )

    def __init__(
        self,
        platform: Platform,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        limit: int,
        state: dict[str, Any],
    ) -> None:
        self.platform = platform
        self.scope = scope
        self.receive = receive
        self.send = send
        self.request_id = rid.encode()
        self.limit = limit
        self.state = state
        self.status = 500
        self.started = False
        self.received = 0
        # Set once the body passes the limit. A body without Content-Length
        # (chunked) is only found too large while the app reads it, and the
        # app's body parser may turn the exception into an answer of its own
        # (a 400): that answer is dropped and the 413 sent instead.
        self.exceeded = False
        # Idempotency: the credential's hash, the key, the answer's start and
        # body as they go out, and whether it is stored yet.
        self.idempotent = False
        self.principal = ""
        self.key = ""
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.finished = False
        # A counted request's 422: the first bytes of its body, the evidence.
        self.invalid = False
        self.evidence: list[bytes] = []
        # Answers whose record could not be written (web/idempotency.py).
        self.unfinished: idempotency.Unfinished | None = None

    async def limited_receive(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise BodyTooLarge
        return message

    async def send_message(self, message: Message) -> None:
        if self.exceeded and not self.started:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = int(message["status"])
            if self.idempotent:
                self.start = message
            message = self._with_headers(message)
        elif kind == "http.response.body" and (self.idempotent or self.invalid):
            await self._watch_body(message)
        await self.send(message)

    def _with_headers(self, message: Message) -> Message:
        """The answer's start with the edge's headers, in one new list."""
        state = self.state
        window = state.get(WINDOW) if state.get(COUNTED) else None
        headers: list[tuple[bytes, bytes]] = []
        present = set()
        for name, value in message.get("headers", ()):
            lowered = name.lower()
            # The marker of an answer's one-time secret is for the edge only.
            if lowered == _SECRET_FIELDS or (window is not None and lowered in _RATE_LIMIT_NAMES):
                continue
            present.add(lowered)
            headers.append((name, value))
        if window is not None:
            headers.extend(rate_limit_header_pairs(window))
        if state.get(COUNTED):
            self.invalid = self.status == 422 and state.get("principal") is not None
        headers.append((b"x-request-id", self.request_id))
        headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
        return {**message, "headers": headers}

    async def _watch_body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        last = not message.get("more_body")
        if self.idempotent and not self.finished:
            self.chunks.append(body)
            if last:
                # Stored before the last byte goes out: a client that repeats
                # the request as soon as it has the answer must get the
                # replay, not "still running".
                await self.finish_idempotency()
        if self.invalid:
            self.evidence.append(body[:EVIDENCE_BYTES])
            if last:
                self.invalid = False
                # Reported before the answer's last byte goes out, so that a
                # client's next request already sees the consequence.
                await run_in_threadpool(
                    report_invalid_input,
                    self.platform,
                    self.state["principal"],
                    self.scope,
                    b"".join(self.evidence),
                )

    async def finish_idempotency(self) -> None:
        self.finished = True
        body = b"".join(self.chunks)
        try:
            await run_in_threadpool(
                idempotency.finish, self.platform, self.principal, self.key, self.start, body
            )
        except SQLAlchemyError as exc:
            if not is_unavailable(exc) or self.unfinished is None:
                raise
            # The database went away after the claim: the answer still goes
            # out; its record is written at this process's next claim.
            log.warning("idempotency record kept for later, the database is unavailable")
            self.unfinished.add(self.principal, self.key, self.start, body)


class Edge:
    """The one ASGI callable in front of the app (see the module's docstring)."""

    def __init__(self, app: ASGIApp, platform: Platform, metrics: HttpMetrics) -> None:
        self.app = app
        self.platform = platform
        self.metrics = metrics
        self.unfinished = idempotency.Unfinished()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = b""
        declared: bytes | None = None
        raw_key: bytes | None = None
        post = scope["method"] == "POST"
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
            elif name == b"content-length":
                declared = value
            elif name == idempotency.HEADER and post:
                raw_key = value
        text_id = incoming.decode("latin-1")
        rid = text_id if _SANE_ID.match(text_id) else secrets.token_hex(8)
        token = request_id.set(rid)
        upload = scope["path"].startswith(UPLOAD_PATHS)
        # Created here, before anything copies the scope, so that what the
        # endpoint's dependencies write into request.state is seen on the way out.
        state: dict[str, Any] = scope.setdefault("state", {})
        exchange = _Exchange(
            self.platform,
            scope,
            receive,
            send,
            rid,
            MAX_UPLOAD_BODY if upload else MAX_BODY,
            state,
        )
        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            try:
                if declared is not None and declared.isdigit() and int(declared) > exchange.limit:
                    raise BodyTooLarge
                if _has_nul(scope):
                    await _nul_refusal()(scope, receive, exchange.send_message)
                elif raw_key is not None:
                    await self._idempotent(exchange, raw_key)
                else:
                    await self.app(scope, exchange.limited_receive, exchange.send_message)
                if exchange.exceeded and not exchange.started:
                    raise BodyTooLarge
            except BodyTooLarge:
                if exchange.idempotent and not exchange.finished:
                    # Claimed, then refused: the record is released, not stored.
                    exchange.start = None
                    await exchange.finish_idempotency()
                exchange.idempotent = False
                exchange.exceeded = False
                await _too_large(upload)(scope, receive, exchange.send_message)
            finally:
                if exchange.idempotent and not exchange.finished:
                    await exchange.finish_idempotency()
        finally:
            metrics.in_flight.dec()
            status = exchange.status
            # The router leaves the matched route in the scope: label by its
            # template, not the raw path, so ids do not explode the series.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            elapsed = time.perf_counter() - started
            metrics.observe(method, route, status, elapsed)
            path = loggable_path(scope["path"])
            log.info(
                "%s %s %d",
                method,
                path,
                status,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id.reset(token)

    async def _idempotent(self, exchange: _Exchange, raw_key: bytes) -> None:
        """A POST with an ``Idempotency-Key`` (web/idempotency.py)."""
        scope = exchange.scope
        key = raw_key.decode("latin-1").strip()
        if not 1 <= len(key) <= idempotency.MAX_KEY_LENGTH:
            await idempotency.bad_key()(scope, exchange.receive, exchange.send_message)
            return
        # Read whole (within the limit) before anything is claimed.
        body = await idempotency.read_body(exchange.limited_receive)
        principal = idempotency.principal_of(scope)
        path = scope["path"]
        fingerprint = idempotency.fingerprint(path, scope.get("query_string", b""), body)
        try:
            if self.unfinished:
                await run_in_threadpool(self.unfinished.retry, self.platform)
            decision = await run_in_threadpool(
                idempotency.claim, self.platform, principal, key, path, fingerprint
            )
        except SQLAlchemyError as exc:
            if not is_unavailable(exc):
                raise
            log.warning("database unavailable on %s %s: %s", scope["method"], path, reason(exc))
            await database_unavailable()(scope, exchange.receive, exchange.send_message)
            return
        exchange.unfinished = self.unfinished
        if decision is not None:
            await decision(scope, exchange.receive, exchange.send_message)
            return
        exchange.state["idempotency_key"] = key
        exchange.idempotent = True
        exchange.principal = principal
        exchange.key = key
        sent_body = False

        async def replay_body() -> Message:
            nonlocal sent_body
            if sent_body:
                return await exchange.receive()
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay_body, exchange.send_message)

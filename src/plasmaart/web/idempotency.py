"""``Idempotency-Key`` on POST: the same key and body replay the first response
(``Idempotent-Replayed: true``); another body, or a repeat while the first is
still running, gets 409 ``idempotency_conflict``. Records are kept 24 hours.

Keys are scoped to the credential that sent them (API key or session), so one
client's key never meets another's. Responses that set cookies (sign-up,
login) are not stored: session tokens live only as hashes; repeating such a
request runs it again. A 5xx or a 429 is not stored either, so a retry runs again. A
record left "running" by a process that died is taken over after
``Settings.idempotency_takeover_s`` (30 s); handlers that write can read the key from
``request.state.idempotency_key`` to make the re-run a no-op.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plasmaart.accounts.credentials import IDEMPOTENCY_RETENTION
from plasmaart.accounts.repository import AnyRow
from plasmaart.bootstrap import Platform
from plasmaart.clock import as_utc
from plasmaart.db.tables import idempotency_records
from plasmaart.web.problems import problem

HEADER = b"idempotency-key"
# Set by endpoints whose answer carries a secret shown only once (an API key,
# an invitation token): the listed top-level JSON fields are stored as null,
# so a replay says ``Idempotent-Secret-Withheld: true`` instead of the secret.
SECRET_FIELDS_HEADER = "x-secret-fields"  # noqa: S105 - a header name
MAX_KEY_LENGTH = 255


def _principal(scope: Scope) -> str:
    headers = dict(scope["headers"])
    credential = headers.get(b"authorization")
    if credential is None:
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == b"pa_session":
                credential = b"session:" + value
    if credential is None:
        client = scope.get("client") or ("unknown", 0)
        credential = f"anonymous:{client[0]}".encode()
    return hashlib.sha256(credential).hexdigest()[:40]


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw_key = dict(scope["headers"]).get(HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            response = problem(
                422,
                "invalid_input",
                "Invalid input",
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
                errors=[{"field": "Idempotency-Key", "message": "bad length"}],
            )
            await response(scope, receive, send)
            return

        body = await _read_body(receive)
        principal = _principal(scope)
        path = scope["path"]
        fingerprint = hashlib.sha256(
            b"\n".join([path.encode(), scope.get("query_string", b""), body])
        ).hexdigest()

        decision = await run_in_threadpool(_claim, self.platform, principal, key, path, fingerprint)
        if decision is not None:
            await decision(scope, receive, send)
            return
        scope.setdefault("state", {})["idempotency_key"] = key

        start: Message | None = None
        chunks: list[bytes] = []

        finished = False

        async def capture(message: Message) -> None:
            nonlocal start, finished
            if message["type"] == "http.response.start":
                start = message
                message = {
                    **message,
                    "headers": [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != SECRET_FIELDS_HEADER.encode()
                    ],
                }
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and not finished:
                    # Stored before the last byte goes out: a client that
                    # repeats the request as soon as it has the answer must
                    # get the replay, not "still running".
                    finished = True
                    await run_in_threadpool(
                        _finish, self.platform, principal, key, start, b"".join(chunks)
                    )
            await send(message)

        sent_body = False

        async def replay_body() -> Message:
            nonlocal sent_body
            if sent_body:
                return await receive()
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay_body, capture)
        finally:
            if not finished:
                await run_in_threadpool(
                    _finish, self.platform, principal, key, start, b"".join(chunks)
                )


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def _claim(
    platform: Platform, principal: str, key: str, path: str, fingerprint: str
) -> ASGIApp | None:
    """Insert a running record, or decide the answer from an existing one."""
    now = platform.clock.now()
    table = idempotency_records
    where = (table.c.principal == principal, table.c.key == key)
    try:
        with platform.db.write() as conn:
            row = conn.execute(select(table).where(*where)).one_or_none()
            if row is not None:
                age = now - as_utc(row.created_at)
                expired = age > IDEMPOTENCY_RETENTION
                takeover = timedelta(seconds=platform.settings.idempotency_takeover_s)
                abandoned = row.status == "running" and age > takeover
                if not (expired or abandoned):
                    return _answer(row, path, fingerprint)
                conn.execute(delete(table).where(*where))
            conn.execute(
                insert(table).values(
                    principal=principal,
                    key=key,
                    method="POST",
                    path=path,
                    request_hash=fingerprint,
                    status="running",
                    created_at=now,
                )
            )
    except IntegrityError:
        # Another request with this key claimed it between our read and insert.
        return _in_progress()
    return None


def _in_progress() -> ASGIApp:
    return problem(
        409,
        "idempotency_conflict",
        "Idempotency key in use",
        "a request with this Idempotency-Key is still running; retry shortly",
        {"Retry-After": "1"},
        in_progress=True,
    )


def _answer(row: AnyRow, path: str, fingerprint: str) -> ASGIApp:
    if row.request_hash != fingerprint or row.path != path:
        return problem(
            409,
            "idempotency_conflict",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request",
        )
    if row.status == "running":
        return _in_progress()
    headers = dict(json.loads(row.response_headers or "[]"))
    headers["idempotent-replayed"] = "true"
    headers.pop("content-length", None)
    return Response(
        content=row.response_body or b"",
        status_code=row.response_status,
        headers=headers,
    )


def _finish(
    platform: Platform, principal: str, key: str, start: Message | None, body: bytes
) -> None:
    table = idempotency_records
    where = (table.c.principal == principal, table.c.key == key)
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in (start or {}).get("headers", [])
    ]
    secret_fields = [
        field.strip()
        for name, value in headers
        if name.lower() == SECRET_FIELDS_HEADER
        for field in value.split(",")
    ]
    if secret_fields:
        headers = [(n, v) for n, v in headers if n.lower() != SECRET_FIELDS_HEADER]
        headers.append(("idempotent-secret-withheld", "true"))
        document = json.loads(body)
        for field in secret_fields:
            if field in document:
                document[field] = None
        body = json.dumps(document).encode()
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    # A 429 (rate_limited, concurrency_limit) says "try again later": stored,
    # the retry the client makes after Retry-After would replay the refusal.
    keep = (
        start is not None
        and int(start["status"]) < 500
        and int(start["status"]) != 429
        and not any(name.lower() == "set-cookie" for name, _ in headers)
    )
    with platform.db.write() as conn:
        if not keep or start is None:
            conn.execute(delete(table).where(*where))
            return
        conn.execute(
            update(table)
            .where(*where)
            .values(
                status="done",
                response_status=int(start["status"]),
                response_headers=json.dumps(headers),
                response_body=body,
            )
        )

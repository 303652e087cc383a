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

The edge (web/edge.py) runs these steps: ``read_body``, ``principal_of``,
``fingerprint``, ``claim`` (a replay, a conflict, or a running record), and
``finish`` with the answer once its last byte is about to go out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import deque
from datetime import timedelta

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope

from plasmaart.accounts.credentials import IDEMPOTENCY_RETENTION
from plasmaart.db.disk_full import StorageFull
from plasmaart.db.outage import is_unavailable
from plasmaart.platform import Platform
from plasmaart.web import idempotency_repository as records
from plasmaart.web.idempotency_repository import IdempotencyRecord
from plasmaart.web.problems import problem

HEADER = b"idempotency-key"
# Set by endpoints whose answer carries a secret shown only once (an API key,
# an invitation token): the listed top-level JSON fields are stored as null,
# so a replay says ``Idempotent-Secret-Withheld: true`` instead of the secret.
SECRET_FIELDS_HEADER = "x-secret-fields"  # noqa: S105 - a header name
MAX_KEY_LENGTH = 255
log = logging.getLogger(__name__)


def principal_of(scope: Scope) -> str:
    """The hash of the credential that sent the request (API key, session,
    or the client's address when anonymous): the scope of its keys."""
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


def fingerprint(path: str, query: bytes, body: bytes) -> str:
    """What a repeat must match to be replayed: the path, query and body."""
    return hashlib.sha256(b"\n".join([path.encode(), query, body])).hexdigest()


def bad_key() -> ASGIApp:
    return problem(
        422,
        "invalid_input",
        "Invalid input",
        f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
        errors=[{"field": "Idempotency-Key", "message": "bad length"}],
    )


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def claim(
    platform: Platform, principal: str, key: str, path: str, fingerprint: str
) -> ASGIApp | None:
    """Insert a running record, or decide the answer from an existing one.
    Ages are real time (``job_clock``), not the sandbox's test clock: a
    billing-time jump must neither expire a key nor take over a request
    still running (a clock advance retried after a lost answer advanced
    twice that way)."""
    now = platform.job_clock.now()
    try:
        with platform.db.write() as conn:
            record = records.find(conn, principal, key)
            if record is not None:
                age = now - record.created_at
                expired = age > IDEMPOTENCY_RETENTION
                takeover = timedelta(seconds=platform.settings.idempotency_takeover_s)
                abandoned = record.status == "running" and age > takeover
                if not (expired or abandoned):
                    return _answer(record, path, fingerprint)
                records.forget(conn, principal, key)
            records.claim(conn, principal, key, path=path, request_hash=fingerprint, now=now)
    except IntegrityError:
        # Another request with this key claimed it between our read and insert.
        return _in_progress()
    except StorageFull as full:
        # The disk is full: nothing was claimed, the request is not run.
        return problem(
            full.status,
            full.code,
            full.title,
            full.detail,
            {"Retry-After": str(full.extra["retry_after"])},
            **full.extra,
        )
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


def _answer(record: IdempotencyRecord, path: str, fingerprint: str) -> ASGIApp:
    if record.request_hash != fingerprint or record.path != path:
        return problem(
            409,
            "idempotency_conflict",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request",
        )
    if record.answer is None:  # still running
        return _in_progress()
    headers = dict(json.loads(record.answer.headers))
    headers["idempotent-replayed"] = "true"
    headers.pop("content-length", None)
    return Response(
        content=record.answer.body,
        status_code=record.answer.status,
        headers=headers,
    )


def finish(
    platform: Platform, principal: str, key: str, start: Message | None, body: bytes
) -> None:
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
    try:
        _record_answer(platform, principal, key, start if keep else None, headers, body)
    except StorageFull:
        # The disk is full (logged by db/disk_full.py): the answer still goes
        # out; the record stays "running" and a retry with this key is taken
        # over after ``idempotency_takeover_s``, as after a crash (the
        # handlers that write key their rows by it, so nothing runs twice).
        return


def _record_answer(
    platform: Platform,
    principal: str,
    key: str,
    start: Message | None,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    with platform.db.write() as conn:
        if start is None:
            records.forget(conn, principal, key)
            return
        records.store_answer(
            conn,
            principal,
            key,
            status=int(start["status"]),
            headers=json.dumps(headers),
            body=body,
        )


class Unfinished:
    """Answers whose record ``finish`` could not write: the database went
    away between the claim and the answer (a 503 whose record must be
    forgotten, or a 2xx whose record must be stored). Kept in this process,
    at most ``LIMIT``, and written by ``retry`` before its next claim, so
    that a client's retry with the key, once the database is back, gets the
    replay (or runs again) instead of "still running" until the takeover."""

    LIMIT = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[str, str, Message | None, bytes]] = deque(maxlen=self.LIMIT)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, principal: str, key: str, start: Message | None, body: bytes) -> None:
        with self._lock:
            self._items.append((principal, key, start, body))

    def retry(self, platform: Platform) -> None:
        """Write the kept records; those the database still cannot take stay."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        for index, (principal, key, start, body) in enumerate(items):
            try:
                finish(platform, principal, key, start, body)
            except SQLAlchemyError as exc:
                if is_unavailable(exc):
                    with self._lock:
                        self._items.extendleft(reversed(items[index:]))
                    return
                log.exception("could not write the idempotency record of a past answer")

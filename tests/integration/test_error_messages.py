"""The API's refusals in its own words, on SQLite and PostgreSQL.

* A body that is not JSON, is empty, is JSON but not an object, or was not
  sent as JSON is named as such (with the line and column of a JSON error),
  with ``field`` ``body``; never a byte offset as a field name.
* pydantic's wording ("Input should be …", "Value error, …", "Field
  required", links to its docs) never reaches a client: a walk over every
  route of the OpenAPI document with bad bodies and bad query values checks
  every message.
* Body limits are stated as the dashboard states them ("10 MB"), and a body
  without a Content-Length (chunked) that passes the limit is a 413 too, with
  nothing written.
* Sign-up with a registered address, while address verification is off:
  the same refusal as before (the contract's 201 logs the new account in,
  so the answers cannot be alike), after the same work as a sign-up (the
  password is hashed either way), and the address's owner is told, at most
  once a day. With verification on, both answer alike: see
  test_email_verification.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from io import BytesIO
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from plasmaart.accounts import service as account_service
from plasmaart.clock import ManualClock
from plasmaart.db.tables import api_keys, notification_outbox, uploads, users
from plasmaart.media import uploads as upload_rules
from plasmaart.media.uploads import MAX_UPLOAD_BYTES
from plasmaart.notify.delivery import OutboxDelivery
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.live_server import live_server

PROBLEM = "application/problem+json"
# pydantic's phrasing, none of which may reach a client.
PYDANTIC_PHRASES = (
    "Input should",
    "Value error",
    "Assertion failed",
    "valid dictionary",
    "Field required",
    "Extra inputs",
    "String should",
    "List should",
    "JSON decode error",
    "pydantic",
    "errors.pydantic.dev",
)


def pydantic_phrasing(answer: dict[str, Any]) -> list[str]:
    """Every message of a problem that uses pydantic's wording."""
    texts = [str(answer.get("detail", ""))]
    texts += [str(e.get("message", "")) for e in answer.get("errors", [])]
    return [t for t in texts if any(p.lower() in t.lower() for p in PYDANTIC_PHRASES)]


def count(platform: Platform, table: Any) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def refused(answer: httpx.Response) -> list[dict[str, str]]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert body["code"] == "invalid_input"
    assert not pydantic_phrasing(body), body
    errors: list[dict[str, str]] = body["errors"]
    return errors


@pytest.fixture
def sam(platform: Platform) -> TestUser:
    return make_user(platform, "sam@example.com", plan="pro", credits=1_000)


# -- bodies that are not a JSON object --------------------------------------------


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [
        pytest.param(b'{"name": "a" "b"}', 1, 14, id="one-line"),
        pytest.param(b'{\n  "name": "laptop",\n  "x": tru\n}', 3, 8, id="third-line"),
        pytest.param(b'{"name": "caf\xc3\xa9",}', 1, 17, id="after-non-ascii"),
    ],
)
def test_malformed_json_names_line_and_column(
    client: TestClient, sam: TestUser, content: bytes, line: int, column: int
) -> None:
    answer = client.post(
        "/v1/api-keys",
        content=content,
        headers={**sam.auth, "Content-Type": "application/json"},
    )
    message = f"the body is not valid JSON (line {line}, column {column})"
    assert refused(answer) == [{"field": "body", "message": message}]
    assert answer.json()["detail"] == message


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        pytest.param(
            b"", "application/json", "the body must be a JSON object; it is empty", id="empty"
        ),
        pytest.param(b"[1, 2]", "application/json", "the body must be a JSON object", id="array"),
        pytest.param(
            b'"laptop"', "application/json", "the body must be a JSON object", id="string"
        ),
        pytest.param(b"null", "application/json", "the body must be a JSON object", id="null"),
        pytest.param(
            b'{"name": "laptop"}',
            "text/plain",
            "the body must be a JSON object sent as application/json",
            id="not-sent-as-json",
        ),
    ],
)
def test_a_body_that_is_not_a_json_object_says_so(
    client: TestClient,
    platform: Platform,
    sam: TestUser,
    content: bytes,
    content_type: str,
    message: str,
) -> None:
    before = count(platform, api_keys)
    answer = client.post(
        "/v1/api-keys", content=content, headers={**sam.auth, "Content-Type": content_type}
    )
    assert refused(answer) == [{"field": "body", "message": message}]
    assert count(platform, api_keys) == before


# -- field messages -----------------------------------------------------------------


def test_field_messages_are_the_projects_own(
    client: TestClient, platform: Platform, sam: TestUser
) -> None:
    errors = refused(
        client.post(
            "/v1/auth/signup",
            json={"email": 5, "password": "x" * 2000, "role": "admin"},
        )
    )
    assert errors == [
        {"field": "email", "message": "must be a string"},
        {"field": "password", "message": "must be at most 1024 characters"},
        {"field": "role", "message": "is not a field of this request"},
    ]
    assert refused(client.post("/v1/auth/signup", json={})) == [
        {"field": "email", "message": "is required"},
        {"field": "password", "message": "is required"},
    ]
    assert refused(client.post("/v1/api-keys", json={"name": ""}, headers=sam.auth)) == [
        {"field": "name", "message": "must not be empty"}
    ]
    # Our validators' own messages, without pydantic's "Value error, ".
    assert refused(client.post("/v1/api-keys", json={"name": "a\u0000b"}, headers=sam.auth)) == [
        {"field": "name", "message": "must not contain NUL characters"}
    ]
    # Query values.
    assert refused(client.get("/v1/ledger?limit=many", headers=sam.auth)) == [
        {"field": "limit", "message": "must be a whole number"}
    ]
    assert refused(client.get("/v1/ledger?limit=0", headers=sam.auth)) == [
        {"field": "limit", "message": "must be at least 1"}
    ]
    assert refused(client.get("/v1/ledger?limit=201", headers=sam.auth)) == [
        {"field": "limit", "message": "must be at most 200"}
    ]
    admin = make_user(platform, "root@example.com", admin=True)
    status = client.get("/v1/admin/users?status=gone&q=" + "a" * 321, headers=admin.auth)
    assert refused(status) == [
        {"field": "q", "message": "must be at most 320 characters"},
        {"field": "status", "message": "must be one of: active, suspended"},
    ]
    settings = client.patch("/v1/me/settings", json={"remove_watermark": "maybe"}, headers=sam.auth)
    assert refused(settings) == [{"field": "remove_watermark", "message": "must be true or false"}]
    detail = client.post("/v1/auth/signup", json={}).json()["detail"]
    assert detail == "email: is required; password: is required"


def test_nested_fields_are_dotted_paths(client: TestClient, sam: TestUser) -> None:
    answer = client.post(
        "/v1/generations",
        json={"model": "flux-schnell", "prompt": "a fox", "num_outputs": "two", "params": []},
        headers=sam.auth,
    )
    errors = refused(answer)
    assert {"field": "num_outputs", "message": "must be a whole number"} in errors
    assert {"field": "params", "message": "must be a JSON object"} in errors


# -- every route ----------------------------------------------------------------------

_WRONG: dict[str, Any] = {
    "string": 12345,
    "integer": "not a number",
    "number": "not a number",
    "boolean": "maybe",
    "object": [1, 2],
    "array": "not a list",
}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved: dict[str, Any] = spec
        for part in ref.removeprefix("#/").split("/"):
            resolved = resolved[part]
        return resolved
    return schema


def _types(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    schema = _resolve(spec, schema)
    if "type" in schema:
        return {str(schema["type"])}
    found: set[str] = set()
    for option in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        found |= _types(spec, option)
    if "properties" in _resolve(spec, schema):
        found.add("object")
    return found


def bad_requests(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx keyword arguments) for bad bodies and bad query
    values, over every operation of the OpenAPI document."""
    for path, operations in spec["paths"].items():
        url = re.sub(r"\{[^}]+\}", "xyz", path)
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = _resolve(spec, content["application/json"]["schema"])
                yield method, url, {"json": {"not_a_field_of_anything": 1}}
                yield method, url, {"json": []}
                yield method, url, {"content": b'{"a": }'}
                yield method, url, {"content": b"", "headers": {"Content-Type": "application/json"}}
                for name, prop in schema.get("properties", {}).items():
                    for kind in sorted(_types(spec, prop)):
                        if kind in _WRONG:
                            yield method, url, {"json": {name: _WRONG[kind]}}
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "query":
                    continue
                kinds = _types(spec, parameter.get("schema", {}))
                for kind in sorted(kinds & {"integer", "number", "boolean", "string"}):
                    value = "x" if kind != "string" else "\u00e9" * 5000
                    yield method, url, {"params": {parameter["name"]: value}}


def test_no_route_answers_in_pydantic_words(client: TestClient, platform: Platform) -> None:
    admin = make_user(platform, "walker@example.com", admin=True, plan="studio", credits=100)
    spec = client.get("/openapi.json").json()
    checked, offending = 0, []
    for method, url, kwargs in bad_requests(spec):
        headers = {**admin.auth, **kwargs.pop("headers", {})}
        if "content" in kwargs:
            headers.setdefault("Content-Type", "application/json")
        answer = client.request(method.upper(), url, headers=headers, **kwargs)
        assert answer.status_code < 500, (method, url, kwargs, answer.text)
        if answer.status_code != 422:
            continue
        body = answer.json()
        checked += 1
        for error in body.get("errors", []):
            assert isinstance(error["field"], str), body
            assert not error["field"].isdigit(), body
            assert isinstance(error["message"], str), body
            assert error["message"], body
        if pydantic_phrasing(body):
            offending.append(f"{method.upper()} {url} {kwargs}: {pydantic_phrasing(body)}")
    assert not offending, "\n".join(offending)
    # The walk reaches validation across the API, not a handful of routes.
    assert checked >= 150, checked


# -- body limits ------------------------------------------------------------------------


def png_of(size: int) -> bytes:
    """A PNG of at least ``size`` bytes (noise does not compress)."""
    side = int((size / 3) ** 0.5) + 1
    image = Image.frombytes("RGB", (side, side), bytes(range(256)) * (side * side * 3 // 256 + 1))
    buffer = BytesIO()
    image.save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def test_limits_are_stated_as_the_dashboard_states_them(
    client: TestClient, platform: Platform, sam: TestUser
) -> None:
    format_size = upload_rules.format_size
    assert format_size(MAX_UPLOAD_BYTES) == "10 MB"
    assert (format_size(1024 * 1024), format_size(1536 * 1024), format_size(2048)) == (
        "1 MB",
        "1.5 MB",
        "2 KB",
    )
    too_big = client.post(
        "/v1/api-keys",
        content=b'{"name": "' + b"x" * 2_000_000 + b'"}',
        headers={**sam.auth, "Content-Type": "application/json"},
    )
    assert (too_big.status_code, too_big.json()["code"]) == (413, "payload_too_large")
    assert too_big.json()["detail"] == "the request body is limited to 1 MB"
    upload = client.post(
        "/v1/uploads",
        files={"file": ("big.png", b"\x89PNG" + b"\0" * (12 * 1024 * 1024), "image/png")},
        headers=sam.auth,
    )
    assert (upload.status_code, upload.json()["code"]) == (413, "payload_too_large")
    assert upload.json()["detail"] == "an uploaded file is limited to 10 MB"
    assert upload.json()["max_bytes"] == MAX_UPLOAD_BYTES
    # Between the file's limit and the envelope's, the upload's own check says it.
    between = png_of(MAX_UPLOAD_BYTES + 200_000)
    assert len(between) < MAX_UPLOAD_BYTES + 1024 * 1024 - 1000
    inspected = client.post(
        "/v1/uploads", files={"file": ("big.png", between, "image/png")}, headers=sam.auth
    )
    assert inspected.status_code == 422, inspected.text
    assert re.fullmatch(
        r"the file is 10\.[1-9] MB; uploads are at most 10 MB", inspected.json()["detail"]
    )
    assert "MiB" not in inspected.json()["detail"]
    assert count(platform, uploads) == 0


def _chunks(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(chunk, total - sent)
        sent += piece
        yield b"\0" * piece


def _multipart(total: int) -> Iterator[bytes]:
    boundary = b"plasmaart-test-boundary"
    yield b"--" + boundary + b"\r\n"
    yield b'Content-Disposition: form-data; name="file"; filename="big.png"\r\n'
    yield b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n"
    yield from _chunks(total)
    yield b"\r\n--" + boundary + b"--\r\n"


MULTIPART = "multipart/form-data; boundary=plasmaart-test-boundary"


def test_a_chunked_oversized_upload_is_413_in_process(
    client: TestClient, platform: Platform, sam: TestUser
) -> None:
    answer = client.post(
        "/v1/uploads",
        content=_multipart(12 * 1024 * 1024),
        headers={**sam.auth, "Content-Type": MULTIPART},
    )
    assert "content-length" not in answer.request.headers
    assert (answer.status_code, answer.json()["code"]) == (413, "payload_too_large")
    assert answer.json()["detail"] == "an uploaded file is limited to 10 MB"
    json_body = client.post(
        "/v1/api-keys",
        content=_chunks(2 * 1024 * 1024),
        headers={**sam.auth, "Content-Type": "application/json"},
    )
    assert (json_body.status_code, json_body.json()["code"]) == (413, "payload_too_large")
    # With an idempotency key (its middleware reads the body first) too.
    for _ in range(2):
        keyed = client.post(
            "/v1/api-keys",
            content=_chunks(2 * 1024 * 1024),
            headers={**sam.auth, "Content-Type": "application/json", "Idempotency-Key": "k1"},
        )
        assert (keyed.status_code, keyed.json()["code"]) == (413, "payload_too_large")
    assert count(platform, uploads) == 0
    assert count(platform, api_keys) == 1


def test_a_chunked_oversized_upload_is_413_over_http(platform: Platform, sam: TestUser) -> None:
    media = platform.settings.media_dir / "uploads"
    with live_server(platform) as base, httpx.Client(base_url=base, timeout=30) as http:
        answer = http.post(
            "/v1/uploads",
            content=_multipart(12 * 1024 * 1024),
            headers={**sam.auth, "Content-Type": MULTIPART},
        )
        assert answer.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in answer.request.headers
        assert (answer.status_code, answer.json()["code"]) == (413, "payload_too_large")
        assert answer.json()["detail"] == "an uploaded file is limited to 10 MB"
        # A chunked upload within the limit still goes through.
        small = png_of(10_000)
        fine = http.post(
            "/v1/uploads",
            content=iter([small[:5000], small[5000:]]),
            headers={**sam.auth, "Content-Type": "image/png"},
        )
        assert fine.request.headers["transfer-encoding"] == "chunked"
    assert count(platform, uploads) == (1 if fine.status_code == 201 else 0)
    stored = list(media.rglob("*")) if media.exists() else []
    assert len([p for p in stored if p.is_file()]) == count(platform, uploads)


# -- sign-up with a registered address ------------------------------------------------------


def outbox_rows(platform: Platform) -> list[Any]:
    with platform.db.read() as conn:
        return list(
            conn.execute(
                select(notification_outbox).order_by(notification_outbox.c.created_at)
            ).all()
        )


def test_signup_with_a_registered_address_tells_its_owner(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    owner = make_user(platform, "owner@example.com")
    users_before = count(platform, users)
    answer = client.post(
        "/v1/auth/signup", json={"email": " Owner@Example.com", "password": PASSWORD}
    )
    assert (answer.status_code, answer.json()["code"]) == (409, "email_taken")
    assert "set-cookie" not in answer.headers
    assert count(platform, users) == users_before
    [row] = outbox_rows(platform)
    assert (row.user_id, row.kind) == (owner.id, "account.signup_attempt")
    assert row.title == "Someone tried to sign up with your address"
    assert "owner@example.com" in row.body
    assert "log in" in row.body
    assert json.loads(row.data) == {"email": "owner@example.com"}
    # Repeated attempts the same day do not flood the owner's inbox.
    for _ in range(3):
        again = client.post(
            "/v1/auth/signup", json={"email": "owner@example.com", "password": PASSWORD}
        )
        assert again.status_code == 409
    assert len(outbox_rows(platform)) == 1
    clock.advance(timedelta(days=1))
    client.post("/v1/auth/signup", json={"email": "owner@example.com", "password": PASSWORD})
    assert len(outbox_rows(platform)) == 2
    # A new address warns nobody (its own welcome is queued), and a refusal
    # before the address is looked at tells nobody.
    assert (
        client.post(
            "/v1/auth/signup", json={"email": "new@example.com", "password": PASSWORD}
        ).status_code
        == 201
    )
    client.cookies.clear()
    weak = client.post("/v1/auth/signup", json={"email": "owner@example.com", "password": "short"})
    assert weak.status_code == 422
    assert [row.kind for row in outbox_rows(platform)] == [
        "account.signup_attempt",
        "account.signup_attempt",
        "account.welcome",
    ]


@dataclass
class RecordingMailer:
    sent: list[dict[str, str]] = field(default_factory=list)

    def send(self, message: EmailMessage) -> None:
        self.sent.append(
            {
                "to": str(message["To"]),
                "subject": str(message["Subject"]),
                "id": str(message["Message-ID"]),
            }
        )


def test_the_owner_is_told_in_the_app_and_by_email(client: TestClient, platform: Platform) -> None:
    owner = make_user(platform, "told@example.com")
    answer = client.post(
        "/v1/auth/signup", json={"email": "told@example.com", "password": PASSWORD}
    )
    assert answer.status_code == 409
    mailer = RecordingMailer()
    result = OutboxDelivery(
        platform.db,
        platform.clock,
        platform.notifications,
        mailer,
        sender="noreply@plasmaart.test",
        support_email=platform.settings.support_email,
    ).run("w")
    assert (result.claimed, result.delivered) == (1, 1)
    [mail] = mailer.sent
    assert (mail["to"], mail["subject"]) == (
        "told@example.com",
        "Someone tried to sign up with your address",
    )
    notices = client.get("/v1/notifications", headers=owner.auth).json()["data"]
    assert [(n["kind"], n["title"]) for n in notices] == [
        ("account.signup_attempt", "Someone tried to sign up with your address")
    ]


def test_a_registered_address_costs_a_password_hash_like_a_signup(
    client: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user(platform, "timed@example.com")
    hashed: list[str] = []
    real = account_service.hash_password

    def counting(password: str) -> str:
        hashed.append(password)
        return real(password)

    monkeypatch.setattr(account_service, "hash_password", counting)
    fresh = client.post(
        "/v1/auth/signup", json={"email": "fresh@example.com", "password": PASSWORD}
    )
    assert fresh.status_code == 201
    client.cookies.clear()
    taken = client.post(
        "/v1/auth/signup", json={"email": "timed@example.com", "password": PASSWORD}
    )
    assert taken.status_code == 409
    assert hashed == [PASSWORD, PASSWORD]

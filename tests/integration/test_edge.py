"""The edge (web/edge.py): one ASGI callable in front of the app does the
request id, the body limit, the NUL refusal, idempotency, the rate-limit and
security headers, the metrics and the access log, and answers go out through
orjson byte for byte as ``json`` wrote them."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.db.tables import idempotency_records
from plasmaart.platform import Platform
from plasmaart.web.edge import MAX_BODY, SECURITY_HEADERS, Edge
from plasmaart.web.responses import FastJSONResponse
from tests.support.accounts import make_user

ONE_IMAGE = {"model": "flux-schnell", "prompt": "a red fox in snow"}
RATE_LIMIT = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")


def _records(platform: Platform) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(idempotency_records)).scalar_one())


def _series(metrics: str, method: str, route: str, status: int) -> float:
    """The count of one ``plasmaart_http_requests_total`` series (0 if absent)."""
    pattern = (
        r"^plasmaart_http_requests_total\{"
        rf'method="{method}",route="{re.escape(route)}",status="{status}"'
        r"\} (\S+)$"
    )
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_one_edge_is_the_only_middleware_of_the_app(client: TestClient) -> None:
    app = client.app
    assert [entry.cls for entry in app.user_middleware] == [Edge]  # type: ignore[attr-defined]


def test_refusals_at_the_edge_reach_the_metrics_and_the_access_log(
    client: TestClient, platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    user = make_user(platform, "edge@example.com")
    with caplog.at_level(logging.INFO, logger="plasmaart.access"):
        too_big = client.post(
            "/v1/api-keys",
            content=b"x" * (MAX_BODY + 1),
            headers={**user.auth, "Content-Type": "application/json"},
        )
        nul = client.get("/v1/models", params={"cursor": "a\x00b"})
    assert (too_big.status_code, too_big.json()["code"]) == (413, "payload_too_large")
    assert (nul.status_code, nul.json()["code"]) == (422, "invalid_input")
    for answer in (too_big, nul):
        assert re.fullmatch(r"[0-9a-f]{16}", answer.headers["x-request-id"])
        for name, value in SECURITY_HEADERS:
            assert answer.headers[name.decode()] == value.decode()
    metrics = client.get("/metrics").text
    assert _series(metrics, "POST", "unmatched", 413) == 1.0
    assert _series(metrics, "GET", "unmatched", 422) == 1.0
    lines = [(r.method, r.path, r.status) for r in caplog.records if r.name == "plasmaart.access"]  # type: ignore[attr-defined]
    assert lines == [("POST", "/v1/api-keys", 413), ("GET", "/v1/models", 422)]
    assert _records(platform) == 0


def test_the_secret_marker_never_reaches_the_client(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "marker@example.com")
    plain = client.post("/v1/api-keys", json={"name": "plain"}, headers=user.auth)
    keyed = client.post(
        "/v1/api-keys", json={"name": "keyed"}, headers={**user.auth, "Idempotency-Key": "m-1"}
    )
    for answer in (plain, keyed):
        assert answer.status_code == 201, answer.text
        assert answer.json()["key"].startswith("pa_live_")
        assert "x-secret-fields" not in answer.headers


def test_a_replay_gets_fresh_edge_headers_and_the_store_keeps_none(
    client: TestClient, platform: Platform
) -> None:
    user = make_user(platform, "replay@example.com", credits=100)
    headers = {**user.auth, "Idempotency-Key": "sub-1"}
    first = client.post(
        "/v1/generations", json=ONE_IMAGE, headers={**headers, "X-Request-ID": "first-request"}
    )
    again = client.post(
        "/v1/generations", json=ONE_IMAGE, headers={**headers, "X-Request-ID": "second-request"}
    )
    assert first.status_code == again.status_code == 201, first.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert (first.headers["x-request-id"], again.headers["x-request-id"]) == (
        "first-request",
        "second-request",
    )
    # The first answer was counted by the rate limiter; the replay was not
    # (the app did not run), as before the edge.
    assert first.headers["ratelimit-limit"] == "10"
    assert not any(name in again.headers for name in RATE_LIMIT)
    for answer in (first, again):
        for name, value in SECURITY_HEADERS:
            assert answer.headers.get_list(name.decode()) == [value.decode()]
    with platform.db.read() as conn:
        stored = conn.execute(select(idempotency_records.c.response_headers)).scalar_one()
    names = {name for name, _ in json.loads(stored)}
    assert names.isdisjoint(
        {"x-request-id", *RATE_LIMIT, *(n.decode() for n, _ in SECURITY_HEADERS)}
    )


def _chunks(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        yield b" " * 65536
        sent += 65536


def test_a_chunked_body_over_the_limit_with_a_key_claims_nothing(
    client: TestClient, platform: Platform
) -> None:
    user = make_user(platform, "chunky@example.com")
    answer = client.post(
        "/v1/api-keys",
        content=_chunks(2 * MAX_BODY),
        headers={**user.auth, "Content-Type": "application/json", "Idempotency-Key": "c-1"},
    )
    assert (answer.status_code, answer.json()["code"]) == (413, "payload_too_large")
    assert _records(platform) == 0
    metrics = client.get("/metrics").text
    assert _series(metrics, "POST", "unmatched", 413) == 1.0


def test_json_answers_are_written_by_orjson_as_json_wrote_them(
    client: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[bytes] = []
    render = FastJSONResponse.render

    def spy(self: FastJSONResponse, content: object) -> bytes:
        body = render(self, content)
        rendered.append(body)
        return body

    monkeypatch.setattr(FastJSONResponse, "render", spy)
    user = make_user(platform, "zoë@example.com")
    answers = [
        client.get("/v1/generations/gen_nope", headers=user.auth),
        client.post(
            "/v1/generations", json={"model": "nope", "prompt": "ünïcode ✓"}, headers=user.auth
        ),
        client.get("/v1/nowhere"),
    ]
    assert [a.headers["content-type"] for a in answers] == ["application/problem+json"] * 3
    assert [a.content for a in answers] == rendered
    for answer in answers:
        # What Starlette's JSONResponse (json.dumps) writes for the same document.
        document = json.loads(answer.content)
        assert answer.content == json.dumps(
            document, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")

"""The Python client without a server: retries and their waits, the
Idempotency-Key kept across attempts, errors mapped from responses, the
event stream's reconnects, and reading answers the client does not fully
know. Answers come from ``httpx.MockTransport``; waits go to a recorder."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from plasmaart.client import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    Event,
    FieldError,
    InsufficientCreditsError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnexpectedResponse,
)
from plasmaart.client.models import Balance, decode

BASE = "http://plasma.test"
TEAM = {
    "id": "team_1",
    "name": "Studio",
    "owner_id": "usr_1",
    "created_at": "2026-01-01T00:00:00Z",
    "seats": {"used": 1, "pending": 0, "total": 5},
}
PROBLEM = "application/problem+json"

Handler = Callable[[httpx.Request], httpx.Response]


def problem(
    status: int,
    code: str,
    headers: dict[str, str] | None = None,
    *,
    title: str | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {
        "type": "t",
        "title": title or code,
        "status": status,
        "detail": f"{code}!",
        "code": code,
    }
    return httpx.Response(
        status, json={**body, **extra}, headers={"content-type": PROBLEM, **(headers or {})}
    )


class Script:
    """Answers requests in order from a list (a response, or an exception to
    raise) and remembers the requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            if isinstance(answer, httpx.RequestError):
                answer.request = request
            raise answer
        return answer

    def keys(self) -> list[str | None]:
        return [request.headers.get("idempotency-key") for request in self.requests]


class Waits(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class AsyncWaits(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(script: Script, waits: Waits, **options: Any) -> Client:
    return Client(
        BASE, "pa_live_test", transport=httpx.MockTransport(script), sleep=waits, **options
    )


@pytest.fixture
def waits() -> Waits:
    return Waits()


# -- sync: what is retried, with which key, after how long ----------------------


def test_a_503_is_retried_with_the_same_idempotency_key(waits: Waits) -> None:
    script = Script(problem(503, "unavailable"), httpx.Response(201, json=TEAM))
    with client_for(script, waits, backoff=0.5) as client:
        team = client.create_team("Studio")
    assert team.id == "team_1"
    assert team.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    keys = script.keys()
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    assert [json.loads(r.content) for r in script.requests] == [{"name": "Studio"}] * 2
    assert len(waits) == 1
    assert 0.25 <= waits[0] <= 0.5  # half to all of the first backoff
    assert script.requests[0].headers["authorization"] == "Bearer pa_live_test"


def test_each_post_gets_its_own_key_unless_the_caller_gives_one(waits: Waits) -> None:
    script = Script(*(httpx.Response(201, json=TEAM) for _ in range(3)))
    with client_for(script, waits) as client:
        client.create_team("a")
        client.create_team("b")
        client.create_team("c", idempotency_key="mine-1")
    first, second, third = script.keys()
    assert first
    assert second
    assert first != second
    assert third == "mine-1"


def test_a_429_waits_for_retry_after_then_retries(waits: Waits) -> None:
    script = Script(
        problem(429, "rate_limited", {"Retry-After": "7"}, retry_after=7),
        httpx.Response(201, json=TEAM),
    )
    with client_for(script, waits) as client:
        client.create_team("Studio")
    assert waits == [7.0]
    assert len(set(script.keys())) == 1


def test_retry_after_as_an_http_date(waits: Waits) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    script = Script(
        problem(503, "unavailable", {"Retry-After": format_datetime(when, usegmt=True)}),
        httpx.Response(200, json={"available": 1, "held": 0, "lots": [], "next_expiry": None}),
    )
    with client_for(script, waits) as client:
        assert client.balance().available == 1
    assert len(waits) == 1
    assert 25 <= waits[0] <= 30


def test_a_long_retry_after_is_not_waited_out(waits: Waits) -> None:
    script = Script(problem(429, "rate_limited", {"Retry-After": "900"}, retry_after=900))
    with (
        client_for(script, waits, max_retry_after=60) as client,
        pytest.raises(RateLimitedError) as raised,
    ):
        client.login("a@example.com", "wrong")
    assert raised.value.retry_after == 900
    assert raised.value.status == 429
    assert waits == []
    assert len(script.requests) == 1


def test_a_422_is_not_retried(waits: Waits) -> None:
    script = Script(
        problem(
            422,
            "invalid_input",
            errors=[{"field": "name", "message": "String should have at least 1 character"}],
        )
    )
    with client_for(script, waits) as client, pytest.raises(InvalidInputError) as raised:
        client.create_team("")
    error = raised.value
    assert (error.status, error.code, error.detail) == (422, "invalid_input", "invalid_input!")
    assert error.errors == (FieldError("name", "String should have at least 1 character"),)
    assert len(script.requests) == 1
    assert waits == []


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [
        (401, "unauthenticated", AuthenticationError),
        (404, "not_found", NotFoundError),
        (409, "seats_exhausted", ConflictError),
        (402, "insufficient_credits", InsufficientCreditsError),
    ],
)
def test_other_4xx_are_not_retried(
    waits: Waits, status: int, code: str, error_class: type[ApiError]
) -> None:
    script = Script(problem(status, code))
    with client_for(script, waits) as client, pytest.raises(error_class) as raised:
        client.create_team("Studio")
    assert raised.value.code == code
    assert len(script.requests) == 1
    assert waits == []


def test_a_transport_error_is_retried_with_the_same_key(waits: Waits) -> None:
    script = Script(
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("no answer"),
        httpx.Response(201, json=TEAM),
    )
    with client_for(script, waits, backoff=1.0) as client:
        assert client.create_team("Studio").name == "Studio"
    assert len(script.requests) == 3
    assert len(set(script.keys())) == 1
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 2.0


def test_attempts_are_capped(waits: Waits) -> None:
    script = Script(*(problem(503, "unavailable") for _ in range(4)))
    with (
        client_for(script, waits, max_retries=3, backoff=0.5) as client,
        pytest.raises(ServerError) as raised,
    ):
        client.create_team("Studio")
    assert raised.value.status == 503
    assert len(script.requests) == 4
    assert len(waits) == 3
    for retry, wait in enumerate(waits):
        assert 0.25 * 2**retry <= wait <= 0.5 * 2**retry


def test_transport_errors_are_capped_too(waits: Waits) -> None:
    script = Script(*(httpx.ConnectError("refused") for _ in range(3)))
    with (
        client_for(script, waits, max_retries=2) as client,
        pytest.raises(TransportError) as raised,
    ):
        client.balance()
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert len(script.requests) == 3
    assert len(waits) == 2


def test_gets_patches_and_deletes_are_retried_without_a_key(waits: Waits) -> None:
    member = {
        "user_id": "usr_2",
        "email": "b@example.com",
        "role": "member",
        "monthly_credit_cap": 100,
        "joined_at": "2026-01-02T00:00:00Z",
    }
    script = Script(
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        httpx.Response(200, json=member),
        httpx.Response(504, text=""),
        httpx.Response(204),
    )
    with client_for(script, waits) as client:
        assert client.set_member_cap("team_1", "usr_2", 100).monthly_credit_cap == 100
        client.remove_member("team_1", "usr_2")
    assert [r.method for r in script.requests] == ["PATCH", "PATCH", "DELETE", "DELETE"]
    assert script.keys() == [None] * 4
    assert len(waits) == 2


def test_a_still_running_conflict_is_retried_only_after_a_lost_answer(waits: Waits) -> None:
    # The first attempt reached the server but its answer was lost: a repeat
    # finds it still running (409), then gets its stored answer.
    script = Script(
        httpx.ReadTimeout("answer lost"),
        problem(409, "idempotency_conflict"),
        httpx.Response(201, json=TEAM, headers={"Idempotent-Replayed": "true"}),
    )
    with client_for(script, waits) as client:
        assert client.create_team("Studio").id == "team_1"
    assert len(set(script.keys())) == 1
    # Without a lost answer the conflict is the caller's: a key reused for another body.
    script = Script(problem(409, "idempotency_conflict"))
    with client_for(script, waits) as client, pytest.raises(ConflictError) as raised:
        client.create_team("Studio", idempotency_key="reused")
    assert raised.value.code == "idempotency_conflict"
    assert len(script.requests) == 1


def test_a_key_still_in_use_is_asked_again(waits: Waits) -> None:
    # The first request with this key is still running on the server (it
    # says so with in_progress): a moment later it replays its answer.
    in_use = problem(
        409,
        "idempotency_conflict",
        {"Retry-After": "1"},
        title="Idempotency key in use",
        in_progress=True,
    )
    script = Script(in_use, httpx.Response(201, json=TEAM, headers={"Idempotent-Replayed": "true"}))
    with client_for(script, waits) as client:
        assert client.create_team("Studio", idempotency_key="again").id == "team_1"
    assert script.keys() == ["again", "again"]
    assert len(waits) == 1


def test_health_checks_are_not_retried(waits: Waits) -> None:
    script = Script(problem(503, "not_ready"))
    with client_for(script, waits) as client, pytest.raises(ServerError) as raised:
        client.readyz()
    assert raised.value.code == "not_ready"
    assert waits == []


def test_errors_that_are_not_problem_json(waits: Waits) -> None:
    script = Script(
        httpx.Response(502, text="<html>upstream down</html>"),
        httpx.Response(404, text="nothing here"),
    )
    with client_for(script, waits, max_retries=0) as client:
        with pytest.raises(ServerError) as server:
            client.balance()
        with pytest.raises(NotFoundError) as missing:
            client.model("nope")
    assert (server.value.status, server.value.code) == (502, "server_error")
    assert server.value.detail == "<html>upstream down</html>"
    assert (missing.value.code, missing.value.detail) == ("not_found", "nothing here")
    assert missing.value.extra == {}


def test_problem_fields_reach_the_exception(waits: Waits) -> None:
    script = Script(
        problem(402, "insufficient_credits", {"X-Request-ID": "req-123"}, required=8, available=3)
    )
    with client_for(script, waits) as client, pytest.raises(InsufficientCreditsError) as raised:
        client.balance()
    error = raised.value
    assert (error.required, error.available, error.request_id) == (8, 3, "req-123")
    assert error.extra == {"required": 8, "available": 3}
    assert error.title == "insufficient_credits"


# -- reading answers -------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_missing_ones_refused() -> None:
    balance = decode(
        Balance,
        {
            "available": 5,
            "held": 1,
            "lots": [
                {
                    "id": "lot_1",
                    "source": "purchase",
                    "granted": 6,
                    "remaining": 6,
                    "expires_at": "2026-02-01T00:00:00+00:00",
                    "colour": "green",
                }
            ],
            "next_expiry": None,
            "added_later": {"anything": True},
        },
    )
    assert balance.lots[0].expires_at == datetime(2026, 2, 1, tzinfo=UTC)
    assert balance.lots[0].granted == 6
    with pytest.raises(UnexpectedResponse, match="lacks 'held'"):
        decode(Balance, {"available": 5, "lots": [], "next_expiry": None})
    with pytest.raises(UnexpectedResponse, match=r"Balance\.available is not int"):
        decode(Balance, {"available": "5", "held": 0, "lots": [], "next_expiry": None})


def test_a_success_without_json_is_unexpected(waits: Waits) -> None:
    script = Script(httpx.Response(200, text="<html>captive portal</html>"))
    with client_for(script, waits) as client, pytest.raises(UnexpectedResponse):
        client.balance()


def test_the_client_imports_nothing_of_the_server() -> None:
    probe = (
        "import sys, plasmaart.client\n"
        "heavy = ('fastapi', 'starlette', 'sqlalchemy', 'pydantic', 'uvicorn', 'alembic')\n"
        "found = sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "               or (m.startswith('plasmaart.') and not m.startswith('plasmaart.client')))\n"
        "print(found)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


# -- paging ------------------------------------------------------------------------------


def notification(n: int) -> dict[str, Any]:
    return {
        "id": f"ntf_{n}",
        "kind": "k",
        "title": f"t{n}",
        "body": "",
        "data": {},
        "created_at": "2026-01-01T00:00:00Z",
        "read_at": None,
    }


def test_lists_follow_the_cursor_lazily_up_to_the_limit(waits: Waits) -> None:
    script = Script(
        httpx.Response(200, json={"data": [notification(1), notification(2)], "next_cursor": "c2"}),
        httpx.Response(200, json={"data": [notification(3), notification(4)], "next_cursor": "c4"}),
    )
    with client_for(script, waits) as client:
        listed = client.notifications(limit=3, page_size=2, unread=True)
        assert script.requests == []  # nothing is fetched before it is needed
        assert [n.id for n in listed] == ["ntf_1", "ntf_2", "ntf_3"]
        with pytest.raises(ValueError, match="page_size"):
            client.notifications(page_size=500)
    first, second = (dict(r.url.params) for r in script.requests)
    assert first == {"limit": "2", "unread": "true"}
    assert second == {"limit": "1", "cursor": "c2", "unread": "true"}


# -- csrf on cookie sessions -------------------------------------------------------------


def test_a_session_sends_its_csrf_token_on_writes_only(waits: Waits) -> None:
    user = {
        "id": "usr_1",
        "email": "a@example.com",
        "role": "user",
        "status": "active",
        "created_at": "2026-01-01T00:00:00Z",
    }
    login = httpx.Response(
        200,
        json={"user": user},
        headers=[
            ("set-cookie", "pa_session=s3cret; Path=/"),
            ("set-cookie", "pa_csrf=tok; Path=/"),
        ],
    )
    script = Script(
        login,
        httpx.Response(200, json={"data": [], "next_cursor": None}),
        httpx.Response(201, json=TEAM),
    )
    with Client(BASE, transport=httpx.MockTransport(script), sleep=waits) as client:
        assert client.login("a@example.com", "pw").email == "a@example.com"
        client.api_keys()
        client.create_team("Studio")
    login_request, get, post = script.requests
    assert "x-csrf-token" not in login_request.headers
    assert "authorization" not in login_request.headers
    assert "x-csrf-token" not in get.headers
    assert post.headers["x-csrf-token"] == "tok"
    assert "pa_session=s3cret" in post.headers["cookie"]


# -- the event stream ------------------------------------------------------------------------


def sse(*frames: str) -> httpx.Response:
    return httpx.Response(
        200,
        content="".join(frames).encode(),
        headers={"content-type": "text/event-stream"},
    )


def test_a_dropped_stream_resumes_with_last_event_id(waits: Waits) -> None:
    script = Script(
        sse(
            "retry: 3000\n\n",
            ": ping\n\n",
            'id: 1\nevent: balance.updated\ndata: {"available": 5, "held": 0}\n\n',
            'id: 2\nevent: notification\ndata: {"title"',  # cut off mid-event
        ),
        sse('id: 1\nevent: resync\ndata: {"reason": "reconnected"}\n\n'),
    )
    with client_for(script, waits) as client:
        stream = client.events(max_reconnects=1)
        first, second = next(stream), next(stream)
        stream.close()
    assert first == Event("1", "balance.updated", {"available": 5, "held": 0})
    assert second == Event("1", "resync", {"reason": "reconnected"})
    assert "last-event-id" not in script.requests[0].headers
    # The half-received event 2 never counted: the server last delivered 1.
    assert script.requests[1].headers["last-event-id"] == "1"
    assert waits == [3.0]  # the server's retry hint


def test_reconnects_are_bounded(waits: Waits) -> None:
    # Each drop without an event since the previous one counts; an event resets.
    script = Script(
        sse('id: 1\nevent: balance.updated\ndata: {"available": 1, "held": 0}\n\n'),
        sse(": ping\n\n"),
        sse('id: 1\nevent: balance.updated\ndata: {"available": 2, "held": 0}\n\n'),
        sse(": ping\n\n"),
        sse(": ping\n\n"),
        sse("never read"),
    )
    with client_for(script, waits) as client:
        stream = client.events(max_reconnects=2)
        assert next(stream).data == {"available": 1, "held": 0}
        assert next(stream).data == {"available": 2, "held": 0}
        with pytest.raises(TransportError, match="after 2 reconnects"):
            next(stream)
    assert len(script.requests) == 5
    assert len(waits) == 4


def test_an_unauthenticated_stream_raises_at_once(waits: Waits) -> None:
    script = Script(problem(401, "unauthenticated"))
    with client_for(script, waits) as client, pytest.raises(AuthenticationError):
        next(client.events())
    assert waits == []


# -- async: the same decisions ------------------------------------------------------------


def run_async(
    script: Script, body: Callable[[AsyncClient], Any], **options: Any
) -> tuple[Any, AsyncWaits]:
    waits = AsyncWaits()

    async def scenario() -> Any:
        async with AsyncClient(
            BASE, "pa_live_test", transport=httpx.MockTransport(script), sleep=waits, **options
        ) as client:
            return await body(client)

    return asyncio.run(scenario()), waits


def test_async_503_then_success_keeps_the_key() -> None:
    script = Script(problem(503, "unavailable"), httpx.Response(201, json=TEAM))
    team, waits = run_async(script, lambda c: c.create_team("Studio"), backoff=0.5)
    assert team.seats.total == 5
    keys = script.keys()
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    assert len(waits) == 1
    assert 0.25 <= waits[0] <= 0.5


def test_async_429_waits_for_retry_after() -> None:
    script = Script(
        problem(429, "rate_limited", {"Retry-After": "3"}), httpx.Response(201, json=TEAM)
    )
    _, waits = run_async(script, lambda c: c.create_team("Studio"))
    assert waits == [3.0]
    assert len(script.requests) == 2


def test_async_422_is_not_retried() -> None:
    script = Script(problem(422, "invalid_input", errors=[{"field": "name", "message": "short"}]))
    with pytest.raises(InvalidInputError) as raised:
        run_async(script, lambda c: c.create_team(""))
    assert raised.value.errors == (FieldError("name", "short"),)
    assert len(script.requests) == 1


def test_async_transport_errors_are_retried_and_capped() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(201, json=TEAM))
    team, waits = run_async(script, lambda c: c.create_team("Studio"))
    assert team.id == "team_1"
    assert len(set(script.keys())) == 1
    assert len(waits) == 1
    script = Script(*(problem(500, "internal_error") for _ in range(3)))
    with pytest.raises(ServerError):
        run_async(script, lambda c: c.create_team("Studio"), max_retries=2)
    assert len(script.requests) == 3


def test_async_lists_and_events() -> None:
    script = Script(
        httpx.Response(200, json={"data": [notification(1)], "next_cursor": "c1"}),
        httpx.Response(200, json={"data": [notification(2)], "next_cursor": None}),
        sse('id: 4\nevent: notification\ndata: {"title": "hi"}\n\n'),
    )

    async def body(client: AsyncClient) -> tuple[list[str], Event]:
        ids = [n.id async for n in client.notifications(page_size=1)]
        stream = client.events()
        event = await anext(stream)
        await stream.aclose()
        return ids, event

    (ids, event), _ = run_async(script, body)
    assert ids == ["ntf_1", "ntf_2"]
    assert event == Event("4", "notification", {"title": "hi"})

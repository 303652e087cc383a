"""Redis goes away under load: two API processes, one Redis, clients submitting.

Two real ``plasmaart serve --no-worker`` processes share one real
``redis-server`` (tests/support/faults/redis.py) and one database. Two Studio
creators submit and cancel generations with the Python client, on both
processes in turn, for the whole test; every answer is recorded (status,
rate-limit headers, time). Mid-burst Redis first hangs (SIGSTOP: connections
open, nothing answers) and resumes, then is killed (SIGKILL) and started again
on the same port. A creator without a plan (10 requests a minute) sends more
than its limit during the outage, and again after it.

Checked: no 5xx and no answer slower than the bound, whatever Redis does;
answers carry the shared counters' headers while Redis answers (one budget
across both processes), none while it is away (fail open: the creator past
its limit is not refused), and again once it is back (the same creator is
refused 429 ``rate_limited`` past its limit); ``/readyz`` lists
``redis_unreachable`` and ``/metrics`` says ``plasmaart_redis_up 0`` while it
is away, and neither once it is back; each process logs each outage once and
its end once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from plasmaart.client import Client
from plasmaart.client.errors import ApiError, RateLimitedError
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.faults.redis import RedisHung, RedisServer, RedisStopped, restartable_redis
from tests.support.processes import ServerProcess, child_env

pytestmark = pytest.mark.parametrize("backend", ["postgres"])

# No answer may take longer, Redis hung included (its socket timeout is 0.5 s).
ANSWER_WITHIN_S = 2.0
WAIT_S = 10.0
CREATORS = 2


@dataclass(frozen=True)
class Answer:
    at: float
    status: int | None  # None: no answer (a transport error)
    counted: bool  # carried RateLimit-* headers: Redis counted the request
    remaining: int | None
    seconds: float


class Recorder(httpx.BaseTransport):
    """Records every answer the client gets (it retries nothing here)."""

    def __init__(self, answers: list[Answer], lock: threading.Lock) -> None:
        self._inner = httpx.HTTPTransport()
        self._answers = answers
        self._lock = lock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError:
            self._add(Answer(started, None, False, None, time.monotonic() - started))
            raise
        if request.url.path.startswith("/v1/generations"):
            remaining = response.headers.get("ratelimit-remaining")
            self._add(
                Answer(
                    started,
                    response.status_code,
                    remaining is not None,
                    int(remaining) if remaining is not None else None,
                    time.monotonic() - started,
                )
            )
        return response

    def _add(self, answer: Answer) -> None:
        with self._lock:
            self._answers.append(answer)

    def close(self) -> None:
        self._inner.close()


def client_for(server: ServerProcess, user: TestUser, recorder: Recorder) -> Client:
    # No retries: every answer is the server's own, as it gave it.
    return Client(server.url, user.api_key, max_retries=0, timeout=10, transport=recorder)


def until(condition: Callable[[], bool], what: str, within: float = WAIT_S) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.05)


def degraded(server: ServerProcess) -> list[str]:
    answer = httpx.get(f"{server.url}/readyz", timeout=5)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["degraded"])


def redis_up(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("plasmaart_redis_up "):
            return float(line.split()[1])
    raise AssertionError("plasmaart_redis_up missing from /metrics")


@pytest.fixture
def cluster(
    platform: Platform, database_url: str, tmp_path: Path
) -> Iterator[tuple[RedisServer, list[ServerProcess]]]:
    with ExitStack() as stack:
        redis = stack.enter_context(restartable_redis())
        env = child_env(database_url, tmp_path / "var") | {"REDIS_URL": redis.url}
        servers = [ServerProcess(f"api{n}", env, tmp_path) for n in range(2)]
        for server in servers:
            stack.callback(server.close)
        start_together(servers)
        yield redis, servers


def start_together(servers: list[ServerProcess]) -> None:
    """Start the processes at once (each waits until it is ready)."""
    failures: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    if failures:
        raise failures[0]


def submit_and_cancel(client: Client, prompt: str) -> None:
    generation = client.create_generation("flux-schnell", prompt)
    client.cancel_generation(generation.id)


def test_redis_hung_then_killed_mid_burst_fails_open_visibly_and_counts_again(
    platform: Platform, cluster: tuple[RedisServer, list[ServerProcess]]
) -> None:
    redis, servers = cluster
    lock = threading.Lock()
    answers: list[Answer] = []
    errors: list[str] = []
    stop = threading.Event()
    creators = [
        make_user(platform, f"creator{n}@example.com", plan="studio", credits=10_000)
        for n in range(CREATORS)
    ]
    limited = make_user(platform, "payg@example.com", credits=1_000)

    def burst(n: int, user: TestUser) -> None:
        recorder = Recorder(answers, lock)
        clients = [client_for(server, user, recorder) for server in servers]
        try:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    submit_and_cancel(clients[i % 2], f"creator {n}, request {i}")
                except RateLimitedError:
                    time.sleep(0.2)  # a Studio creator stays well under its 120 a minute
                except ApiError as refused:
                    errors.append(f"creator {n}: {refused}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def limited_round(first: int) -> list[int]:
        """More requests than the plan allows in a minute (submissions, each
        canceled: its queue holds 10); 2xx or the refusal's status of each."""
        recorder = Recorder([], threading.Lock())
        statuses = []
        with client_for(servers[first % 2], limited, recorder) as client:
            for i in range(6):
                try:
                    generation = client.create_generation("flux-schnell", f"payg {first} {i}")
                except ApiError as refused:
                    statuses.append(refused.status)
                    continue
                statuses.append(200)
                try:
                    client.cancel_generation(generation.id)
                    statuses.append(200)
                except ApiError as refused:
                    statuses.append(refused.status)
        return statuses

    threads = [
        threading.Thread(target=burst, args=(n, user), name=f"creator{n}", daemon=True)
        for n, user in enumerate(creators)
    ]
    for thread in threads:
        thread.start()
    try:
        # Counted in Redis: one budget across both processes.
        until(lambda: sum(a.counted for a in answers) >= 8, "answers counted in Redis")
        assert degraded(servers[0]) == []
        assert redis_up(servers[0]) == 1.0

        hung = RedisHung(redis)
        hung.inject()
        hung_at = time.monotonic()
        time.sleep(1.5)
        until(lambda: "redis_unreachable" in degraded(servers[1]), "readyz says Redis is away")
        hung.heal()
        healed_at = time.monotonic()
        for server in servers:
            until(lambda s=server: degraded(s) == [], "each process reaches Redis again")

        stopped = RedisStopped(redis)
        stopped.inject()
        killed_at = time.monotonic()
        during = limited_round(0)
        for server in servers:
            until(lambda s=server: "redis_unreachable" in degraded(s), "readyz degraded")
            assert redis_up(server) == 0.0
        time.sleep(0.5)
        stopped.heal()
        restarted_at = time.monotonic()
        until(
            lambda: sum(a.counted and a.at > restarted_at + 0.1 for a in answers) >= 4,
            "counted again after Redis restarted",
        )
        for server in servers:
            until(lambda s=server: degraded(s) == [], "readyz no longer degraded")
            assert redis_up(server) == 1.0
        after = limited_round(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=WAIT_S)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    assert [a for a in answers if a.status is None or a.status >= 500] == []
    slowest = max(a.seconds for a in answers)
    assert slowest < ANSWER_WITHIN_S, f"an answer took {slowest:.2f} s"
    # Fail open while away: answered, uncounted (the hang: once its first
    # calls timed out), and the creator past its limit was never refused.
    away = [a for a in answers if killed_at + 0.2 < a.at < restarted_at]
    assert away
    assert not any(a.counted for a in away)
    assert any(not a.counted for a in answers if hung_at + 0.6 < a.at < healed_at)
    assert during == [200] * 12
    # Counted again once back: the same creator is refused past its limit.
    assert after[:10] == [200] * 10, after
    assert 429 in after[10:], after

    for server in servers:
        log = server.log()
        assert log.count("Redis unreachable") == 2, log[-3000:]
        assert log.count("Redis answers again") == 2, log[-3000:]
    print(  # noqa: T201 - the chaos report is meant to be read
        f"\nredis outage: {len(answers)} answers, "
        f"{sum(a.counted for a in answers)} counted, {len(away)} while killed (fail open), "
        f"slowest {slowest:.2f} s; the pay-as-you-go creator's 12 requests: "
        f"{during.count(200)} answered while Redis was away, "
        f"{after.count(200)} answered and {after.count(429)} refused 429 after"
    )

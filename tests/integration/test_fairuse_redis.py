"""Rate limits shared by two real API processes through a real Redis.

Two ``plasmaart serve --no-worker`` processes on one database and one
``redis-server`` (started here on a free loopback port): requests of one
account alternate between them, and the counters are one. Then Redis stops,
and both processes fail open. Identical requests are counted there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from plasmaart.bootstrap import bootstrap
from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import abuse_signals
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from tests.support.accounts import make_user
from tests.support.pgserver import free_port
from tests.support.redis_server import redis_server

ONE_IMAGE = {"model": "flux-schnell", "prompt": "a red fox in snow"}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@contextmanager
def api_process(name: str, database_url: str, redis_url: str, workdir: Path) -> Iterator[str]:
    """``plasmaart serve --no-worker`` as a child process; its base URL."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PLASMAART_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PLASMAART_VAR_DIR=str(workdir / name),
        PLASMAART_AUTO_MIGRATE="false",
        PLASMAART_LOG_LEVEL="WARNING",
    )
    env.pop("STRIPE_SECRET_KEY", None)
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "plasmaart.cli", "serve", "--no-worker", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"{name} exited while starting:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} did not start in {START_TIMEOUT_S} s")
                time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)


def test_two_api_processes_share_the_limits_through_redis(
    platform: Platform, database_url: str, tmp_path: Path
) -> None:
    ann = make_user(platform, "ann@example.com", credits=100)  # Free: 10 a minute
    with ExitStack() as redis_stack:
        redis_url = redis_stack.enter_context(redis_server())
        with (
            api_process("api-1", database_url, redis_url, tmp_path) as first,
            api_process("api-2", database_url, redis_url, tmp_path) as second,
        ):
            answers = [
                httpx.post(f"{base}/v1/generations", json=ONE_IMAGE, headers=ann.auth, timeout=10)
                for base in [first, second] * 6
            ]
            assert [a.status_code for a in answers] == [201] * 10 + [429] * 2, [
                a.text for a in answers
            ]
            # One window: each process sees the other's requests.
            assert [a.headers["RateLimit-Remaining"] for a in answers] == [
                "9", "8", "7", "6", "5", "4", "3", "2", "1", "0", "0", "0"
            ]  # fmt: skip
            assert all(a.headers["RateLimit-Limit"] == "10" for a in answers)
            refused = answers[-1]
            assert refused.json()["code"] == "rate_limited"
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
            client = redis.Redis.from_url(redis_url)
            assert client.keys("LIMITS*"), "the counters live in Redis"
            client.close()

            # Redis stops while both processes run: they fail open (no limit,
            # no headers), quickly, although the account is over its limit.
            redis_stack.close()
            for base in [first, second] * 3:
                started = time.monotonic()
                answer = httpx.post(
                    f"{base}/v1/quotes", json=ONE_IMAGE, headers=ann.auth, timeout=10
                )
                assert answer.status_code == 200, answer.text
                assert "RateLimit-Limit" not in answer.headers
                assert time.monotonic() - started < 3


def test_two_api_processes_count_identical_requests_together_through_redis(
    platform: Platform, database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    """Identical requests are counted in Redis when it is shared: copies sent
    through two platforms (two API processes) are copies of one another, and
    each platform's flusher writes the signals it queued. Without Redis, the
    submission goes on uncounted."""
    bot = make_user(platform, "bot@example.com", credits=100)
    with ExitStack() as redis_stack:
        redis_url = redis_stack.enter_context(redis_server())
        built = [
            bootstrap(
                Settings(
                    database_url=database_url,
                    var_dir=tmp_path / f"var{n}",
                    redis_url=redis_url,
                    fairuse_identical_prompts_allowed=2,
                ),
                clock=clock,
                migrate=False,
            )
            for n in range(2)
        ]
        try:

            def submit(api: Platform) -> None:
                request = GenerationRequest("flux-schnell", "the same prompt")
                with api.db.write() as conn:
                    user = api.accounts.get(conn, bot.id)
                    generation = api.generations.submit(conn, user, request)
                    api.fairuse.after_submit(conn, user, generation, request)

            for n in range(5):
                submit(built[n % 2])
            # Copies 3, 4 and 5: queued by the first, the second, the first.
            assert [len(api.fairuse.pending) for api in built] == [2, 1]
            assert sum(api.fairuse.flush() for api in built) == 3
            with platform.db.read() as conn:
                copies = conn.execute(
                    select(abuse_signals.c.evidence).where(abuse_signals.c.user_id == bot.id)
                ).scalars()
                assert sorted(json.loads(e)["copies_in_window"] for e in copies) == [3, 4, 5]
            client = redis.Redis.from_url(redis_url)
            assert client.keys("plasmaart:fairuse:copies:*"), "the copies live in Redis"
            client.close()

            # Redis stops: submissions go on, uncounted.
            redis_stack.close()
            started = time.monotonic()
            submit(built[0])
            assert time.monotonic() - started < 3
            assert len(built[0].fairuse.pending) == 0
        finally:
            for api in built:
                api.close()

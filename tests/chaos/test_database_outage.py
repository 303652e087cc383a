"""PostgreSQL going away under a burst of clients: stopped, restarted with
``pg_ctl restart -m immediate``, its connections reset, its connections
stalled (docs/reliability.md, "The database goes away").

Real processes on a PostgreSQL server of the test's own (never the session's
shared one): ``plasmaart serve --no-worker`` and ``plasmaart worker``, both
reaching the database through a TCP proxy the test controls
(tests/support/faults). Client threads submit generations with the Python
client (an API key, an ``Idempotency-Key`` per submission, retries on) while
a fault is injected mid-burst. Every HTTP answer the clients get is
recorded by their transport, and checked: a 2xx or 4xx, or a 503
``unavailable`` with ``Retry-After``; never a 500, never one slower than the
deadline that ``PLASMAART_DB_TIMEOUT_S`` sets. ``/readyz`` says 503 while the
database is out of reach and 200 once it is back; the worker process lives
on and every job ends; the books balance (``check_ledger``); each accepted
key has exactly one job, the one the client was given, whose hold is
charged once, for what it delivered.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from plasmaart.bootstrap import bootstrap
from plasmaart.client import Client
from plasmaart.client.errors import PlasmaArtError
from plasmaart.config import Settings
from plasmaart.db.tables import generation_outputs, generations, holds
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.faults import Fault
from tests.support.faults.postgres import FaultPostgres, PostgresOutage, PostgresRestart
from tests.support.faults.tcp_proxy import (
    ConnectionsDropped,
    ConnectionsStalled,
    TcpProxy,
    wait_until,
)
from tests.support.processes import ServerProcess, WorkerProcess, child_env

DB_TIMEOUT_S = 2.0  # PLASMAART_DB_TIMEOUT_S of the processes under test
# No answer may take longer: a pooled connection's ping and a reconnect, a
# statement, a wait for a free connection, each bounded by DB_TIMEOUT_S.
ANSWER_WITHIN_S = 5 * DB_TIMEOUT_S
READY_ANSWER_WITHIN_S = 2 * DB_TIMEOUT_S + 1
CLIENTS = 3
BURST_S = 3.0  # each client sends requests for this long
SUBMIT_EVERY_S = 0.8  # a submission, then reads until the next
FAULT_AFTER_S = 0.8  # into the burst
OUTAGE_S = 2.0
STALL_S = 3.0
FINISH_WITHIN_S = 40.0
BACK_WITHIN_S = 15.0
TERMINAL = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int | None  # None: no answer
    code: str | None
    retry_after: str | None
    seconds: float


class RecordingTransport(httpx.HTTPTransport):
    """Every answer the client gets (each attempt, retries included)."""

    def __init__(self, answers: list[Answer], lock: threading.Lock) -> None:
        super().__init__()
        self.answers = answers
        self.lock = lock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        try:
            response = super().handle_request(request)
            response.read()
        except httpx.TransportError:
            self._note(request, None, None, None, started)
            raise
        code = None
        if response.status_code >= 400:
            try:
                code = json.loads(response.content).get("code")
            except ValueError:
                code = "<not json>"
        self._note(
            request, response.status_code, code, response.headers.get("retry-after"), started
        )
        return response

    def _note(
        self,
        request: httpx.Request,
        status: int | None,
        code: str | None,
        retry_after: str | None,
        started: float,
    ) -> None:
        answer = Answer(
            request.method,
            request.url.path,
            status,
            code,
            retry_after,
            time.monotonic() - started,
        )
        with self.lock:
            self.answers.append(answer)


@dataclass
class Burst:
    """What the clients of one burst did and were told."""

    answers: list[Answer] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # key -> generation id
    gave_up: dict[str, str] = field(default_factory=dict)  # key -> the client's error
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Stack:
    postgres: FaultPostgres
    proxy: TcpProxy
    platform: Platform  # the test's own, straight to the server
    server: ServerProcess
    worker: WorkerProcess
    users: list[TestUser]
    var_dir: Path

    def logs(self) -> str:
        return f"--- api\n{self.server.log()[-6000:]}\n--- worker\n{self.worker.log()[-6000:]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("outage")
    postgres = FaultPostgres(base / "pg")
    proxy = TcpProxy("127.0.0.1", postgres.port)
    url = postgres.create_database("outage")
    var_dir = base / "var"
    platform = bootstrap(Settings(database_url=url, var_dir=var_dir), migrate=True)
    env = child_env(postgres.url_of("outage", port=proxy.port), var_dir)
    env.update(
        PLASMAART_DB_TIMEOUT_S=str(DB_TIMEOUT_S),
        PLASMAART_JOB_LEASE_S="3",
        PLASMAART_IDEMPOTENCY_TAKEOVER_S="3",
    )
    server = ServerProcess("api", env, base)
    worker: WorkerProcess | None = None
    try:
        users = [
            make_user(platform, f"outage{n}@example.com", plan="studio", credits=5_000)
            for n in range(CLIENTS)
        ]
        # Both start at once (each takes seconds to import and connect).
        worker = WorkerProcess("worker", env, base, concurrency=4)
        server.start()
        running = worker
        wait_until(lambda: " started (" in running.log(), 30, "the worker started")
        yield Stack(postgres, proxy, platform, server, worker, users, var_dir)
    finally:
        server.close()
        if worker is not None:
            worker.close()
        platform.close()
        proxy.close()
        postgres.close()


def prompt_of(key: str) -> str:
    """A submission's prompt names its key (the job stores a hash of it)."""
    return f"{key}: a harbour at dawn"


def run_burst(stack: Stack, name: str, during: Callable[[], None]) -> Burst:
    """Client threads submit for BURST_S; ``during`` runs FAULT_AFTER_S into it."""
    burst = Burst()
    stop_at = time.monotonic() + BURST_S

    def client(n: int) -> None:
        transport = RecordingTransport(burst.answers, burst.lock)
        with Client(
            stack.server.url,
            stack.users[n].api_key,
            timeout=ANSWER_WITHIN_S + 5,
            max_retries=12,
            backoff=0.2,
            transport=transport,
        ) as api:
            sent = 0
            last: str | None = None
            next_submission = 0.0
            while time.monotonic() < stop_at:
                try:
                    if time.monotonic() < next_submission:
                        # Between submissions, reads: the balance, the last job.
                        api.balance()
                        if last is not None:
                            api.generation(last)
                        time.sleep(0.05)
                        continue
                except PlasmaArtError:
                    continue  # checked in the recorded answers
                key = f"{name}-{n}-{sent}"
                sent += 1
                next_submission = time.monotonic() + SUBMIT_EVERY_S
                try:
                    made = api.create_generation(
                        "flux-schnell",
                        prompt_of(key),
                        params={"seed": sent, "sandbox": {"delay_s": 0}},
                        idempotency_key=key,
                    )
                except PlasmaArtError as exc:
                    with burst.lock:
                        burst.gave_up[key] = repr(exc)
                    continue
                last = made.id
                with burst.lock:
                    burst.accepted[key] = made.id

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(FAULT_AFTER_S)
    during()
    for thread in threads:
        # The burst, then the longest a client may spend retrying its last call.
        thread.join(timeout=BURST_S + 12 * (ANSWER_WITHIN_S + 2))
        assert not thread.is_alive(), "a client is still waiting"
    return burst


def readiness(stack: Stack) -> tuple[int, float, dict[str, Any]]:
    started = time.monotonic()
    answer = httpx.get(f"{stack.server.url}/readyz", timeout=READY_ANSWER_WITHIN_S + 5)
    return answer.status_code, time.monotonic() - started, answer.json()


def wait_ready(stack: Stack) -> None:
    wait_until(lambda: readiness(stack)[0] == 200, BACK_WITHIN_S, "/readyz 200 after the fault")


def check(stack: Stack, burst: Burst) -> None:
    """Every answer allowed and in time; every job ended, charged once; the books balance."""
    assert burst.accepted, "no submission was accepted"
    bad = [
        answer
        for answer in burst.answers
        if answer.status is None
        or (
            answer.status >= 500
            and not (answer.status == 503 and answer.code == "unavailable" and answer.retry_after)
        )
    ]
    assert not bad, f"answers outside the contract: {bad[:10]}\n{stack.logs()}"
    slow = [answer for answer in burst.answers if answer.seconds > ANSWER_WITHIN_S]
    assert not slow, f"answers past the deadline: {slow[:10]}"
    assert stack.worker.process.poll() is None, f"the worker died:\n{stack.worker.log()}"
    # An outage is a warning and its end an info line; a traceback is a bug.
    for process in (stack.server, stack.worker):
        assert "Traceback" not in process.log(), process.log()[-8000:]
    assert stack.server.process is not None
    assert stack.server.process.poll() is None

    keys = [*burst.accepted, *burst.gave_up]
    prompts = [prompt_of(key) for key in keys]

    def all_ended() -> bool:
        with stack.platform.db.read() as conn:
            statuses = conn.execute(
                select(generations.c.status).where(generations.c.prompt.in_(prompts))
            ).scalars()
            return all(status in TERMINAL for status in statuses)

    waited = time.monotonic()
    wait_until(all_ended, FINISH_WITHIN_S, "every job of the burst ended")
    statuses = Counter(answer.status for answer in burst.answers)
    print(  # noqa: T201 - the burst's figures, read with -s
        f"\n{len(burst.accepted)} accepted, {len(burst.gave_up)} given up; answers "
        f"{dict(statuses)}; the slowest {max(a.seconds for a in burst.answers):.2f}s; "
        f"jobs ended {time.monotonic() - waited:.1f}s after the burst"
    )
    with stack.platform.db.read() as conn:
        assert check_ledger(conn) == []
        jobs = conn.execute(select(generations).where(generations.c.prompt.in_(prompts)))
        by_key: dict[str, list[Any]] = {}
        for job in jobs:
            by_key.setdefault(job.prompt.split(":")[0], []).append(job)
        delivered = dict(
            conn.execute(
                select(generation_outputs.c.generation_id, func.count()).group_by(
                    generation_outputs.c.generation_id
                )
            ).all()
        )
        hold_of = {hold.id: hold for hold in conn.execute(select(holds))}
    problems: list[str] = []
    for key, generation_id in burst.accepted.items():
        found = [job.id for job in by_key.get(key, [])]
        if found != [generation_id]:
            problems.append(f"{key}: answered {generation_id}, jobs {found}")
    for key in burst.gave_up:
        if len(by_key.get(key, [])) > 1:
            problems.append(f"{key}: {len(by_key[key])} jobs")
    for rows in by_key.values():
        for job in rows:
            hold = hold_of.get(job.hold_id)
            charged = int(job.credits_charged)
            outputs = int(delivered.get(job.id, 0))
            if charged != outputs * int(job.credits_per_output):
                problems.append(f"{job.id} {job.status}: charged {charged}, {outputs} delivered")
            expected = ("captured" if charged else "released", charged, job.credits_held - charged)
            if hold is None or (hold.status, hold.captured, hold.released) != expected:
                problems.append(f"{job.id}: hold {hold}, expected {expected}")
    assert not problems, problems


def outage_lines(log: str) -> int:
    return log.count("the database is unavailable")


def test_postgres_stopped_then_restarted_mid_burst(stack: Stack) -> None:
    observed: dict[str, Any] = {}
    outage: Fault = PostgresOutage(stack.postgres)
    restart: Fault = PostgresRestart(stack.postgres)
    worker_lines_before = outage_lines(stack.worker.log())

    def faults() -> None:
        outage.inject()
        # /readyz: not ready, at once and with the reason, while it is down.
        status, seconds, body = readiness(stack)
        observed["down"] = (status, seconds, body)
        time.sleep(OUTAGE_S)
        outage.heal()
        wait_ready(stack)
        time.sleep(0.5)
        restart.inject()  # every backend killed; back when this returns

    burst = run_burst(stack, "restart", faults)
    status, seconds, body = observed["down"]
    assert status == 503, body
    assert body["code"] == "not_ready", body
    assert body["detail"].startswith("database unreachable ("), body
    assert seconds < READY_ANSWER_WITHIN_S
    wait_ready(stack)
    check(stack, burst)
    statuses = Counter(answer.status for answer in burst.answers)
    assert statuses[503] >= 1, f"the outage was never seen: {statuses}"
    # The worker's loops said so once each, not once per attempt.
    said = outage_lines(stack.worker.log()) - worker_lines_before
    assert 1 <= said <= 20, f"{said} lines about the outage:\n{stack.worker.log()[-6000:]}"


def test_connections_dropped_mid_burst(stack: Stack) -> None:
    dropped: Fault = ConnectionsDropped(stack.proxy)

    def faults() -> None:
        for _ in range(3):
            dropped.inject()
            dropped.heal()
            time.sleep(0.7)

    burst = run_burst(stack, "drop", faults)
    assert stack.proxy.dropped > 0
    wait_ready(stack)
    check(stack, burst)


def test_connections_stalled_mid_burst(stack: Stack) -> None:
    stalled = ConnectionsStalled(stack.proxy, STALL_S)
    observed: dict[str, Any] = {}

    def faults() -> None:
        stalled.inject()
        try:
            observed["stalled"] = readiness(stack)
        finally:
            stalled.heal()

    burst = run_burst(stack, "stall", faults)
    status, seconds, body = observed["stalled"]
    assert status == 503, body
    assert seconds < READY_ANSWER_WITHIN_S, seconds
    wait_ready(stack)
    check(stack, burst)
    # The stall was noticed: some request got its 503 past the deadline.
    assert any(answer.status == 503 for answer in burst.answers), Counter(
        answer.status for answer in burst.answers
    )

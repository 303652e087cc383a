"""``plasmaart serve --workers 2``, real processes (docs/deployment.md#processes):
a supervisor and two API processes on one port.

- Both API processes serve: with either one stopped (SIGSTOP), the other
  answers every request on the shared socket.
- SIGHUP restarts them one by one while a client submits and reads without
  a pause: no request fails, and no submission is charged twice.
- SIGTERM: a request in flight (its body still arriving) completes, an open
  event stream ends at once with a ``retry:`` line, and the supervisor exits 0.

One supervisor for the module, on a SQLite file, with the embedded worker
(in the first API process) running the submissions' jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import func, select

from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings
from plasmaart.db.tables import generations, holds
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.pgserver import free_port
from tests.support.processes import child_env

START_WITHIN_S = 90.0
RESTART_WITHIN_S = 90.0
STOP_WITHIN_S = 30.0
SHUTDOWN_TIMEOUT_S = 10
BODY_S = 1.5  # how long the in-flight request takes to send its body
WORKERS = 2
SUBMIT_EVERY_S = 0.3


@dataclass
class Served:
    platform: Platform
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    log_file: IO[bytes]
    user: TestUser = field(init=False)

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def children(self) -> set[int]:
        """The API processes: the supervisor's children, from /proc."""
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid …: comm may hold spaces, so split after ")".
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid:
                found.add(int(entry.name))
        return found


def wait_for_children(served: Served, count: int, within_s: float) -> set[int]:
    deadline = time.monotonic() + within_s
    while True:
        children = served.children()
        if len(children) == count:
            return children
        assert served.process.poll() is None, served.log()
        assert time.monotonic() < deadline, f"{len(children)} API processes:\n{served.log()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    var_dir = root / "var"
    database_url = f"sqlite:///{var_dir / 'plasmaart.db'}"
    platform = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=True)
    env = child_env(database_url, var_dir)
    env["PLASMAART_SHUTDOWN_TIMEOUT_S"] = str(SHUTDOWN_TIMEOUT_S)
    port = free_port()
    log_path = root / "serve.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plasmaart.cli",
            "serve",
            "--workers",
            str(WORKERS),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=root,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    result = Served(platform, process, f"http://127.0.0.1:{port}", log_path, log_file)
    try:
        deadline = time.monotonic() + START_WITHIN_S
        while "serving on" not in result.log():
            assert process.poll() is None, result.log()
            assert time.monotonic() < deadline, result.log()
            time.sleep(0.1)
        result.user = make_user(platform, "loop@example.com", plan="pro", credits=10_000)
        yield result
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for child in result.children():
            os.kill(child, signal.SIGKILL)
        log_file.close()
        platform.close()


def fresh_client(served: Served) -> httpx.Client:
    # A connection per request: a connection the server closed between two
    # requests is the proxy's to retry (docs/deployment.md), not this test's.
    return httpx.Client(
        base_url=served.url,
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def test_both_api_processes_serve(served: Served) -> None:
    children = wait_for_children(served, WORKERS, within_s=5)
    assert served.process.pid not in children
    with fresh_client(served) as http:
        for stopped in sorted(children):
            os.kill(stopped, signal.SIGSTOP)
            try:
                # The other process accepts everything from the shared queue.
                for _ in range(5):
                    assert http.get("/readyz").status_code == 200
            finally:
                os.kill(stopped, signal.SIGCONT)


@dataclass
class Loop:
    served: Served
    stop: threading.Event = field(default_factory=threading.Event)
    submitted: list[str] = field(default_factory=list)
    reads: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        n = 0
        next_submit = 0.0
        with fresh_client(self.served) as http:
            while not self.stop.is_set():
                n += 1
                try:
                    # Submissions a few times a second (the plan queues at
                    # most 50 at once), reads without a pause between them.
                    if time.monotonic() >= next_submit:
                        next_submit = time.monotonic() + SUBMIT_EVERY_S
                        self.submit(http, n)
                    read = (
                        http.get(
                            f"/v1/generations/{self.submitted[-1]}", headers=self.served.user.auth
                        )
                        if self.submitted
                        else http.get("/readyz")
                    )
                    if read.status_code != 200:
                        self.failures.append(f"read {n}: {read.status_code} {read.text}")
                    self.reads += 1
                except httpx.HTTPError as exc:
                    self.failures.append(f"request {n}: {type(exc).__name__}: {exc}")

    def submit(self, http: httpx.Client, n: int) -> None:
        answer = http.post(
            "/v1/generations",
            json={
                "model": "flux-schnell",
                "prompt": f"rolling {n}",
                "params": {"sandbox": {"delay_s": 0}},
            },
            headers={**self.served.user.auth, "Idempotency-Key": f"roll-{n}"},
        )
        if answer.status_code != 201:
            self.failures.append(f"submit {n}: {answer.status_code} {answer.text}")
        else:
            self.submitted.append(answer.json()["id"])


def test_sighup_restarts_every_process_without_failing_a_request(served: Served) -> None:
    before = wait_for_children(served, WORKERS, within_s=5)
    loop = Loop(served)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RESTART_WITHIN_S
        while "rolling restart done" not in served.log():
            assert served.process.poll() is None, served.log()
            assert time.monotonic() < deadline, served.log()
            assert not loop.failures, loop.failures
            time.sleep(0.1)
        time.sleep(0.5)  # requests to the new processes only
    finally:
        loop.stop.set()
        thread.join(timeout=30)
    assert not loop.failures, loop.failures
    after = wait_for_children(served, WORKERS, within_s=5)
    assert not before & after, "every API process was replaced"
    assert len(loop.submitted) >= 5, len(loop.submitted)
    assert loop.reads >= 5, loop.reads
    # Each submission held its credits once; the books balance.
    with served.platform.db.read() as conn:
        assert check_ledger(conn) == []
        held = Counter(
            conn.execute(
                select(holds.c.generation_id).where(holds.c.generation_id.in_(loop.submitted))
            ).scalars()
        )
        jobs = conn.execute(
            select(func.count())
            .select_from(generations)
            .where(generations.c.wallet_id == served.user.wallet_id)
        ).scalar_one()
    assert held == Counter(loop.submitted)
    assert jobs == len(loop.submitted) == len(set(loop.submitted))


def slow_body(payload: bytes, seconds: float) -> Iterator[bytes]:
    """``payload`` a few bytes at a time over ``seconds``."""
    pieces = 10
    step = max(1, len(payload) // pieces)
    for start in range(0, len(payload), step):
        yield payload[start : start + step]
        time.sleep(seconds / pieces)


def test_sigterm_finishes_requests_ends_streams_and_exits_0(served: Served) -> None:
    user = served.user
    stream_lines: list[str] = []
    stream_done = threading.Event()
    stream_open = threading.Event()

    def read_stream() -> None:
        try:
            with (
                httpx.Client(base_url=served.url, timeout=30) as http,
                http.stream("GET", "/v1/events", headers=user.auth) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    stream_lines.append(line)
                    stream_open.set()
        finally:
            stream_done.set()

    streamer = threading.Thread(target=read_stream, daemon=True)
    streamer.start()
    assert stream_open.wait(10), "the stream did not open"

    slow_answer: list[httpx.Response | Exception] = []
    body = (
        b'{"model": "flux-schnell", "prompt": "finished in flight", '
        b'"params": {"sandbox": {"delay_s": 0}}}'
    )

    def send_slowly() -> None:
        try:
            with fresh_client(served) as http:
                slow_answer.append(
                    http.post(
                        "/v1/generations",
                        content=slow_body(body, BODY_S),
                        headers={
                            **user.auth,
                            "Content-Type": "application/json",
                            "Idempotency-Key": "in-flight",
                        },
                    )
                )
        except Exception as exc:
            slow_answer.append(exc)

    sender = threading.Thread(target=send_slowly, daemon=True)
    sender.start()
    time.sleep(BODY_S / 3)  # the request is under way, its body half sent
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)

    # The stream ends at once, its last line a retry hint.
    assert stream_done.wait(5), "the event stream was not ended"
    assert time.monotonic() - signalled < 5
    retries = [line for line in stream_lines if line.startswith("retry:")]
    assert retries[0] == "retry: 3000"
    assert retries[-1] == "retry: 1000", stream_lines
    # The request in flight completes.
    sender.join(timeout=30)
    assert len(slow_answer) == 1
    answer = slow_answer[0]
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 201, answer.text
    # Every process stopped, the supervisor exits 0.
    code = served.process.wait(timeout=STOP_WITHIN_S)
    log = served.log()
    assert code == 0, log
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT_S + 5, log
    assert "Traceback" not in log, log
    assert not served.children()
    assert log.count("stopped (exit 0)") == WORKERS, log

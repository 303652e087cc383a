"""A Redis the test can stop and start again on the same port.

``RedisServer`` is a real ``redis-server`` (loopback only, no persistence, as
``tests/support/redis_server.py`` starts it) whose port outlives the process:
``kill()`` is SIGKILL (connections reset mid-call, nothing saved), ``start()``
runs a new one on the same port and waits for PING, ``pause()`` / ``resume()``
(SIGSTOP / SIGCONT) make it hang with its connections open. Child processes
reach it at ``url``. ``restartable_redis()`` yields one and stops it after.

The faults of the harness:

* ``RedisStopped(server)``, kind "redis stopped": ``inject`` kills it,
  ``heal`` starts it again (empty: the counters start afresh);
* ``RedisHung(server)``, kind "redis hung": ``inject`` stops it with SIGSTOP
  (calls hang until their socket timeout), ``heal`` resumes it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.pgserver import free_port
from tests.support.redis_server import REDIS_SERVER, START_TIMEOUT_S, _answers_ping

STOP_TIMEOUT_S = 10.0


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start ``redis-server`` on the port and wait until it answers PING."""
        if self.running:
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while not _answers_ping(self.port):
                if self.process.poll() is not None:
                    break  # the port not free yet (a socket in its last state): again
                if time.monotonic() >= deadline:
                    self.kill()
                    raise AssertionError(f"redis-server did not start in {START_TIMEOUT_S} s")
                time.sleep(0.02)
            else:
                self.starts += 1
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"redis-server could not listen on {self.port}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: its connections reset, nothing is saved."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.process is not None
        assert self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()


@contextmanager
def restartable_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


class RedisStopped:
    """The fault: Redis is killed (``inject``) until it is started again on
    its port (``heal``, which waits for PING)."""

    kind = "redis stopped"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def inject(self) -> None:
        self.server.kill()

    def heal(self) -> None:
        self.server.start()


class RedisHung:
    """The fault: Redis stops answering with its connections open (SIGSTOP)
    until it is resumed."""

    kind = "redis hung"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def inject(self) -> None:
        self.server.pause()

    def heal(self) -> None:
        self.server.resume()

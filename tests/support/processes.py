"""Real PlasmaArt processes for chaos tests: the environment that points a
child process at the test's database, and ``plasmaart serve`` as a child
process that a test can kill and start again. Every wait is bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx

from tests.support.pgserver import free_port

# Variables that would point a child process elsewhere than the test's database.
FOREIGN_ENV = ("DATABASE_URL", "REDIS_URL", "FAL_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")
START_WITHIN_S = 60.0
STOP_WITHIN_S = 10.0


def child_env(database_url: str, var_dir: Path) -> dict[str, str]:
    """The test's database and var folder (the sandbox's jobs and the media
    live there, so a replacement process sees what the first left)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PLASMAART_") and name not in FOREIGN_ENV
    }
    env.update(
        DATABASE_URL=database_url,
        PLASMAART_VAR_DIR=str(var_dir),
        PLASMAART_CLOCK_INTERVAL_S="1",
        PLASMAART_AUTO_MIGRATE="false",
        PLASMAART_LOG_FORMAT="text",
    )
    return env


class ServerProcess:
    """``plasmaart serve --no-worker`` on a free loopback port, its output in
    a file; ``kill`` is SIGKILL, ``start`` starts it again on the same port."""

    def __init__(self, name: str, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plasmaart.cli",
                "serve",
                "--no-worker",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_WITHIN_S
        while True:
            assert self.process.poll() is None, f"{self.name} exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.log()}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, whatever the server was doing."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=STOP_WITHIN_S)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_WITHIN_S)
        self._log.close()


class WorkerProcess:
    """``plasmaart worker --concurrency N`` as a child process, its output in a file."""

    def __init__(self, name: str, env: Mapping[str, str], cwd: Path, concurrency: int) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "plasmaart.cli", "worker", "--concurrency", str(concurrency)],
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_WITHIN_S)
        self._log.close()

"""Processes killed: a ``plasmaart worker`` or a ``plasmaart serve`` process
of the bank test's fleet, with SIGKILL (no shutdown handler runs), and
started again at the heal.

A worker's jobs stay leased to it until the lease runs out; another worker
then takes them over and finishes them (resuming from the provider request
id it stored). A killed API process drops its requests in flight; a client
sends them again (with the same ``Idempotency-Key``) to the other API
process, and a key left running by the dead request is taken over after
``PLASMAART_IDEMPOTENCY_TAKEOVER_S``.

A process that starts while the database is away exits with ``error:
cannot reach the database``, as it would under systemd, whose
``Restart=on-failure`` (``deploy/systemd/``) starts it again: the fleet does
the same (``restart_exited``, ``ApiKill.heal``), and any other exit is a
problem it reports.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ServerProcess, WorkerProcess

# What a process says when it starts while the database is away (cli.py).
UNREACHABLE = "cannot reach the database"
# How long a process may keep failing to start that way.
RESTART_WITHIN_S = 120.0


@dataclass
class Fleet:
    """The platform's processes in a multi-process test: ``servers`` (each
    killed and started again on its port) and ``workers`` (a killed worker
    is replaced by a new process at the same index)."""

    env: Mapping[str, str]
    cwd: Path
    servers: list[ServerProcess]
    workers: list[WorkerProcess] = field(default_factory=list)
    concurrency: int = 3
    started_workers: int = 0

    # Workers a fault holds down (killed, not yet started again).
    down: set[int] = field(default_factory=set)
    # Processes started again after they exited on their own, and the exits
    # that were not the database being away at start-up (each a problem).
    restarted: int = 0
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_worker(self, index: int) -> WorkerProcess:
        with self._lock:
            self.down.discard(index)
            return self._start_worker(index)

    def _start_worker(self, index: int) -> WorkerProcess:
        self.started_workers += 1
        worker = WorkerProcess(
            f"worker{index}-{self.started_workers}", self.env, self.cwd, self.concurrency
        )
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        return worker

    def kill_worker(self, index: int) -> None:
        with self._lock:
            self.down.add(index)
            self.workers[index].close()  # SIGKILL, then reaped

    def restart_exited(self) -> int:
        """What systemd's ``Restart=on-failure`` does: each worker that exited
        on its own (not held down by a fault) is started again; how many."""
        with self._lock:
            exited = [
                (index, worker)
                for index, worker in enumerate(self.workers)
                if index not in self.down and worker.process.poll() is not None
            ]
            for index, worker in exited:
                self._note_exit(worker.name, worker.log())
                worker.close()
                self._start_worker(index)
            self.restarted += len(exited)
            return len(exited)

    def _note_exit(self, name: str, log: str) -> None:
        if UNREACHABLE not in log[-2000:]:
            self.problems.append(f"{name} exited:\n{log[-3000:]}")

    def start_server(self, index: int, within_s: float = RESTART_WITHIN_S) -> None:
        """Start API process ``index``, again and again (a second apart, as
        ``RestartSec``) while it exits because the database is away."""
        server = self.servers[index]
        deadline = time.monotonic() + within_s
        while True:
            try:
                server.start()
                return
            except AssertionError:
                log = server.log()
                if server.process.poll() is None or time.monotonic() > deadline:
                    raise
                self._note_exit(server.name, log)
                if UNREACHABLE not in log[-2000:]:
                    raise
                self.restarted += 1
                time.sleep(1.0)

    def close(self) -> None:
        for process in [*self.workers, *self.servers]:
            process.close()


class WorkerKill:
    """SIGKILL to one of the fleet's workers (a seeded random one); the heal
    starts a new worker in its place."""

    kind = "worker SIGKILL"

    def __init__(self, fleet: Fleet, *, seed: int) -> None:
        self.fleet = fleet
        self._pick = random.Random(seed)
        self._victim: int | None = None

    def inject(self) -> None:
        victim = self._pick.randrange(len(self.fleet.workers))
        self.fleet.kill_worker(victim)
        self._victim = victim

    def heal(self) -> None:
        if self._victim is None:
            return
        self.fleet.start_worker(self._victim)
        self._victim = None


class ApiKill:
    """SIGKILL to the fleet's API process ``index``; the heal starts it again
    on the same port and returns once it answers ``/readyz``."""

    kind = "API SIGKILL"

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self._down = False

    def inject(self) -> None:
        self.fleet.servers[self.index].kill()
        self._down = True

    def heal(self) -> None:
        if not self._down:
            return
        self.fleet.start_server(self.index)
        self._down = False

"""Processes killed: a ``plasmaart worker`` or a ``plasmaart serve`` process
of the bank test's fleet, with SIGKILL (no shutdown handler runs), and
started again at the heal.

A worker's jobs stay leased to it until the lease runs out; another worker
then takes them over and finishes them (resuming from the provider request
id it stored). A killed API process drops its requests in flight; a client
sends them again (with the same ``Idempotency-Key``) to the other API
process, and a key left running by the dead request is taken over after
``PLASMAART_IDEMPOTENCY_TAKEOVER_S``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ServerProcess, WorkerProcess


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

    def start_worker(self, index: int) -> WorkerProcess:
        self.started_workers += 1
        worker = WorkerProcess(
            f"worker{index}-{self.started_workers}", self.env, self.cwd, self.concurrency
        )
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        return worker

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
        self.fleet.workers[victim].close()  # SIGKILL, then reaped
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
        self.fleet.servers[self.index].start()
        self._down = False

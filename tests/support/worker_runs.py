"""What the tests of ``plasmaart worker`` processes share: waiting for the
database to show something while the workers run, the jobs as they are
now, and the sandbox provider's own record of what it was asked."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from plasmaart.db.engine import Database
from plasmaart.db.tables import generations
from tests.support.processes import WorkerProcess

T = TypeVar("T")
POLL_S = 0.05


def wait_for_workers(
    check: Callable[[], T | None], within_s: float, what: str, workers: list[WorkerProcess]
) -> T:
    """Poll ``check`` until it returns something; fail (with the workers'
    logs) after ``within_s`` or as soon as a worker that should run has exited."""
    deadline = time.monotonic() + within_s
    while True:
        found = check()
        if found is not None:
            return found
        for worker in workers:
            code = worker.process.poll()
            if code is not None:
                pytest.fail(f"{worker.name} worker exited ({code}) before {what}:\n{worker.log()}")
        if time.monotonic() >= deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-4000:]}" for w in workers)
            pytest.fail(f"not {what} within {within_s:g} s\n{logs}")
        time.sleep(POLL_S)


def jobs_now(db: Database) -> dict[str, Any]:
    """Every generation row, by id."""
    with db.read() as conn:
        return {row.id: row for row in conn.execute(select(generations))}


def sandbox_jobs_by_prompt(var_dir: Path) -> dict[str, list[str]]:
    """The sandbox provider's jobs (request ids), by prompt: one file per
    submission it took."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted((var_dir / "sandbox").glob("*.json")):
        found[json.loads(path.read_bytes())["prompt"]].append(path.stem)
    return found

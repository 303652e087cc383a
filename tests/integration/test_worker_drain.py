"""``plasmaart worker`` drains on SIGTERM, on SQLite and PostgreSQL
(docs/deployment.md#processes): no new claim, the running jobs finish within
``PLASMAART_WORKER_DRAIN_S``, the rest are handed back (their lease released,
the hand-back not counted as an attempt), and the process exits 0. A second
worker finishes what was handed back at once (the lease is the default 60 s,
longer than the test waits: only a released lease lets it in), each job
charged once, the provider asked once per job, the books balanced.

Real processes and real time: three sandbox jobs, one short enough to end
within the drain, two longer.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings
from plasmaart.db.engine import Database
from plasmaart.db.tables import generations, holds
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import make_user
from tests.support.processes import WorkerProcess, child_env

T = TypeVar("T")
# Room for the short job's output to be drawn and stored after its 1 s at the
# provider on a loaded machine (it took 2.3 s under a load of 25 once).
DRAIN_S = 5.0
# A job that ends within the drain, and two that outlast it.
SHORT_S, LONG_S = 1, 9
START_WITHIN_S = 40.0
STOP_WITHIN_S = DRAIN_S + 15.0
FINISH_WITHIN_S = 30.0
TERMINAL = ("succeeded", "failed", "canceled")


def jobs_now(db: Database) -> dict[str, Any]:
    with db.read() as conn:
        return {row.id: row for row in conn.execute(select(generations))}


def wait_for(check: Callable[[], T | None], within_s: float, what: str, worker: WorkerProcess) -> T:
    deadline = time.monotonic() + within_s
    while True:
        found = check()
        if found is not None:
            return found
        code = worker.process.poll()
        if code is not None:
            pytest.fail(f"{worker.name} exited ({code}) before {what}:\n{worker.log()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"not {what} within {within_s:g} s:\n{worker.log()[-4000:]}")
        time.sleep(0.05)


@pytest.fixture
def platform(database_url: str, tmp_path: Path) -> Iterator[Platform]:
    built = bootstrap(Settings(database_url=database_url, var_dir=tmp_path / "var"), migrate=False)
    try:
        yield built
    finally:
        built.close()


def test_a_drained_worker_finishes_or_hands_back_its_jobs(
    platform: Platform, database_url: str, tmp_path: Path
) -> None:
    user = make_user(platform, "drain@example.com", plan="studio")
    with platform.db.read() as conn:
        before = platform.ledger.balance(conn, user.wallet_id).available
    delays: dict[str, int] = {}
    prompts: dict[str, str] = {}
    for n, delay in enumerate((SHORT_S, LONG_S, LONG_S)):
        prompt = f"drain job {n}"
        with platform.db.write() as conn:
            queued = platform.generations.submit(
                conn,
                platform.accounts.get_by_email(conn, user.email),
                GenerationRequest(
                    "flux-schnell", prompt, params={"seed": n, "sandbox": {"delay_s": delay}}
                ),
            )
        delays[queued.id], prompts[queued.id] = delay, prompt
    held = sum(int(row.credits_held) for row in jobs_now(platform.db).values())

    env = child_env(database_url, tmp_path / "var")
    env["PLASMAART_WORKER_DRAIN_S"] = str(DRAIN_S)
    first = WorkerProcess("first", env, tmp_path, concurrency=3)
    second: WorkerProcess | None = None
    try:

        def all_at_the_provider() -> bool | None:
            rows = jobs_now(platform.db).values()
            return all(row.status == "running" and row.provider_request_id for row in rows) or None

        wait_for(all_at_the_provider, START_WITHIN_S, "three jobs running", first)
        first.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = first.process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not drain within {STOP_WITHIN_S:g} s:\n{first.log()}")
        drained_in = time.monotonic() - signalled
        log = first.log()
        assert code == 0, log
        assert "Traceback" not in log, log
        # It waited out the drain (the long jobs were still running), not longer.
        assert DRAIN_S - 0.5 <= drained_in < DRAIN_S + 10, drained_in

        at_exit = jobs_now(platform.db)
        short = next(gid for gid, delay in delays.items() if delay == SHORT_S)
        long_jobs = [gid for gid, delay in delays.items() if delay == LONG_S]
        assert at_exit[short].status == "succeeded", "the short job finished within the drain"
        assert f"handing back 2 job(s) to the queue: {', '.join(sorted(long_jobs))}" in log, log
        for gid in long_jobs:
            row = at_exit[gid]
            assert row.status == "running"
            assert row.provider_request_id, "handed back with its provider request"
            # Not counted as an attempt, and free for the next claim at once.
            assert int(row.attempts) == 0
            assert row.lease_expires_at is not None

        second = WorkerProcess("second", env, tmp_path, concurrency=3)

        def all_ended() -> dict[str, Any] | None:
            rows = jobs_now(platform.db)
            return rows if all(row.status in TERMINAL for row in rows.values()) else None

        # Well before the 60 s lease of the first worker would have run out.
        final = wait_for(all_ended, FINISH_WITHIN_S, "every job ended", second)
        assert {row.status for row in final.values()} == {"succeeded"}
        for gid in long_jobs:
            assert f"job {gid} resumed from provider request" in second.log()
            assert int(final[gid].attempts) == 1, "the hand-back was not an attempt"
    finally:
        first.close()
        if second is not None:
            second.close()

    # Each job charged once (flux-schnell, one output), every hold settled.
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        after = platform.ledger.balance(conn, user.wallet_id)
        settled = conn.execute(select(holds.c.amount, holds.c.captured, holds.c.released)).all()
    assert after.held == 0
    assert before - after.available == held
    # Three holds, each captured in full once (a second capture would not
    # balance: check_ledger), nothing released.
    assert [(int(a), int(c), int(r)) for a, c, r in settled] == [(a, a, 0) for a, _c, _r in settled]
    assert len(settled) == 3
    # The provider was asked once per job: the second worker resumed the
    # handed-back jobs from their request ids.
    submitted = Counter(
        json.loads(path.read_bytes())["prompt"]
        for path in (tmp_path / "var" / "sandbox").glob("*.json")
    )
    assert submitted == Counter(prompts.values())

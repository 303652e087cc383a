"""A worker process killed with SIGKILL in the middle of its jobs, on SQLite
and PostgreSQL (DESIGN.md §4: a crashed worker's jobs are picked up again and
resume from the stored provider request id, never a second charge).

Real processes and real time: ``plasmaart worker --concurrency 3`` runs a
dozen sandbox jobs (1 to 3 s each) until it is killed with SIGKILL while jobs
are in flight, and a second worker process takes over. The lease is the
default 60 s (``PLASMAART_JOB_LEASE_S``), longer than a test may wait, so once
the replacement worker runs the test moves the dead worker's leases into the
past: that UPDATE stands for the lease running out, and changes nothing else
(the bank test, tests/chaos/test_bank.py, runs with a short lease instead). Then
every job must end, each charged exactly for the outputs it delivered, each
hold resolved once, the provider asked once per job, the wallets and the
books balanced, and the second worker must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings
from plasmaart.db.tables import generation_outputs, generations, holds, journal_entries
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import make_user
from tests.support.processes import WorkerProcess, child_env
from tests.support.worker_runs import jobs_now, sandbox_jobs_by_prompt, wait_for_workers

# Every wait is bounded. The first includes the worker's start-up (imports,
# connecting) and the first job finishing; the second, a dozen 1-3 s jobs on
# three slots plus one video render.
KILL_WITHIN_S = 30.0
FINISH_WITHIN_S = 45.0
STOP_WITHIN_S = 10.0
# Job slots per worker process: the kill waits until all of them are busy.
CONCURRENCY = 3
TERMINAL = ("succeeded", "failed", "canceled")

USERS = {"sia@example.com": "studio", "sol@example.com": "studio", "pat@example.com": "pro"}


@dataclass(frozen=True)
class Job:
    email: str
    model: str
    outputs: int
    delay_s: int
    fail: bool = False

    @property
    def expected_status(self) -> str:
        return "failed" if self.fail else "succeeded"


JOBS = (
    Job("sia@example.com", "flux-schnell", 2, 1),
    Job("sol@example.com", "pixverse-v4.5", 1, 1),
    Job("pat@example.com", "flux-schnell", 2, 2),
    Job("sia@example.com", "flux-schnell", 1, 2, fail=True),
    Job("sol@example.com", "flux-dev", 1, 1),
    Job("pat@example.com", "flux-schnell", 1, 1),
    Job("sia@example.com", "flux-schnell", 1, 3),
    Job("sol@example.com", "flux-schnell", 2, 1, fail=True),
    Job("pat@example.com", "flux-schnell", 2, 1, fail=True),
    Job("sia@example.com", "flux-schnell", 2, 2),
    Job("sol@example.com", "flux-schnell", 1, 2),
    Job("pat@example.com", "flux-schnell", 1, 1),
)


def test_a_killed_workers_jobs_finish_charged_once(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    var_dir = tmp_path / "var"
    platform: Platform = bootstrap(
        Settings(database_url=database_url, var_dir=var_dir), migrate=False
    )
    workers: list[WorkerProcess] = []
    try:
        initial: dict[str, int] = {}
        wallet_of: dict[str, str] = {}
        for email, plan in USERS.items():
            user = make_user(platform, email, plan=plan)
            wallet_of[email] = user.wallet_id
            with platform.db.read() as conn:
                initial[user.wallet_id] = platform.ledger.balance(conn, user.wallet_id).available
        spec_of: dict[str, Job] = {}
        prompt_of: dict[str, str] = {}
        for n, job in enumerate(JOBS):
            prompt = f"chaos job {n}: a lighthouse in a storm"
            sandbox: dict[str, Any] = {"delay_s": job.delay_s}
            if job.fail:
                sandbox["fail"] = True
            with platform.db.write() as conn:
                queued = platform.generations.submit(
                    conn,
                    platform.accounts.get_by_email(conn, job.email),
                    GenerationRequest(
                        job.model,
                        prompt,
                        num_outputs=job.outputs,
                        params={"seed": n, "sandbox": sandbox},
                    ),
                )
            spec_of[queued.id] = job
            prompt_of[queued.id] = prompt

        env = child_env(database_url, var_dir)
        first = WorkerProcess("first", env, tmp_path, CONCURRENCY)
        workers.append(first)

        def in_flight_with_some_done() -> dict[str, Any] | None:
            # Kill when every slot has a job under way at the provider (request
            # ids stored) and one job has already ended: the crash lands mid-stream.
            rows = jobs_now(platform.db)
            running = [row for row in rows.values() if row.status == "running"]
            done = [row for row in rows.values() if row.status in TERMINAL]
            if (
                done
                and len(running) == CONCURRENCY
                and all(row.provider_request_id for row in running)
            ):
                return rows
            return None

        wait_for_workers(in_flight_with_some_done, KILL_WITHIN_S, "jobs in flight", [first])
        os.kill(first.pid, signal.SIGKILL)
        killed_after = time.monotonic() - started
        assert first.process.wait(timeout=STOP_WITHIN_S) == -signal.SIGKILL
        workers.remove(first)
        first.close()

        # What the dead worker left: read after its death, so nothing moves.
        at_kill = jobs_now(platform.db)
        done_at_kill = {gid: row for gid, row in at_kill.items() if row.status in TERMINAL}
        in_flight = {gid: row for gid, row in at_kill.items() if row.status == "running"}
        queued_at_kill = [gid for gid, row in at_kill.items() if row.status == "queued"]
        assert in_flight, "the kill landed with no job in flight"
        dead_owners = {row.lease_owner for row in in_flight.values()}
        assert all(f":{first.pid}:" in str(owner) for owner in dead_owners), dead_owners

        second = WorkerProcess("second", env, tmp_path, CONCURRENCY)
        workers.append(second)
        # The lease running out (60 s in production), compressed: only the dead
        # worker's leases move, and only their expiry.
        with platform.db.write() as conn:
            expired = conn.execute(
                update(generations)
                .where(
                    generations.c.lease_owner.in_(dead_owners),
                    generations.c.status == "running",
                )
                .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
            ).rowcount
        assert expired == len(in_flight)

        def all_terminal() -> dict[str, Any] | None:
            rows = jobs_now(platform.db)
            return rows if all(row.status in TERMINAL for row in rows.values()) else None

        final = wait_for_workers(all_terminal, FINISH_WITHIN_S, "every job terminal", [second])
        finished_after = time.monotonic() - started

        # Graceful shutdown: SIGTERM ends an idle worker at once, exit code 0.
        second.process.send_signal(signal.SIGTERM)
        try:
            code = second.process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker ignored SIGTERM for {STOP_WITHIN_S:g} s:\n{second.log()}")
        assert code == 0, second.log()
        assert "Traceback" not in second.log(), second.log()

        # -- the invariants ------------------------------------------------
        with platform.db.read() as conn:
            assert check_ledger(conn) == []
            delivered = Counter(
                {
                    row[0]: int(row[1])
                    for row in conn.execute(
                        select(generation_outputs.c.generation_id, func.count()).group_by(
                            generation_outputs.c.generation_id
                        )
                    )
                }
            )
            stored = conn.execute(
                select(generation_outputs.c.storage_key, generation_outputs.c.size)
            ).all()
            hold_rows = {row.id: row for row in conn.execute(select(holds))}
            entries: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for entry in conn.execute(
                select(journal_entries.c.hold_id, journal_entries.c.kind, journal_entries.c.credits)
                .where(journal_entries.c.hold_id.is_not(None))
                .order_by(journal_entries.c.id)
            ):
                entries[entry.hold_id].append((entry.kind, int(entry.credits)))
            balances = {
                wallet: platform.ledger.balance(conn, wallet) for wallet in wallet_of.values()
            }

        assert set(final) == set(spec_of)
        charged_by_wallet: Counter[str] = Counter()
        for gid, row in final.items():
            job = spec_of[gid]
            label = f"{gid} ({job})"
            assert row.status == job.expected_status, (label, row.status, row.error_code)
            if job.fail:
                assert (row.error_code, delivered[gid]) == ("generation_failed", 0), label
            else:
                assert delivered[gid] == job.outputs, label
            charged = int(row.credits_per_output) * delivered[gid]
            held = int(row.credits_held)
            assert int(row.credits_charged) == charged, label
            charged_by_wallet[row.wallet_id] += charged
            # The hold resolved exactly once: one hold entry, at most one
            # capture and one release, together the amount held.
            hold = hold_rows[row.hold_id]
            assert hold.status != "pending", label
            assert hold.resolved_at is not None, label
            assert (int(hold.captured), int(hold.released)) == (charged, held - charged), label
            expected_entries = [("hold", held)]
            if charged:
                expected_entries.append(("capture", charged))
            if held - charged:
                expected_entries.append(("release", held - charged))
            assert entries[row.hold_id] == expected_entries, label
            # Terminal states never change: what the dead worker finished stays.
            if gid in done_at_kill:
                before = done_at_kill[gid]
                fields = ("status", "credits_charged", "provider_request_id", "finished_at")
                assert [row._mapping[f] for f in fields] == [before._mapping[f] for f in fields], (
                    label
                )

        # Resumed from the stored request id: the provider was not asked twice.
        provider_jobs = sandbox_jobs_by_prompt(var_dir)
        orphans = 0
        for gid, row in final.items():
            label = f"{gid} ({spec_of[gid]})"
            assert row.provider_request_id is not None, label
            submitted = provider_jobs[prompt_of[gid]]
            assert row.provider_request_id in submitted, label
            if gid in in_flight and in_flight[gid].provider_request_id is None:
                # Killed between asking the provider and storing its answer:
                # nothing names that request, so a second one is unavoidable.
                assert len(submitted) <= 2, (label, submitted)
                orphans += len(submitted) - 1
            else:
                assert submitted == [row.provider_request_id], (label, submitted)
        for gid, before in in_flight.items():
            row = final[gid]
            if before.provider_request_id is not None:
                assert row.provider_request_id == before.provider_request_id, gid
            # Claimed again by the second worker, with a newer fencing token.
            assert int(row.attempts) >= 2, gid
            assert row.fencing_token > before.fencing_token, gid
        assert sum(len(ids) for ids in provider_jobs.values()) == len(final) + orphans

        for wallet, balance in balances.items():
            assert (balance.available, balance.held) == (
                initial[wallet] - charged_by_wallet[wallet],
                0,
            ), wallet
        for key, size in stored:
            assert len(platform.storage.get(key)) == size, key

        statuses = Counter(row.status for row in final.values())
        kept = [gid for gid, row in in_flight.items() if row.provider_request_id is not None]
        with capsys.disabled():
            print(  # noqa: T201 - the chaos report is meant to be read
                f"\n[chaos {platform.db.dialect}] {len(final)} jobs "
                f"({dict(statuses)}); SIGKILL with {len(done_at_kill)} done, "
                f"{len(in_flight)} in flight, {len(queued_at_kill)} queued; "
                f"{len(in_flight)} resumed ({len(kept)} from a stored request id), "
                f"{orphans} orphan provider jobs; "
                f"{sum(charged_by_wallet.values())} credits charged; "
                f"killed at {killed_after:.1f} s, all done at {finished_after:.1f} s, "
                f"{time.monotonic() - started:.1f} s in all"
            )
    finally:
        for worker in workers:
            worker.close()
        platform.close()

"""The clock jumps: backwards, nothing expires or renews twice; forwards,
each period that passed renews (or ends) once and each lot expires once.

In-process, with a ``ManualClock`` (the honest model of the billing clock:
every decision of the worker's clock pass is taken from ``now`` against
what the database recorded): renewals (a plain one, a scheduled downgrade,
a cancellation at the period end), monthly lots and a promotion's lot
expiring, and an auto top-up's monthly cap, around the February boundary,
with the clock jumping back over it and forward again, then forward over
several periods at once and back into one of them.

With real processes (``tests/support/faults/clock.py``, libfaketime), the
wall clock of a ``plasmaart serve`` and two ``plasmaart worker`` processes
jumps while jobs run: see ``test_leases_survive_the_wall_clock_jumping``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.bootstrap import bootstrap
from plasmaart.clock import ManualClock, as_utc
from plasmaart.config import Settings
from plasmaart.db.engine import Database
from plasmaart.db.tables import (
    generation_outputs,
    generations,
    journal_entries,
    lots,
    payments,
    topup_runs,
)
from plasmaart.generation import queue
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.faults.clock import ClockControl, ClockJump
from tests.support.matrix import Snapshot, changes, snapshot
from tests.support.processes import WorkerProcess, child_env

T = TypeVar("T")

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
PACK_PRICE_CENTS = 1200  # pack-1000


def spend(platform: Platform, who: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        hold = platform.ledger.hold(conn, who.wallet_id, credits, idempotency_key=f"{key}:h")
        platform.ledger.capture(conn, hold.hold_id, credits, idempotency_key=f"{key}:c")


def tick(platform: Platform, clock: ManualClock, when: datetime) -> None:
    """The clock reads ``when``; a worker's clock pass (twice: a second
    worker right behind the first)."""
    clock.set(when)
    Worker(platform).run_once()
    Worker(platform).run_once()


def books(platform: Platform) -> Snapshot:
    """The tables a clock pass may move credits or subscriptions in."""
    state = snapshot(platform)
    kept = ("lots", "journal_entries", "payments", "subscriptions", "topup_runs", "wallets")
    return {name: rows for name, rows in state.items() if name in kept}


def test_jumps_over_period_boundaries_renew_and_expire_once(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com", plan="starter")
    ben = make_user(platform, "ben@example.com", plan="pro")
    cat = make_user(platform, "cat@example.com", plan="studio")
    dan = make_user(platform, "dan@example.com", credits=2000)
    # A promotion for Ana that ends half an hour into February.
    with platform.db.write() as conn:
        platform.ledger.grant(
            conn,
            ana.wallet_id,
            300,
            source="promo",
            idempotency_key="promo:ana",
            expires_at=FEB_1 + timedelta(minutes=30),
        )
    # Ben moves down to Starter from his next period; Cat cancels at its end.
    clock.set(JAN_1 + timedelta(days=10))
    answer = client.patch("/v1/subscription", json={"plan": "starter"}, headers=ben.auth)
    assert answer.status_code == 200, answer.text
    answer = client.delete("/v1/subscription", headers=cat.auth)
    assert answer.status_code == 200, answer.text
    # Dan's auto top-up: one pack a month at most (the cap is one pack's price).
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, dan.id, declines=False, requires_action=False)
        platform.auto_topups.configure(
            conn,
            wallet_id=dan.wallet_id,
            user_id=dan.id,
            enabled=True,
            threshold=1500,
            pack_id="pack-1000",
            monthly_cap_cents=PACK_PRICE_CENTS,
        )
    spend(platform, ana, 500, "ana-jan")

    # Just before the boundary: nothing is due.
    tick(platform, clock, FEB_1 - timedelta(minutes=2))
    before_boundary = books(platform)
    # Over it: renewed, downgraded, canceled; January's monthly lots expired.
    tick(platform, clock, FEB_1 + timedelta(minutes=2))
    spend(platform, dan, 600, "dan-feb")  # 1,400: below 1,500, a top-up (February's)
    tick(platform, clock, FEB_1 + timedelta(minutes=5))
    tick(platform, clock, FEB_1 + timedelta(minutes=40))  # the promotion expires
    after_boundary = books(platform)
    assert changes(before_boundary, after_boundary) != []
    assert plans(platform, ana, ben, cat) == ("starter", "starter", "free")

    # The clock jumps back over the boundary, passes run, and it comes
    # forward again: nothing renews, ends, expires or tops up again, and
    # nothing comes back. Dan's spending in "January" meets January's cap
    # counted with February's top-up (a month's cap counts from its start).
    tick(platform, clock, FEB_1 - timedelta(minutes=10))
    spend(platform, dan, 1000, "dan-back")  # 1,400 again: below the threshold
    tick(platform, clock, FEB_1 - timedelta(minutes=9))
    moved = changes(after_boundary, books(platform))
    # Only Dan's own spending moved: his wallet, its journal, his lots.
    assert moved
    assert all(line.startswith(("journal_entries", "wallets", "lots")) for line in moved), moved
    for other in (ana, ben, cat):
        assert not any(other.wallet_id in line for line in moved), moved
    assert [run.status for run in runs_of(platform, dan)] == ["succeeded"]
    settled = books(platform)
    tick(platform, clock, FEB_1 + timedelta(minutes=45))
    assert changes(settled, books(platform)) == []

    # Forward over two periods at once: each renews once (March, April);
    # back into February: nothing; forward again: nothing more.
    tick(platform, clock, MAR_1 + timedelta(days=31, minutes=10))
    tick(platform, clock, FEB_1 + timedelta(days=20))
    tick(platform, clock, MAR_1 + timedelta(days=31, minutes=20))

    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        # One payment per period: Ana's first, then February to April.
        assert renewals(platform, ana) == [JAN_1, FEB_1, MAR_1, datetime(2026, 4, 1, tzinfo=UTC)]
        assert renewals(platform, ben) == [JAN_1, FEB_1, MAR_1, datetime(2026, 4, 1, tzinfo=UTC)]
        assert renewals(platform, cat) == [JAN_1]
        # One monthly grant per period, each expired (or rolled over) once.
        grants = conn.execute(
            select(lots.c.wallet_id, lots.c.source, lots.c.reference).where(
                lots.c.wallet_id.in_([ana.wallet_id, ben.wallet_id])
            )
        ).all()
        per_period = Counter((row.wallet_id, row.reference) for row in grants)
        assert set(per_period.values()) == {1}, per_period
        assert Counter(row.wallet_id for row in grants if row.source == "subscription") == {
            ana.wallet_id: 4,
            ben.wallet_id: 4,
        }
        expiries = Counter(
            conn.execute(
                select(journal_entries.c.lot_id).where(journal_entries.c.kind == "expire")
            ).scalars()
        )
        assert expiries
        assert set(expiries.values()) == {1}, expiries
        # Every lot that ended before April expired, once (the promotion too).
        open_old = conn.execute(
            select(lots.c.id).where(
                lots.c.expires_at < datetime(2026, 4, 1, tzinfo=UTC),
                lots.c.closed_at.is_(None),
                lots.c.remaining > 0,
            )
        ).all()
        assert open_old == []
    # Dan's February top-up, and none in "January" after the jump back.
    [run] = runs_of(platform, dan)
    assert (run.status, run.amount_cents, _period_of(run.created_at)) == (
        "succeeded",
        PACK_PRICE_CENTS,
        FEB_1,
    )


def plans(platform: Platform, *who: TestUser) -> tuple[str, ...]:
    with platform.db.read() as conn:
        return tuple(platform.billing.plans.plan_of(conn, user.wallet_id).id for user in who)


def renewals(platform: Platform, who: TestUser) -> list[datetime]:
    """The start of each period paid for, by each subscription payment."""
    with platform.db.read() as conn:
        starts = conn.execute(
            select(payments.c.period_start)
            .where(
                payments.c.user_id == who.id,
                payments.c.kind.in_(("subscription", "renewal")),
                payments.c.status == "succeeded",
            )
            .order_by(payments.c.period_start)
        ).scalars()
        return [as_utc(start) for start in starts]


def _period_of(when: datetime) -> datetime:
    when = as_utc(when)
    return datetime(when.year, when.month, 1, tzinfo=UTC)


def runs_of(platform: Platform, who: TestUser) -> list[Any]:
    with platform.db.read() as conn:
        return list(
            conn.execute(select(topup_runs).where(topup_runs.c.wallet_id == who.wallet_id)).all()
        )


def test_a_lease_written_before_the_clock_jumped_back_is_brought_back(
    platform: Platform, clock: ManualClock
) -> None:
    """In-process: a job claimed with a 60 s lease, then the clock jumps back
    an hour. The lease now runs out an hour and a minute from "now"; a clock
    pass brings it back to one lease from now (its token kept, so a live
    holder goes on renewing it), and if nobody renews it, the next claim
    after that takes the job over. A lease within bounds is left alone."""
    lease = timedelta(seconds=60)
    ivy = make_user(platform, "ivy@example.com", plan="pro")

    def submit(n: int) -> str:
        with platform.db.write() as conn:
            return platform.generations.submit(
                conn,
                platform.accounts.get_by_email(conn, ivy.email),
                GenerationRequest("flux-schnell", f"lease {n}", params={"seed": n}),
            ).id

    def claim(worker_id: str, now: datetime) -> list[queue.Claim]:
        with platform.db.write() as conn:
            return queue.claim_batch(
                conn,
                worker_id=worker_id,
                now=now,
                lease=lease,
                busy_slots=0,
                total_slots=1,
                catalog=platform.catalogs.base,
                plans=platform.billing.plans,
            )

    def lease_of(job_id: str) -> datetime:
        with platform.db.read() as conn:
            found = conn.execute(
                select(generations.c.lease_expires_at).where(generations.c.id == job_id)
            ).scalar_one()
        return as_utc(found)

    stranded, kept = submit(1), submit(2)
    before = JAN_1 + timedelta(hours=12)
    [first] = claim("dead-worker", before)
    assert first.id == stranded
    back = before - timedelta(hours=1)
    clock.set(back)
    [second] = claim("live-worker", back)  # claimed after the jump: in bounds
    assert second.id == kept
    Worker(platform).run_once()
    assert lease_of(stranded) == back + lease
    assert lease_of(kept) == back + lease  # untouched: it was one lease ahead
    Worker(platform).run_once()  # a second pass moves nothing more
    assert lease_of(stranded) == back + lease
    # Nobody renews the dead worker's lease: one lease later, a claim takes
    # its job over, with a newer fencing token.
    assert claim("taker", back + lease - timedelta(seconds=1)) == []
    [taken] = claim("taker", back + lease + timedelta(seconds=1))
    assert (taken.id, taken.resumed) == (stranded, True)
    assert taken.token > first.token


# -- real processes: leases while the wall clock jumps --------------------------

LEASE_S = 3
# The first worker's slots; the second has more slots than there are jobs,
# so it always has one free for a takeover (the sandbox provider runs in
# the workers, under their clock: a job it had before the jump back is ready
# only when the clock catches up, and holds its slot until then).
CONCURRENCY = 2
SPARE_CONCURRENCY = 8
# A takeover after a backwards jump: the clock pass's lease clamp (every
# second here, PLASMAART_CLOCK_INTERVAL_S), then one lease, then a claim.
TAKEOVER_WITHIN_S = 20.0
START_WITHIN_S = 30.0
FINISH_WITHIN_S = 40.0
POLL_S = 0.05
TERMINAL = ("succeeded", "failed", "canceled")
PROCESS_USERS = {"ivy@example.com": "studio", "ola@example.com": "pro"}
# (user, outputs, provider delay in s): six short jobs.
PROCESS_JOBS = tuple((email, 1, 1 + n % 2) for n, email in enumerate(list(PROCESS_USERS) * 3))


def jobs_now(db: Database) -> dict[str, Any]:
    with db.read() as conn:
        return {row.id: row for row in conn.execute(select(generations))}


def wait_for(
    check: Callable[[], T | None], within_s: float, what: str, workers: list[WorkerProcess]
) -> T:
    """Poll ``check`` until it returns something; fail with the workers' logs
    after ``within_s`` or when one of them exited."""
    deadline = time.monotonic() + within_s
    while True:
        found = check()
        if found is not None:
            return found
        for worker in workers:
            code = worker.process.poll()
            if code is not None:
                pytest.fail(f"{worker.name} exited ({code}) before {what}:\n{worker.log()}")
        if time.monotonic() >= deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"not {what} within {within_s:g} s\n{logs}")
        time.sleep(POLL_S)


def provider_jobs_by_prompt(var_dir: Path) -> dict[str, list[str]]:
    """The sandbox provider's jobs (request ids), by prompt."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted((var_dir / "sandbox").glob("*.json")):
        found[json.loads(path.read_bytes())["prompt"]].append(path.stem)
    return found


def test_leases_survive_the_wall_clock_jumping(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workers under one clock control (one machine's clock): the first
    is killed with jobs in flight and the clock jumps back minutes at once,
    so its leases look minutes long; the second takes them over within
    seconds (never a lease made immortal by the jump). Then the clock jumps
    forward (every lease looks expired: a takeover is fenced). Every job
    ends, charged once for what it delivered, the provider asked once per
    job; the books balance."""
    started = time.monotonic()
    var_dir = tmp_path / "var"
    control = ClockControl(tmp_path / "clock")
    rng = random.Random(20)
    platform = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=False)
    workers: list[WorkerProcess] = []
    try:
        users = {
            email: make_user(platform, email, plan=plan) for email, plan in PROCESS_USERS.items()
        }
        initial = {}
        with platform.db.read() as conn:
            for user in users.values():
                initial[user.wallet_id] = platform.ledger.balance(conn, user.wallet_id).available
        prompt_of: dict[str, str] = {}
        for n, (email, outputs, delay_s) in enumerate(PROCESS_JOBS):
            prompt = f"clock job {n}: a sundial at midnight"
            with platform.db.write() as conn:
                queued = platform.generations.submit(
                    conn,
                    platform.accounts.get_by_email(conn, email),
                    GenerationRequest(
                        "flux-schnell",
                        prompt,
                        num_outputs=outputs,
                        params={"seed": n, "sandbox": {"delay_s": delay_s}},
                    ),
                )
            prompt_of[queued.id] = prompt

        env = control.env(child_env(database_url, var_dir))
        env["PLASMAART_JOB_LEASE_S"] = str(LEASE_S)
        first = WorkerProcess("first", env, tmp_path, CONCURRENCY)
        workers.append(first)

        def first_has_jobs_at_the_provider() -> list[Any] | None:
            mine = [
                row
                for row in jobs_now(platform.db).values()
                if row.status == "running"
                and f":{first.pid}:" in str(row.lease_owner)
                and row.provider_request_id
            ]
            return mine or None

        wait_for(first_has_jobs_at_the_provider, START_WITHIN_S, "jobs in flight", workers)
        second = WorkerProcess("second", env, tmp_path, SPARE_CONCURRENCY)
        workers.append(second)
        os.kill(first.pid, signal.SIGKILL)
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        workers.remove(first)
        first.close()
        # The clock jumps back minutes, right after: the dead worker's leases,
        # written in real time, now run out minutes from "now".
        back = ClockJump(control, rng, min_s=120, max_s=300, backwards_share=1.0)
        back.inject()
        orphaned = {
            gid: row
            for gid, row in jobs_now(platform.db).items()
            if row.status == "running" and f":{first.pid}:" in str(row.lease_owner)
        }
        assert orphaned, "the kill left no job in flight"
        jumped_at = time.monotonic()

        def taken_over() -> bool | None:
            rows = jobs_now(platform.db)
            done = all(
                rows[gid].status in TERMINAL or rows[gid].fencing_token > row.fencing_token
                for gid, row in orphaned.items()
            )
            return True if done else None

        wait_for(taken_over, TAKEOVER_WITHIN_S, "the dead worker's jobs taken over", workers)
        takeover_s = time.monotonic() - jumped_at
        phases = {"killed": jumped_at - started, "taken over": time.monotonic() - started}

        # Then the clock jumps forward (from real time) and stays there: every
        # lease looks expired at once, so a worker may take over a job another
        # still runs (fenced by its token) until the holder renews it.
        # (Less than a step's allowance, which a running step measures on the
        # wall clock too: a larger jump would end its fetching as timed out.)
        forward = ClockJump(control, rng, min_s=30, max_s=60, backwards_share=0.0)
        forward.inject()

        def all_terminal() -> dict[str, Any] | None:
            rows = jobs_now(platform.db)
            return rows if all(row.status in TERMINAL for row in rows.values()) else None

        final = wait_for(all_terminal, FINISH_WITHIN_S, "every job terminal", workers)
        phases["all terminal"] = time.monotonic() - started

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
            hold_entries: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for entry in conn.execute(
                select(journal_entries.c.hold_id, journal_entries.c.kind, journal_entries.c.credits)
                .where(journal_entries.c.hold_id.is_not(None))
                .order_by(journal_entries.c.id)
            ):
                hold_entries[entry.hold_id].append((entry.kind, int(entry.credits)))
            balances = {
                wallet: platform.ledger.balance(conn, wallet).available for wallet in initial
            }
        provider = provider_jobs_by_prompt(var_dir)
        charged: Counter[str] = Counter()
        orphans = 0
        for gid, row in final.items():
            label = f"{gid} {prompt_of[gid]}"
            # No job timed out or failed: jumps move no deadline past a job.
            assert (row.status, row.error_code) == ("succeeded", None), (label, row.error_message)
            outputs = delivered[gid]
            assert int(row.credits_charged) == int(row.credits_per_output) * outputs, label
            held = int(row.credits_held)
            expected = [("hold", held), ("capture", int(row.credits_charged))]
            if held > int(row.credits_charged):
                expected.append(("release", held - int(row.credits_charged)))
            assert hold_entries[row.hold_id] == expected, label
            charged[row.wallet_id] += int(row.credits_charged)
            # The provider asked once per job (a job resumed from its stored
            # request id is not asked again).
            submitted = provider[prompt_of[gid]]
            assert row.provider_request_id in submitted, label
            if gid in orphaned and orphaned[gid].provider_request_id is None:
                assert len(submitted) <= 2, (label, submitted)  # killed mid-ask
                orphans += len(submitted) - 1
            else:
                assert submitted == [row.provider_request_id], (label, submitted)
        for wallet, available in balances.items():
            assert available == initial[wallet] - charged[wallet], wallet
        for worker in workers:
            assert "Traceback" not in worker.log(), worker.log()
        with capsys.disabled():
            print(  # noqa: T201 - the chaos report is meant to be read
                f"\n[clock jumps {platform.db.dialect}] {len(final)} jobs succeeded; "
                f"1 SIGKILL with {len(orphaned)} in flight, clock {back.jumps[0]:+d} s: "
                f"taken over in {takeover_s:.1f} s; then clock {forward.jumps[0]:+d} s; "
                f"{sum(int(row.attempts) > 1 for row in final.values())} jobs claimed "
                f"more than once; {orphans} orphan provider jobs; "
                f"{sum(charged.values())} credits charged; "
                + ", ".join(f"{name} at {at:.1f} s" for name, at in phases.items())
                + "; "
                f"{time.monotonic() - started:.1f} s in all"
            )
    finally:
        control.real_time()
        for worker in workers:
            worker.close()
        platform.close()

"""The bank test, after Jepsen's: the whole platform under concurrent clients
and crashes, with the ledger's invariants checked while it runs and at the
end, on SQLite and PostgreSQL.

Two ``plasmaart serve --no-worker`` processes and two ``plasmaart worker``
processes share one database. Client threads, each a creator with a seeded
random generator, submit generations (a fifth of them told to fail by the
sandbox provider, some to deliver only part of their outputs, some whose
downloads are all refused, some with a delay), cancel their jobs, buy credit
packs, change plans, move their auto top-up's threshold (three of them have
it on, one with a card whose bank asks to confirm each off-session charge;
the workers charge the runs as balances cross it), set (half of them) a
monthly spend limit a little above what they spent, and advance the sandbox
test clock a day at a time (which runs renewals and expiries), on either API
process, retrying a request that got no answer with the same
``Idempotency-Key`` and sometimes sending one twice on purpose. Meanwhile a
worker is killed with SIGKILL every few seconds and started again (the job
lease is short, so its jobs are taken over while the test runs), and once,
mid-burst, an API process.

Checked at checkpoints (in one snapshot) and at the end: the journal sums to
zero, every wallet's balance equals its entries and its lots, nothing is
negative (``check_ledger``). At the end, once every job has finished: every
hold belongs to a job and is resolved exactly once, for what the job was
charged; the credits charged equal the credits of the outputs delivered, and
a job succeeded with what its sandbox params let arrive (all, or ``deliver``
of them; never one whose downloads were refused); no job timed out (the test
clock's jumps move billing time only); every 201 has its job, one per key;
a refused submission left no job (``spend_limit_reached`` among the
refusals); no wallet spent more in a month than its monthly spend limit;
every pack purchase was paid once per key; every auto top-up run ended, one
at a time per wallet, a succeeded one paid once (its pack's payment), a
failed or unconfirmed one never, and no calendar month of top-ups past its
cap.
On PostgreSQL the processes also share a real Redis (rate limits) and each
creator holds an event stream on an API process: it must carry only their
own generations, and the final state of every one of them, sent by worker
processes through LISTEN/NOTIFY. A report of what was done and injected is
printed.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, func, select

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.bootstrap import bootstrap
from plasmaart.clock import as_utc
from plasmaart.config import Settings
from plasmaart.db.engine import Database
from plasmaart.db.tables import (
    generation_outputs,
    generations,
    holds,
    payments,
    topup_runs,
    wallets,
)
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.processes import ServerProcess, WorkerProcess, child_env
from tests.support.redis_server import redis_server

SEED = 7_2026
RUN_S = 20.0  # the chaos phase
FINISH_WITHIN_S = 90.0  # then every job must end
CHECKPOINT_EVERY_S = 4.0
WORKER_KILL_EVERY_S = (2.0, 4.0)
CONCURRENCY = 3
REQUEST_TIMEOUT_S = 10.0
TERMINAL = ("succeeded", "failed", "canceled")
PLANS = ("starter", "pro", "studio")
PACKS = ("pack-1000", "pack-3000")
# (model, outputs allowed) a Starter plan can run: images, cheap.
MODELS = (("flux-schnell", 4), ("flux-dev", 2), ("sd3-medium", 2))
# The auto top-up of creators c0, c1 and c2: (pack, monthly cap in cents),
# and whether the sandbox card asks to confirm each off-session charge.
TOPUPS = {
    0: ("pack-1000", 3600, False),
    1: ("pack-1000", 100_000, True),
    2: ("pack-3000", 100_000, False),
}
# How far below the balance a creator sets the threshold: a few jobs cross it.
TOPUP_MARGIN = (0, 20)


@dataclass
class Creator:
    user: TestUser
    name: str
    seed: int
    admin_auth: dict[str, str]
    ops: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, str] = field(default_factory=dict)  # key -> generation id
    refused: dict[str, int] = field(default_factory=dict)  # submission key -> status
    packs: set[str] = field(default_factory=set)  # pack keys answered 201
    topup: tuple[str, int] | None = None  # (pack, cap cents) when auto top-up is on
    # The monthly spend limits sent (each at least the month's spending when
    # sent, and never below the last one answered) and the first month limited.
    sets_limits: bool = False  # half of the creators do
    limits_sent: list[int] = field(default_factory=list)
    limited_from: str | None = None  # the resets_at of the first limit answered
    unanswered: int = 0
    violations: list[str] = field(default_factory=list)

    def call(
        self,
        servers: list[ServerProcess],
        pick: random.Random,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        key: str | None = None,
        auth: dict[str, str] | None = None,
        deadline: float,
    ) -> httpx.Response | None:
        """One request on a random API process; one that gets no answer is
        sent again (with the same key) until it does or the deadline passes."""
        headers = dict(auth or self.user.auth)
        if key:
            headers["Idempotency-Key"] = key
        while time.monotonic() < deadline:
            server = pick.choice(servers)
            try:
                response = httpx.request(
                    method,
                    f"{server.url}{path}",
                    json=body,
                    headers=headers,
                    timeout=REQUEST_TIMEOUT_S,
                )
            except httpx.TransportError:
                self.unanswered += 1
                time.sleep(0.05)
                continue
            if response.status_code == 409 and response.json().get("in_progress"):
                time.sleep(0.1)  # the key's first request died with its server
                continue
            if response.status_code >= 500:
                self.violations.append(f"{method} {path}: {response.status_code} {response.text}")
            return response
        return None

    def run(self, servers: list[ServerProcess], stop: threading.Event, deadline: float) -> None:
        pick = random.Random(self.seed)
        n = 0
        while not stop.is_set():
            n += 1
            roll = pick.random()
            if roll < 0.57 or (roll < 0.6 and not self.sets_limits):
                self.submit(servers, pick, f"{self.name}-g{n}", deadline)
            elif roll < 0.6:
                self.limit_spending(servers, pick, deadline)
            elif roll < 0.75 and self.accepted:
                generation_id = pick.choice(sorted(self.accepted.values()))
                self.ops["cancel"] += 1
                self.call(
                    servers,
                    pick,
                    "POST",
                    f"/v1/generations/{generation_id}/cancel",
                    deadline=deadline,
                )
            elif roll < 0.85:
                key = f"{self.name}-p{n}"
                self.ops["buy pack"] += 1
                response = self.call(
                    servers,
                    pick,
                    "POST",
                    "/v1/credit-purchases",
                    body={"pack": pick.choice(PACKS)},
                    key=key,
                    deadline=deadline,
                )
                if response is not None and response.status_code == 201:
                    self.packs.add(key)
            elif roll < 0.9:
                self.ops["change plan"] += 1
                self.call(
                    servers,
                    pick,
                    "PATCH",
                    "/v1/subscription",
                    body={"plan": pick.choice(PLANS)},
                    key=f"{self.name}-s{n}",
                    deadline=deadline,
                )
            elif roll < 0.95 and self.topup is not None:
                self.move_threshold(servers, pick, deadline)
            elif roll >= 0.95:
                self.ops["advance clock"] += 1
                self.call(
                    servers,
                    pick,
                    "POST",
                    "/v1/admin/clock/advance",
                    body={"days": 1},
                    auth=self.admin_auth,
                    key=f"{self.name}-c{n}",
                    deadline=deadline,
                )

    def move_threshold(
        self, servers: list[ServerProcess], pick: random.Random, deadline: float
    ) -> None:
        """Set the auto top-up's threshold just under the balance: the next
        few jobs take it below, and a worker buys a pack."""
        assert self.topup is not None
        balance = self.call(servers, pick, "GET", "/v1/balance", deadline=deadline)
        if balance is None or balance.status_code != 200:
            return
        pack, cap = self.topup
        threshold = max(0, int(balance.json()["available"]) - pick.randint(*TOPUP_MARGIN))
        self.ops["move top-up threshold"] += 1
        self.call(
            servers,
            pick,
            "PUT",
            "/v1/auto-topup",
            body={"enabled": True, "threshold": threshold, "pack": pack, "monthly_cap_cents": cap},
            deadline=deadline,
        )

    def limit_spending(
        self, servers: list[ServerProcess], pick: random.Random, deadline: float
    ) -> None:
        """Set (or raise) the wallet's monthly spend limit a little above what
        it spent this month: the submissions that follow meet it. Only this
        thread submits for this creator, so the spending cannot grow between
        the read and the write."""
        self.ops["spend limit"] += 1
        now = self.call(servers, pick, "GET", "/v1/spend-limit", deadline=deadline)
        if now is None or now.status_code != 200:
            return
        current = now.json()
        limit = current["spent"] + pick.randint(2, 25)
        if current["monthly_credits"] is not None:
            limit = max(limit, current["monthly_credits"])
        self.limits_sent.append(limit)
        answer = self.call(
            servers,
            pick,
            "PUT",
            "/v1/spend-limit",
            body={"monthly_credits": limit},
            deadline=deadline,
        )
        if answer is not None and answer.status_code == 200 and self.limited_from is None:
            self.limited_from = answer.json()["resets_at"]

    def submit(
        self, servers: list[ServerProcess], pick: random.Random, key: str, deadline: float
    ) -> None:
        model, most = pick.choice(MODELS)
        outputs = pick.randint(1, most)
        sandbox: dict[str, Any] = {
            "fail": pick.random() < 0.2,
            "delay_s": pick.choice((0, 0, 1, 2)),
        }
        fault = pick.random()
        if fault < 0.1:
            sandbox["fail_download"] = True
        elif fault < 0.25 and outputs > 1:
            sandbox["deliver"] = pick.randint(1, outputs - 1)
        body = {
            "model": model,
            "prompt": f"{key}: a lighthouse in a storm",
            "num_outputs": outputs,
            "params": {"sandbox": sandbox},
        }
        self.ops["submit"] += 1
        for attempt in range(2 if pick.random() < 0.1 else 1):
            if attempt:
                self.ops["deliberate retry"] += 1
            response = self.call(
                servers, pick, "POST", "/v1/generations", body=body, key=key, deadline=deadline
            )
            if response is None:
                return
            if response.status_code == 201:
                generation_id = response.json()["id"]
                if self.accepted.setdefault(key, generation_id) != generation_id:
                    self.violations.append(f"{key}: answered with two different jobs")
            elif response.status_code < 500:
                self.refused[key] = response.status_code
                if response.status_code == 402:
                    self.ops[f"refused {response.json()['code']}"] += 1


class Listener(threading.Thread):
    """One creator's ``/v1/events`` stream on an API process: the
    ``generation.updated`` events it receives, as (generation id, status)."""

    def __init__(self, server: ServerProcess, creator: Creator) -> None:
        super().__init__(name=f"events-{creator.name}", daemon=True)
        self.url = f"{server.url}/v1/events"
        self.creator = creator
        self.events: list[tuple[str, str]] = []
        self.connected = threading.Event()
        self.http = httpx.Client(timeout=httpx.Timeout(10.0, read=None))

    def run(self) -> None:
        event = None
        try:
            with self.http.stream("GET", self.url, headers=self.creator.user.auth) as response:
                self.connected.set()
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:") and event == "generation.updated":
                        data = json.loads(line.removeprefix("data:"))
                        self.events.append((data["id"], data["status"]))
                    elif not line:
                        event = None
        except httpx.HTTPError:
            pass  # closed by the test at the end

    def close(self) -> None:
        self.http.close()
        self.join(timeout=10)


def read_snapshot(db: Database, check: Callable[[Connection], list[str]]) -> list[str]:
    """Run ``check`` on one consistent snapshot of a database that others
    are writing (REPEATABLE READ on PostgreSQL; a read transaction under WAL
    on SQLite is one snapshot already)."""
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return check(conn)


def final_problems(conn: Connection, creators: list[Creator]) -> list[str]:
    problems = check_ledger(conn)
    jobs = {row.id: row for row in conn.execute(select(generations))}
    delivered = dict(
        conn.execute(
            select(generation_outputs.c.generation_id, func.count()).group_by(
                generation_outputs.c.generation_id
            )
        ).all()
    )
    by_hold = {job.hold_id: job for job in jobs.values()}
    for hold in conn.execute(select(holds)):
        job = by_hold.get(hold.id)
        if job is None:
            problems.append(f"hold {hold.id}: no job")
            continue
        if job.status in TERMINAL:
            parts = (hold.status, int(hold.captured), int(hold.released))
            charged = int(job.credits_charged)
            expected_status = "captured" if charged else "released"
            if parts != (expected_status, charged, int(job.credits_held) - charged):
                problems.append(f"{job.id} {job.status} charged {charged}: hold {parts}")
        elif hold.status != "pending":
            problems.append(f"{job.id} {job.status}: hold already {hold.status}")
    for job in jobs.values():
        outputs = int(delivered.get(job.id, 0))
        sandbox = json.loads(job.sandbox)
        arriving = (
            0 if sandbox.get("fail_download") else int(sandbox.get("deliver", job.num_outputs))
        )
        if job.status not in TERMINAL:
            problems.append(f"{job.id}: still {job.status}")
        if int(job.credits_charged) != outputs * int(job.credits_per_output):
            problems.append(f"{job.id} {job.status}: charged {job.credits_charged}, {outputs} out")
        # Succeeded: with every output that could arrive, or (ended early,
        # the reason in its error) with some of them.
        complete = job.error_code is None and outputs == arriving
        if job.status == "succeeded" and not (complete or 0 < outputs < arriving):
            problems.append(
                f"{job.id}: succeeded ({job.error_code}) with {outputs}/{arriving} outputs"
            )
        if job.error_code == "timeout":
            problems.append(f"{job.id}: timed out ({job.error_message})")
    per_key = Counter((job.user_id, job.idempotency_key) for job in jobs.values())
    problems += [f"{key}: {n} jobs" for key, n in per_key.items() if n > 1]
    for creator in creators:
        for key, generation_id in creator.accepted.items():
            if generation_id not in jobs:
                problems.append(f"{key}: answered 201 as {generation_id}, no job")
        for key in creator.refused:
            if per_key[(creator.user.id, key)]:
                problems.append(f"{key}: refused, yet a job exists")
        paid = conn.execute(
            select(func.count()).where(
                payments.c.user_id == creator.user.id,
                payments.c.kind == "pack",
                payments.c.status == "succeeded",
                # The auto top-up's packs are checked by topup_problems.
                payments.c.idempotency_key.not_like("topup:%"),
            )
        ).scalar_one()
        if paid != len(creator.packs):
            problems.append(f"{creator.name}: {paid} pack payments for {len(creator.packs)} keys")
    problems += limit_problems(conn, creators, jobs.values())
    return problems + topup_problems(conn, creators)


def topup_problems(conn: Connection, creators: list[Creator]) -> list[str]:
    """Every run ended; one at a time per wallet; a succeeded run paid once
    (its pack's payment, linked), any other never; each month within the cap."""
    problems: list[str] = []
    paid = {
        row.idempotency_key: row
        for row in conn.execute(select(payments).where(payments.c.idempotency_key.like("topup:%")))
    }
    for creator in creators:
        runs = conn.execute(
            select(topup_runs)
            .where(topup_runs.c.wallet_id == creator.user.wallet_id)
            .order_by(topup_runs.c.created_at, topup_runs.c.id)
        ).all()
        if runs and creator.topup is None:
            problems.append(f"{creator.name}: {len(runs)} runs without auto top-up")
        spent: Counter[str] = Counter()
        for before, run in zip([None, *runs], runs, strict=False):
            payment = paid.pop(run.idempotency_key, None)
            if run.status == "pending":
                problems.append(f"{run.id}: still pending")
            if before is not None and (
                before.finished_at is None or run.created_at < before.finished_at
            ):
                problems.append(f"{run.id}: started while {before.id} was in flight")
            if run.status == "succeeded":
                if payment is None or run.payment_id != payment.id:
                    problems.append(f"{run.id}: succeeded, payment {run.payment_id} / {payment}")
                elif (payment.amount_cents, payment.credits) != (run.amount_cents, run.credits):
                    problems.append(f"{run.id}: paid {payment.amount_cents} for {payment.credits}")
                spent[f"{run.created_at:%Y-%m}"] += int(run.amount_cents)
            elif payment is not None or run.payment_id is not None:
                problems.append(f"{run.id}: {run.status}, yet paid")
        if creator.topup is not None:
            cap = creator.topup[1]
            problems += [
                f"{creator.name} {m}: {c} > cap {cap}" for m, c in spent.items() if c > cap
            ]
    problems += [f"payment {p.id} ({key}): no run" for key, p in paid.items()]
    return problems


def limit_problems(conn: Connection, creators: list[Creator], jobs: Any) -> list[str]:
    """No wallet spent more in a calendar month than its monthly limit: in
    the months since its first limit, at most the highest limit it was sent,
    and in the month now at most the limit it has now."""
    problems: list[str] = []
    for creator in creators:
        limit = conn.execute(
            select(wallets.c.monthly_spend_limit).where(wallets.c.id == creator.user.wallet_id)
        ).scalar_one()
        if creator.limited_from is None or limit is None:
            continue
        # The month the first limit was set in: the one before its reset.
        first = _month_of(datetime.fromisoformat(creator.limited_from) - timedelta(days=1))
        spent: Counter[datetime] = Counter()
        for job in jobs:
            if job.user_id == creator.user.id and job.status == "succeeded":
                spent[_month_of(as_utc(job.created_at))] += int(job.credits_charged)
        months = [month for month in spent if month >= first]
        highest = max(creator.limits_sent)
        problems += [
            f"{creator.name}: spent {spent[month]} in {month:%Y-%m}, limits up to {highest}"
            for month in months
            if spent[month] > highest
        ]
        # Limits only ever rise (each is at least the one in force): the
        # latest month is within the limit the wallet has now.
        if months and spent[max(months)] > int(limit):
            problems.append(f"{creator.name}: spent {spent[max(months)]}, limit {limit} now")
    return problems


def _month_of(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def event_problems(conn: Connection, listeners: list[Listener]) -> list[str]:
    """Each creator's stream carried only their own generations, and the final
    state of every one of them (from worker processes, through PostgreSQL
    LISTEN/NOTIFY to the API process holding the stream)."""
    problems: list[str] = []
    for listener in listeners:
        user_id = listener.creator.user.id
        own = {
            row.id: row.status
            for row in conn.execute(
                select(generations.c.id, generations.c.status).where(
                    generations.c.user_id == user_id
                )
            )
        }
        seen = set(listener.events)
        problems += [f"{listener.name}: got {gid}, not theirs" for gid, _ in seen if gid not in own]
        problems += [
            f"{listener.name}: no {status} event for {gid}"
            for gid, status in own.items()
            if (gid, status) not in seen
        ]
    return problems


def test_the_bank(database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    var_dir = tmp_path / "var"
    platform: Platform = bootstrap(
        Settings(database_url=database_url, var_dir=var_dir), migrate=False
    )
    env = child_env(database_url, var_dir)
    env.update(PLASMAART_JOB_LEASE_S="3", PLASMAART_IDEMPOTENCY_TAKEOVER_S="2")
    resources = ExitStack()
    # The multi-node setup: on PostgreSQL the API processes share their rate
    # limits through Redis and receive the workers' events through
    # LISTEN/NOTIFY. (On SQLite, events stay in the process that made them.)
    multi_node = platform.db.dialect == "postgresql"
    if multi_node:
        env["REDIS_URL"] = resources.enter_context(redis_server())
    servers = [ServerProcess(f"api{n}", env, tmp_path) for n in range(2)]
    workers: list[WorkerProcess] = []
    listeners: list[Listener] = []
    faults: Counter[str] = Counter()
    checkpoints = 0
    checkpoint_problems: list[str] = []
    try:
        admin = make_user(platform, "bank-admin@example.com", admin=True)
        creators = [
            Creator(
                make_user(platform, f"bank{n}@example.com", plan=plan, credits=2_000),
                f"c{n}",
                SEED + n,
                admin.auth,
                sets_limits=n % 2 == 0,
            )
            for n, plan in enumerate(("starter", "pro", "studio", "studio"))
        ]
        sandbox = platform.billing.backend
        assert isinstance(sandbox, SandboxBackend)
        for n, (pack, cap, confirm) in TOPUPS.items():
            creator = creators[n]
            creator.topup = (pack, cap)
            with platform.db.write() as conn:
                sandbox.set_card(conn, creator.user.id, declines=False, requires_action=confirm)
                available = platform.ledger.balance(conn, creator.user.wallet_id).available
                platform.auto_topups.configure(
                    conn,
                    wallet_id=creator.user.wallet_id,
                    user_id=creator.user.id,
                    enabled=True,
                    threshold=available - 5,  # the first jobs cross it
                    pack_id=pack,
                    monthly_cap_cents=cap,
                )
        for server in servers:
            server.start()
        workers = [WorkerProcess(f"worker{n}", env, tmp_path, CONCURRENCY) for n in range(2)]
        if multi_node:
            # On the API process that is never killed, so no event is missed.
            listeners = [Listener(servers[1], creator) for creator in creators]
            for listener in listeners:
                listener.start()
                assert listener.connected.wait(30), f"{listener.name} did not connect"
        stop = threading.Event()
        deadline = time.monotonic() + RUN_S + 30
        threads = [
            threading.Thread(target=c.run, args=(servers, stop, deadline), name=c.name)
            for c in creators
        ]
        for thread in threads:
            thread.start()
        checker_stop = threading.Event()

        def checkpoint() -> None:
            nonlocal checkpoints
            while not checker_stop.wait(CHECKPOINT_EVERY_S):
                checkpoint_problems.extend(read_snapshot(platform.db, check_ledger))
                checkpoints += 1

        checker = threading.Thread(target=checkpoint, name="checkpoints")
        checker.start()
        chaos = random.Random(SEED)
        chaos_ends = time.monotonic() + RUN_S
        next_kill = time.monotonic() + chaos.uniform(*WORKER_KILL_EVERY_S)
        api_killed = False
        restarting: threading.Thread | None = None
        while time.monotonic() < chaos_ends:
            time.sleep(0.05)
            now = time.monotonic()
            if now >= next_kill:
                victim = chaos.randrange(len(workers))
                workers[victim].close()
                faults["worker SIGKILL"] += 1
                workers[victim] = WorkerProcess(
                    f"worker{victim}-{faults['worker SIGKILL']}", env, tmp_path, CONCURRENCY
                )
                next_kill = now + chaos.uniform(*WORKER_KILL_EVERY_S)
            if not api_killed and now >= chaos_ends - RUN_S / 2:
                servers[0].kill()
                faults["API SIGKILL"] += 1
                api_killed = True
                # Started again beside the chaos (its start-up takes seconds);
                # meanwhile the clients use the other API process.
                restarting = threading.Thread(target=servers[0].start, name="api0-restart")
                restarting.start()
        if restarting is not None:
            restarting.join(timeout=90)
        stop.set()
        checker_stop.set()
        checker.join(timeout=60)
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 1))
            assert not thread.is_alive(), f"{thread.name} did not stop"

        def unfinished(conn: Connection) -> int:
            jobs = conn.execute(
                select(func.count()).where(generations.c.status.not_in(TERMINAL))
            ).scalar_one()
            charging = conn.execute(
                select(func.count()).where(topup_runs.c.status == "pending")
            ).scalar_one()
            return int(jobs) + int(charging)

        finish_by = time.monotonic() + FINISH_WITHIN_S
        while read_snapshot(platform.db, lambda conn: [str(unfinished(conn))]) != ["0"]:
            for worker in workers:
                assert worker.process.poll() is None, f"{worker.name} exited:\n{worker.log()}"
            if time.monotonic() > finish_by:
                break
            time.sleep(0.2)

        problems = checkpoint_problems + [v for c in creators for v in c.violations]
        problems += read_snapshot(platform.db, lambda conn: final_problems(conn, creators))
        if listeners:
            time.sleep(2)  # the last jobs' events are on their way
            for listener in listeners:
                listener.close()
            problems += read_snapshot(platform.db, lambda conn: event_problems(conn, listeners))
        ops = sum((c.ops for c in creators), Counter())
        with platform.db.read() as conn:
            statuses = Counter(row[0] for row in conn.execute(select(generations.c.status)))
            topups = Counter(row[0] for row in conn.execute(select(topup_runs.c.status)))
        with capsys.disabled():
            print(  # noqa: T201 - the bank report is meant to be read
                f"\nbank ({platform.db.dialect}): operations {dict(ops)}; "
                f"jobs {dict(statuses)}; auto top-ups {dict(topups)}; faults {dict(faults)}, "
                f"{sum(c.unanswered for c in creators)} requests without an answer; "
                f"{checkpoints} checkpoints; "
                f"{sum(len(listener.events) for listener in listeners)} events checked; "
                f"violations: {len(problems)}; "
                f"{time.monotonic() - started:.1f} s"
            )
        logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in [*servers, *workers])
        assert not problems, "\n".join(problems[:50]) + "\n" + logs
        assert ops["submit"] > 20
        assert faults["worker SIGKILL"] >= 3
        assert checkpoints >= 3
        assert statuses["succeeded"] > 0, statuses
        assert statuses["failed"] > 0, statuses
        assert topups["succeeded"] > 0, topups
        assert topups["action_required"] > 0, topups
        assert ops["spend limit"] > 0, ops
        assert ops["refused spend_limit_reached"] > 0, ops
    finally:
        for listener in listeners:
            listener.close()
        for process in [*workers, *servers]:
            process.close()
        platform.close()
        resources.close()

"""Queue fairness under a saturating mixed load, on PostgreSQL.

On a throwaway PostgreSQL server, ``--users`` users of each plan (Free,
Starter, Pro, Studio; credits to spare, watermark removal on where the plan
allows it) submit alike through ``GenerationService.submit``: every
``TICK_S`` one transaction queues the next jobs, the plans in turn, at
``--overload`` times what the workers can run, for ``--seconds``. Each
plan's bound on queued jobs is raised so that none is refused: the queue, not
admission, is measured. ``--workers`` worker processes, each a
``Worker(platform, --concurrency)`` as ``plasmaart worker`` runs it, drive a
provider that holds a job slot for ``--job-ms`` and then succeeds with one
1x1 PNG, and a storage that discards what it is given. When the last job is
queued the workers drain the queue; the run is bounded (it fails if the jobs
are not done ``DRAIN_GRACE_S`` after the workers could have run them all).

From the jobs' own timestamps, each plan's wait (``started_at`` -
``enqueued_at``): p50, p95 and worst. Aims (DESIGN.md §4, docs/generations.md,
"The queue and the workers"):

* Studio's p95 wait at most a quarter of Free's;
* Free's worst wait within its documented bound. A job is overtaken only by
  jobs ahead of it in queue order (virtual start ``enqueued_at - boost``: a
  higher plan's job enqueued less than the difference of the boosts after
  it), so it starts once the jobs ahead of it have started: its bound is the
  moment the last of them started, plus one job's run and one claim
  (``--job-ms`` + ``SLACK_S``), from its enqueue. Every Free job is checked
  against its own bound; the worst wait and the bound of that job are
  reported, with the number of jobs (all plans) over their bound.

``--runs`` runs; each figure is the median over the runs. Run from the
repository root: ``.venv/bin/python benchmarks/fairness.py``;
``--write-docs`` rewrites this benchmark's section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import queue
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import psycopg

from plasmaart.bootstrap import bootstrap
from plasmaart.catalog import load_catalog
from plasmaart.catalog.loader import DEFAULT_CATALOG_PATH
from plasmaart.config import load_settings
from plasmaart.generation.providers.base import ProviderRequest
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from plasmaart.worker import Worker

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    code_version,
    command_line,
    create_pg_database,
    drop_pg_database,
    load_average,
    machine_facts,
    machine_table,
    pg_dsn,
    positive,
    postgres_server,
    postgres_version,
    progress,
    prose,
)
from benchmarks.docs import PERFORMANCE_DOC as DOC_PATH  # noqa: E402
from benchmarks.docs import SummaryRow, write_section, write_summary  # noqa: E402
from benchmarks.generation_servers import DiscardStorage, NoopProvider  # noqa: E402

SECTION_HEADING = "## Queue fairness under load"
PLANS = ("free", "starter", "pro", "studio")
MODEL = "flux-schnell"
FUNDS = 10**9
PASSWORD = secrets.token_urlsafe(16)
# No plan's bound on queued jobs may refuse a job of the run.
QUEUED_JOBS_CAP = 10_000_000
TEMPLATE = "fairness_template"
# The submitter queues the next jobs this often, in one transaction.
TICK_S = 0.1
# One claim after a slot frees, beyond the job's own run: the bound's slack
# (generous: a busy machine delays a claim by hundreds of milliseconds).
SLACK_S = 1.0
SETUP_TIMEOUT = 120.0
DRAIN_GRACE_S = 60.0
POLL_S = 0.05
STUDIO_TO_FREE_AIM = 0.25
PACKAGES = ("sqlalchemy", "psycopg")


# -- the catalog, the provider, the users ------------------------------------------


def fairness_catalog(workdir: Path) -> Path:
    """The shipped catalog with every plan's bound on queued jobs raised."""
    text, raised = re.subn(
        r"^max_queued_jobs = \d+$",
        f"max_queued_jobs = {QUEUED_JOBS_CAP}",
        DEFAULT_CATALOG_PATH.read_text(),
        flags=re.MULTILINE,
    )
    if raised < len(PLANS):
        raise RuntimeError("the catalog has fewer max_queued_jobs lines than plans")
    path = workdir / "catalog.toml"
    path.write_text(text)
    catalog = load_catalog(path)
    if any(catalog.plan(plan).max_queued_jobs != QUEUED_JOBS_CAP for plan in PLANS):
        raise RuntimeError("the benchmark catalog did not take")
    return path


class TimedProvider(NoopProvider):
    """Holds the job's slot for ``seconds`` (in submit), then has succeeded
    with one 1x1 PNG, as the no-op provider: every job takes the same time,
    so the queue's order alone decides the waits."""

    name = "timed"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def submit(self, request: ProviderRequest) -> str:
        time.sleep(self.seconds)
        return f"timed-{request.generation_id}"


@dataclass(frozen=True)
class Context:
    workdir: Path
    catalog: Path

    def settings(self, url: str, **overrides: Any) -> dict[str, Any]:
        return {
            "database_url": url,
            "var_dir": self.workdir / "var",
            "catalog_file": self.catalog,
            "embedded_worker": False,
            "auto_migrate": False,
            **overrides,
        }

    def platform(self, url: str, *, migrate: bool = False) -> Platform:
        return bootstrap(load_settings(**self.settings(url)), migrate=migrate)


def make_users(platform: Platform, per_plan: int) -> None:
    """``per_plan`` users of each plan, with credits to spare."""
    with platform.db.write() as conn:
        for plan in PLANS:
            for index in range(per_plan):
                user = platform.accounts.create_user(conn, f"{plan}{index}@example.com", PASSWORD)
                wallet = platform.ledger.wallet_of(conn, "user", user.id)
                if plan != "free":
                    platform.billing.subscriptions.subscribe_paid(
                        conn, user_id=user.id, wallet_id=wallet, plan_id=plan, backend="sandbox"
                    )
                    platform.accounts.set_remove_watermark(conn, user, True)
                platform.ledger.grant(
                    conn, wallet, FUNDS, source="purchase", idempotency_key=f"bench:{user.id}"
                )


# -- the workers ---------------------------------------------------------------------


def _worker(
    index: int,
    settings: dict[str, Any],
    concurrency: int,
    job_s: float,
    channel: Queue[tuple[Any, ...]],
    stop: Event,
) -> None:
    try:
        made = bootstrap(load_settings(**settings), migrate=False)
        made.provider = TimedProvider(job_s)
        made.storage = DiscardStorage()
        worker = Worker(made, concurrency)
        thread = worker.start_thread()
        channel.put(("ready", index))
        stop.wait()
        worker.stop()
        thread.join(timeout=60)
        made.close()
        channel.put(("done", index))
    except BaseException:
        channel.put(("error", index, traceback.format_exc()))


def _collect(channel: Queue[tuple[Any, ...]], processes: Sequence[BaseProcess], kind: str) -> None:
    got = 0
    give_up = time.monotonic() + SETUP_TIMEOUT
    while got < len(processes):
        try:
            message = channel.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a worker died (exit code {dead[0].exitcode})") from None
            if time.monotonic() > give_up:
                raise RuntimeError(f"workers not {kind} after {SETUP_TIMEOUT:.0f} s") from None
            continue
        if message[0] == "error":
            raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
        got += message[0] == kind


def _end(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


# -- one run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    plan: str
    enqueued_at: datetime
    virtual_start: datetime
    id: str
    started_at: datetime

    @property
    def wait_s(self) -> float:
        return (self.started_at - self.enqueued_at).total_seconds()


@dataclass(frozen=True)
class PlanWaits:
    jobs: int
    p50_s: float
    p95_s: float
    worst_s: float


@dataclass(frozen=True)
class Run:
    submitted: int
    submit_seconds: float
    drain_seconds: float
    waits: dict[str, PlanWaits]
    free_worst_s: float
    free_worst_bound_s: float
    over_bound: int

    @property
    def studio_to_free(self) -> float:
        free = self.waits["free"].p95_s
        return self.waits["studio"].p95_s / free if free > 0 else math.inf


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def analyse(jobs: Sequence[Job], job_s: float) -> tuple[dict[str, PlanWaits], float, float, int]:
    """Waits by plan; Free's worst wait and its bound; jobs over their bound."""
    waits: dict[str, PlanWaits] = {}
    for plan in PLANS:
        own = [job.wait_s for job in jobs if job.plan == plan]
        if not own:
            raise RuntimeError(f"no {plan} job in the run")
        waits[plan] = PlanWaits(len(own), statistics.median(own), percentile(own, 0.95), max(own))
    # Queue order; the latest start among the jobs ahead of each job.
    ordered = sorted(jobs, key=lambda j: (j.virtual_start, j.enqueued_at, j.id))
    slack = timedelta(seconds=job_s + SLACK_S)
    latest_ahead: datetime | None = None
    free_worst, free_bound, over = -1.0, 0.0, 0
    for job in ordered:
        ready = job.enqueued_at if latest_ahead is None else max(job.enqueued_at, latest_ahead)
        bound_s = (ready + slack - job.enqueued_at).total_seconds()
        if job.wait_s > bound_s:
            over += 1
        if job.plan == "free" and job.wait_s > free_worst:
            free_worst, free_bound = job.wait_s, bound_s
        latest_ahead = job.started_at if latest_ahead is None else max(latest_ahead, job.started_at)
    return waits, free_worst, free_bound, over


def submit_load(
    platform: Platform, per_plan: int, rate: float, seconds: float
) -> tuple[int, float]:
    """Queue ``rate`` jobs a second for ``seconds``, the plans in turn; how
    many, and how long it took."""
    with platform.db.read() as conn:
        people = {
            plan: [
                platform.accounts.get_by_email(conn, f"{plan}{index}@example.com")
                for index in range(per_plan)
            ]
            for plan in PLANS
        }
    started = time.monotonic()
    submitted = 0
    ticks = max(1, round(seconds / TICK_S))
    for tick in range(ticks):
        due = started + tick * TICK_S
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        target = round(rate * (tick + 1) * TICK_S)
        with platform.db.write() as conn:
            while submitted < target:
                plan = PLANS[submitted % len(PLANS)]
                user = people[plan][(submitted // len(PLANS)) % per_plan]
                request = GenerationRequest(MODEL, f"fair {submitted}")
                platform.generations.submit(conn, user, request)
                submitted += 1
    return submitted, time.monotonic() - started


def one_run(
    ctx: ForkContext,
    context: Context,
    server: Any,
    args: argparse.Namespace,
    name: str,
) -> Run:
    url = create_pg_database(server, name, TEMPLATE)
    dsn = pg_dsn(server, name)
    job_s = args.job_ms / 1000
    capacity = args.workers * args.concurrency / job_s
    settings = context.settings(url, worker_concurrency=args.concurrency)
    channel: Queue[tuple[Any, ...]] = ctx.Queue()
    stop = ctx.Event()
    processes: list[BaseProcess] = []
    platform = context.platform(url)
    try:
        for index in range(args.workers):
            process = ctx.Process(
                target=_worker,
                args=(index, settings, args.concurrency, job_s, channel, stop),
                daemon=True,
            )
            process.start()
            processes.append(process)
        _collect(channel, processes, "ready")
        submitted, submit_seconds = submit_load(
            platform, args.users, capacity * args.overload, args.seconds
        )
        drain_started = time.monotonic()
        give_up = drain_started + DRAIN_GRACE_S + submitted / capacity
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    b"SELECT count(*) FROM generations WHERE status IN ('queued', 'running')"
                ).fetchone()
                if row is not None and int(row[0]) == 0:
                    break
                if any(p.exitcode is not None for p in processes):
                    raise RuntimeError("a worker process ended early")
                if time.monotonic() > give_up:
                    raise RuntimeError(f"{row and row[0]} jobs not done in time")
                time.sleep(POLL_S)
        drain_seconds = time.monotonic() - drain_started
        stop.set()
        _collect(channel, processes, "done")
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                b"SELECT s.plan_id, g.enqueued_at, g.virtual_start, g.id, g.started_at, g.status"
                b" FROM generations g LEFT JOIN subscriptions s ON s.wallet_id = g.wallet_id"
            ).fetchall()
    finally:
        stop.set()
        _end(processes)
        channel.close()
        platform.close()
        drop_pg_database(server, name)
    failed = [row for row in rows if row[5] != "succeeded"]
    if failed or len(rows) != submitted:
        raise RuntimeError(f"{len(failed)} of {len(rows)} jobs did not succeed")
    jobs = [Job(row[0] or "free", row[1], row[2], row[3], row[4]) for row in rows]
    waits, free_worst, free_bound, over = analyse(jobs, job_s)
    return Run(submitted, submit_seconds, drain_seconds, waits, free_worst, free_bound, over)


# -- the report ----------------------------------------------------------------------


@dataclass
class Result:
    runs: list[Run] = field(default_factory=list)

    def median(self, value: Any) -> float:
        return statistics.median(value(run) for run in self.runs)

    @property
    def ratio(self) -> float:
        return self.median(lambda r: r.studio_to_free)

    @property
    def ratio_met(self) -> bool:
        return self.ratio <= STUDIO_TO_FREE_AIM

    @property
    def bound_met(self) -> bool:
        return all(run.free_worst_s <= run.free_worst_bound_s for run in self.runs)


def waits_table(result: Result) -> str:
    lines = [
        "| plan | jobs a run | wait p50 | wait p95 | worst wait |",
        "|---|---:|---:|---:|---:|",
    ]
    for plan in PLANS:
        lines.append(
            f"| {plan.capitalize()} | {result.median(lambda r, p=plan: r.waits[p].jobs):,.0f} "
            f"| {result.median(lambda r, p=plan: r.waits[p].p50_s):.2f} s "
            f"| {result.median(lambda r, p=plan: r.waits[p].p95_s):.2f} s "
            f"| {result.median(lambda r, p=plan: r.waits[p].worst_s):.2f} s |"
        )
    return "\n".join(lines)


def aims_table(result: Result) -> str:
    worst = result.median(lambda r: r.free_worst_s)
    bound = result.median(lambda r: r.free_worst_bound_s)
    return "\n".join(
        [
            "| what | figure | aim | met? |",
            "|---|---:|---:|---|",
            f"| Studio's p95 wait ÷ Free's | {result.ratio:.1%} | ≤ 25% "
            f"| {'yes' if result.ratio_met else '**no**'} |",
            f"| Free's worst wait, its bound | {worst:.2f} s, {bound:.2f} s | within "
            f"| {'yes' if result.bound_met else '**no**'} |",
        ]
    )


def runs_detail(result: Result) -> str:
    lines = []
    for number, run in enumerate(result.runs, start=1):
        lines.append(
            f"- run {number}: {run.submitted:,} jobs queued in {run.submit_seconds:.1f} s, "
            f"drained {run.drain_seconds:.1f} s later; Studio ÷ Free p95 "
            f"{run.studio_to_free:.1%}; Free's worst {run.free_worst_s:.2f} s "
            f"(bound {run.free_worst_bound_s:.2f} s); jobs over their bound: {run.over_bound}"
        )
    return "\n".join(lines)


def render_section(
    result: Result, facts: list[tuple[str, str]], command: str, args: argparse.Namespace
) -> str:
    capacity = args.workers * args.concurrency * 1000 / args.job_ms
    method = prose(
        f"{args.runs} runs on a throwaway PostgreSQL server. {args.users} users of each",
        "plan (Free, Starter, Pro, Studio) submit alike, the plans in turn, through",
        f"`GenerationService.submit`, at {args.overload:g} times what the workers can run",
        f"({capacity:,.0f} jobs a second: {args.workers} worker processes x",
        f"{args.concurrency} slots, each job holding its slot {args.job_ms:g} ms) for",
        f"{args.seconds:g} s; then the workers drain the queue. Each plan's bound on",
        "queued jobs is raised so that none is refused. A job's wait is `started_at`",
        "- `enqueued_at`. Free's bound: a job starts once every job ahead of it in",
        "queue order (virtual start) has started, plus one job's run and one claim",
        f"({SLACK_S:g} s); each Free job is held to its own bound.",
    )
    return f"""{SECTION_HEADING}

Measured by `benchmarks/fairness.py`; regenerate with `{command}`.

{machine_table(facts)}

{method}

{aims_table(result)}

{waits_table(result)}

{runs_detail(result)}
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=positive(float), default=8.0, help="submitting, a run (default 8)"
    )
    parser.add_argument("--runs", type=positive(int), default=3, help="runs (default 3)")
    parser.add_argument(
        "--workers", type=positive(int), default=1, help="worker processes (default 1)"
    )
    parser.add_argument(
        "--concurrency", type=positive(int), default=4, help="slots per worker (default 4)"
    )
    parser.add_argument(
        "--job-ms", type=positive(float), default=400.0, help="a job's run (default 400 ms)"
    )
    parser.add_argument(
        "--overload",
        type=positive(float),
        default=2.0,
        help="submissions per second ÷ what the workers run (default 2)",
    )
    parser.add_argument(
        "--users", type=positive(int), default=8, help="users of each plan (default 8)"
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"rewrite the '{SECTION_HEADING[3:]}' section of docs/performance.md",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    code = code_version()
    load_start = load_average()
    ctx = multiprocessing.get_context("fork")
    workdir = Path(tempfile.mkdtemp(prefix="plasmaart-bench-fairness-"))
    context = Context(workdir, fairness_catalog(workdir))
    result = Result()
    try:
        with postgres_server(workdir) as server:
            pg_version = postgres_version(server)
            progress(f"fairness: {args.users} users of each plan")
            made = context.platform(create_pg_database(server, TEMPLATE), migrate=True)
            try:
                make_users(made, args.users)
            finally:
                made.close()
            for number in range(args.runs):
                run = one_run(ctx, context, server, args, f"fairness_run_{number}")
                result.runs.append(run)
                progress(
                    f"  run {number + 1}: Studio ÷ Free p95 {run.studio_to_free:.1%}, "
                    f"Free's worst {run.free_worst_s:.2f} s (bound {run.free_worst_bound_s:.2f} s)"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(aims_table(result))
    print()
    print(waits_table(result))
    print()
    print(runs_detail(result))
    if args.write_docs:
        facts = machine_facts(code, load_start, pg_version, packages=PACKAGES)
        write_section(SECTION_HEADING, render_section(result, facts, command_line(), args))
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        worst = result.median(lambda r: r.free_worst_s)
        bound = result.median(lambda r: r.free_worst_bound_s)
        write_summary(
            "fairness.py",
            [
                SummaryRow(
                    "queue fairness: Studio's p95 wait ÷ Free's, PostgreSQL",
                    f"{result.median(lambda r: r.waits['studio'].p95_s):.2f} s",
                    f"{result.median(lambda r: r.waits['free'].p95_s):.2f} s (Free)",
                    f"{result.ratio:.1%}",
                    "≤ 25%",
                    result.ratio_met,
                ),
                SummaryRow(
                    "queue fairness: Free's worst wait, PostgreSQL",
                    f"{worst:.2f} s",
                    "—",
                    f"bound {bound:.2f} s",
                    "within its bound",
                    result.bound_met,
                ),
            ],
            when,
        )
        progress(f"wrote {DOC_PATH.relative_to(REPO)}")
    progress(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

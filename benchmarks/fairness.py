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

``--runs`` runs; each figure is the median over the runs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from plasmaart.generation.providers.base import ProviderRequest
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform

# Run as a script from the repository root: the repository goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import cli, docs, postgres
from benchmarks.harness.fakes import NoopProvider
from benchmarks.harness.fixtures import Context, add_user, raised_catalog, users_by_email
from benchmarks.harness.load import MODEL
from benchmarks.harness.processes import crew
from benchmarks.harness.session import Facts, command_line, measuring, progress
from benchmarks.harness.stats import median, percentile
from benchmarks.harness.workers import worker_process

SECTION_HEADING = "## Queue fairness under load"
PLANS = ("free", "starter", "pro", "studio")
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


# -- the provider, the users ---------------------------------------------------------


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


def email(plan: str, index: int) -> str:
    return f"{plan}{index}@example.com"


def make_users(platform: Platform, per_plan: int) -> None:
    """``per_plan`` users of each plan, with credits to spare."""
    with platform.db.write() as conn:
        for plan in PLANS:
            for index in range(per_plan):
                add_user(platform, conn, email(plan, index), plan)


# -- the workers ---------------------------------------------------------------------


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
    people = {
        plan: users_by_email(platform, [email(plan, index) for index in range(per_plan)])
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
    context: Context,
    server: postgres.PgServer,
    args: argparse.Namespace,
    name: str,
) -> Run:
    url = postgres.create(server, name, TEMPLATE)
    dsn = postgres.dsn(server, name)
    job_s = args.job_ms / 1000
    capacity = args.workers * args.concurrency / job_s
    settings = context.settings(url, worker_concurrency=args.concurrency)
    platform = context.platform(url)
    try:
        children = [(worker_process, (settings, args.concurrency, TimedProvider(job_s)))]
        children *= args.workers
        with crew(children) as workers:
            workers.collect("ready", SETUP_TIMEOUT)
            workers.let_go()
            submitted, submit_seconds = submit_load(
                platform, args.users, capacity * args.overload, args.seconds
            )
            drain_started = time.monotonic()
            workers.wait_until_none(
                dsn,
                b"SELECT count(*) FROM generations WHERE status IN ('queued', 'running')",
                DRAIN_GRACE_S + submitted / capacity,
                POLL_S,
            )
            drain_seconds = time.monotonic() - drain_started
            workers.stop.set()
            workers.collect("done", SETUP_TIMEOUT)
        rows = postgres.rows(
            dsn,
            b"SELECT s.plan_id, g.enqueued_at, g.virtual_start, g.id, g.started_at, g.status"
            b" FROM generations g LEFT JOIN subscriptions s ON s.wallet_id = g.wallet_id",
        )
    finally:
        platform.close()
        postgres.drop(server, name)
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

    def median(self, value: Callable[[Run], float]) -> float:
        return median(self.runs, value)

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
    rows = []
    for plan in PLANS:
        waits = [run.waits[plan] for run in result.runs]
        seconds = [f"{median(waits, value):.2f} s" for value in (_p50, _p95, _worst)]
        rows.append([plan.capitalize(), f"{median(waits, lambda w: w.jobs):,.0f}", *seconds])
    head = ["plan", "jobs a run", "wait p50", "wait p95", "worst wait"]
    return docs.markdown_table(head, "<>>>>", rows)


def _p50(waits: PlanWaits) -> float:
    return waits.p50_s


def _p95(waits: PlanWaits) -> float:
    return waits.p95_s


def _worst(waits: PlanWaits) -> float:
    return waits.worst_s


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def aims_table(result: Result) -> str:
    worst = result.median(lambda r: r.free_worst_s)
    bound = result.median(lambda r: r.free_worst_bound_s)
    rows = [
        ["Studio's p95 wait ÷ Free's", f"{result.ratio:.1%}", "≤ 25%", _yes(result.ratio_met)],
        [
            "Free's worst wait, its bound",
            f"{worst:.2f} s, {bound:.2f} s",
            "within",
            _yes(result.bound_met),
        ],
    ]
    return docs.markdown_table(["what", "figure", "aim", "met?"], "<>><", rows)


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


def render_section(result: Result, facts: Facts, command: str, args: argparse.Namespace) -> str:
    capacity = args.workers * args.concurrency * 1000 / args.job_ms
    method = docs.prose(
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
    return docs.section(
        SECTION_HEADING,
        "fairness.py",
        command,
        method,
        aims_table(result),
        waits_table(result),
        runs_detail(result),
        docs.machine_block(facts),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    made = cli.parser(__doc__, SECTION_HEADING)
    cli.add_timing(made, 8.0, 3, "run")
    cli.add_workers(made, 1, 4, "slots per worker")
    cli.option(made, "--job-ms", float, 400.0, "a job's run in ms")
    cli.option(made, "--overload", float, 2.0, "submissions per second ÷ what the workers run")
    cli.option(made, "--users", int, 8, "users of each plan")
    return made.parse_args(argv)


def summary_rows(result: Result) -> list[docs.SummaryRow]:
    return [
        docs.SummaryRow(
            "queue fairness: Studio's p95 wait ÷ Free's, PostgreSQL",
            f"{result.median(lambda r: r.waits['studio'].p95_s):.2f} s",
            f"{result.median(lambda r: r.waits['free'].p95_s):.2f} s (Free)",
            f"{result.ratio:.1%}",
            "≤ 25%",
            result.ratio_met,
        ),
        docs.SummaryRow(
            "queue fairness: Free's worst wait, PostgreSQL",
            f"{result.median(lambda r: r.free_worst_s):.2f} s",
            "—",
            f"bound {result.median(lambda r: r.free_worst_bound_s):.2f} s",
            "within its bound",
            result.bound_met,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = Result()
    with measuring("fairness") as run:
        catalog = raised_catalog(run.workdir, PLANS, {"max_queued_jobs": QUEUED_JOBS_CAP})
        context = Context(run.workdir, catalog)
        with postgres.throwaway_server(run.workdir) as server:
            pg_version = postgres.version(server)
            progress(f"fairness: {args.users} users of each plan")
            made = context.platform(postgres.create(server, TEMPLATE), migrate=True)
            try:
                make_users(made, args.users)
            finally:
                made.close()
            for number in range(args.runs):
                measured = one_run(context, server, args, f"fairness_run_{number}")
                result.runs.append(measured)
                progress(
                    f"  run {number + 1}: Studio ÷ Free p95 {measured.studio_to_free:.1%}, "
                    f"Free's worst {measured.free_worst_s:.2f} s"
                    f" (bound {measured.free_worst_bound_s:.2f} s)"
                )
        print(aims_table(result))
        print()
        print(waits_table(result))
        print()
        print(runs_detail(result))
        if args.write_docs:
            # SQLAlchemy's and psycopg's versions are in every machine table.
            facts = run.facts(pg_version)
            section = render_section(result, facts, command_line(), args)
            docs.publish(SECTION_HEADING, section, "fairness.py", summary_rows(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generations: submissions through the HTTP API and jobs through the queue, beside baselines.

Two measurements, each PlasmaArt and its baseline alternately, several times:

* Submission. The real app (``create_app(bootstrap(settings),
  embedded_worker=False)``, as ``plasmaart serve --no-worker`` runs it) under
  uvicorn in its own process, on a copy of a prepared database (``--users``
  Studio users with plenty of credits and an API key each; Studio's bounds on
  queued jobs and requests per minute raised by a catalog file so that they
  never refuse). A load
  generator in another process (``wrk``; ``--load-generator httpx`` uses
  ``benchmarks/http_load.py`` instead) keeps the connections
  busy for ``--seconds`` with ``POST /v1/generations`` (flux-schnell, the
  sandbox provider at zero delay), the API keys taken in turn, ``--runs``
  times, at each of ``--connections`` (16 and 64). Baseline: a bare FastAPI
  app on the database driver itself (``benchmarks/generation_servers.py``):
  the API key looked up by its hash, then in one transaction (``BEGIN
  IMMEDIATE`` on SQLite) a guarded ``UPDATE wallets SET available = available
  - 1 ... WHERE available >= 1`` and the INSERT of the job into
  ``generations``, on a copy of the same migrated database, under the same
  uvicorn options, driven the same way. On SQLite, then on PostgreSQL.
  Requests per second and latency p50/p99 (wrk, 1 thread, ``--latency``);
  aim: PlasmaArt at least half the bare app's requests per second, and its
  p99 under 50 ms at 16 connections.
* Queue. On a throwaway PostgreSQL server (``tests/support/pgserver.py``),
  ``--jobs`` jobs queued through ``GenerationService.submit`` (spread over
  the users), then ``--workers`` worker processes, each a ``Worker(platform,
  --concurrency)`` (its job slots are threads) driving a no-op provider that
  answers at once with one 1x1 PNG, and a storage that discards what it is
  given (Studio users with watermark removal on: no watermarking). Jobs per
  second from the first claim to the last job finished, from the jobs' own
  timestamps. Baseline: PgQueuer (the ``bench`` extra) on the same server,
  the same number of worker processes, ``--jobs`` jobs enqueued, a no-op
  async entrypoint, dequeuing ``--concurrency`` jobs at a time; from the first
  pick to the last completion logged; ``--queue-runs`` times. Aim: at least
  PgQueuer's jobs per second.

Before measuring, one PlasmaArt server and one bare server are profiled with
cProfile on thread CPU time across all their threads, and during an extra
queue run one PlasmaArt worker process is; ``--profile`` prints the top
functions. Every server, worker and database is removed at the end, also on
errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasmaart.worker import CLAIM_IDLE_S

# Run as a script from the repository root: the repository goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import cli, comparison, docs, fixtures, postgres, profiles
from benchmarks.harness.baselines import pgqueuer_enqueue, pgqueuer_worker
from benchmarks.harness.fakes import NoopProvider
from benchmarks.harness.load import MODEL, LoadGenerator
from benchmarks.harness.processes import crew
from benchmarks.harness.pyspy import PySpyProfile, py_spy_binary, py_spy_text
from benchmarks.harness.session import Facts, command_line, measuring, progress
from benchmarks.harness.stats import Sides
from benchmarks.harness.workers import worker_process

SECTION_HEADING = "## Generations: submission and queue"

SUBMISSION_AIM = 0.5
# And at this many connections, PlasmaArt's p99 under this.
SUBMISSION_P99_AIM_MS = 50.0
P99_AIM_CONNECTIONS = 16
QUEUE_AIM = 1.0
# Their versions go in the machine table.
PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "pgqueuer")

SETUP_TIMEOUT = 120.0
# A queue run gives up when the jobs are not done after this plus 0.1 s a job.
QUEUE_GRACE = 60.0

# -- submission ------------------------------------------------------------------------


def measure_submission(
    context: fixtures.Context,
    database: fixtures.PreparedDatabase,
    load: LoadGenerator,
    args: argparse.Namespace,
) -> list[comparison.HttpComparison]:
    """At each of ``args.connections``: PlasmaArt against the bare app."""
    comparisons = [
        comparison.HttpComparison(
            database.backend,
            count,
            aim=SUBMISSION_AIM,
            p99_aim_ms=SUBMISSION_P99_AIM_MS if count == P99_AIM_CONNECTIONS else None,
        )
        for count in args.connections
    ]
    comparison.measure_comparisons(
        context,
        database,
        load,
        comparisons,
        args.runs,
        args.seconds,
        comparison.SUBMIT,
        "submission",
    )
    return comparisons


# -- queue: jobs through PlasmaArt's workers, beside PgQueuer's ---------------------------

PLASMAART_QUEUE_TEMPLATE = "queue_plasmaart_template"
PGQUEUER_TEMPLATE = "queue_pgqueuer_template"


def prepare_plasmaart_queue(
    context: fixtures.Context, server: postgres.PgServer, users: int, jobs: int
) -> None:
    """Users, and ``jobs`` jobs queued through the service, round-robin over them."""
    url = postgres.create(server, PLASMAART_QUEUE_TEMPLATE)
    made = context.platform(url, migrate=True)
    try:
        fixtures.make_studio_users(made, users)
        people = fixtures.users_by_email(
            made, [fixtures.studio_email(index) for index in range(users)]
        )
        fixtures.queue_jobs(made, people, jobs, MODEL)
    finally:
        made.close()


@dataclass(frozen=True)
class QueueRun:
    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds


def run_queue(
    children: Sequence[tuple[Callable[..., None], tuple[Any, ...]]],
    dsn: str,
    remaining_sql: bytes,
    jobs: int,
) -> None:
    """Start the worker processes, let them go together, wait for the queue to empty."""
    with crew(children) as workers:
        workers.collect("ready", SETUP_TIMEOUT)
        workers.let_go()
        workers.wait_until_none(dsn, remaining_sql, QUEUE_GRACE + jobs / 10)
        workers.stop.set()
        workers.collect("done", SETUP_TIMEOUT)


def run_plasmaart_queue(
    context: fixtures.Context,
    server: postgres.PgServer,
    args: argparse.Namespace,
    name: str,
    profile_out: Path | None = None,
) -> QueueRun:
    url = postgres.create(server, name, PLASMAART_QUEUE_TEMPLATE)
    try:
        settings = context.settings(url, worker_concurrency=args.concurrency)
        dsn = postgres.dsn(server, name)
        provider = NoopProvider()
        children = [
            (
                worker_process,
                (settings, args.concurrency, provider, profile_out if index == 0 else None),
            )
            for index in range(args.workers)
        ]
        run_queue(
            children,
            dsn,
            b"SELECT count(*) FROM generations WHERE status IN ('queued', 'running')",
            args.jobs,
        )
        (row,) = postgres.rows(
            dsn,
            b"SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*),"
            b" min(started_at), max(finished_at) FROM generations",
        )
    finally:
        postgres.drop(server, name)
    if row[0] != args.jobs or row[1] != args.jobs:
        raise RuntimeError(f"PlasmaArt: {row[0]} of {args.jobs} jobs succeeded")
    return QueueRun(args.jobs, (row[3] - row[2]).total_seconds())


def run_pgqueuer(server: postgres.PgServer, args: argparse.Namespace, name: str) -> QueueRun:
    postgres.create(server, name, PGQUEUER_TEMPLATE)
    dsn = postgres.dsn(server, name)
    try:
        children = [(pgqueuer_worker, (dsn, args.concurrency))] * args.workers
        run_queue(children, dsn, b"SELECT count(*) FROM pgqueuer", args.jobs)
        (row,) = postgres.rows(
            dsn,
            b"SELECT count(*) FILTER (WHERE status = 'successful'),"
            b" min(created) FILTER (WHERE status = 'picked'),"
            b" max(created) FILTER (WHERE status = 'successful') FROM pgqueuer_log",
        )
    finally:
        postgres.drop(server, name)
    if row[0] != args.jobs:
        raise RuntimeError(f"PgQueuer: {row[0]} of {args.jobs} jobs logged successful")
    return QueueRun(args.jobs, (row[2] - row[1]).total_seconds())


@dataclass
class QueueComparison:
    workers: int
    concurrency: int
    jobs: int
    # Jobs per second of each run: PlasmaArt's, and PgQueuer's as the baseline.
    rates: Sides = field(default_factory=Sides)

    @property
    def met(self) -> bool:
        return self.rates.ratio >= QUEUE_AIM


def measure_queue(
    context: fixtures.Context, server: postgres.PgServer, args: argparse.Namespace
) -> tuple[QueueComparison, profiles.Profile]:
    progress(f"queue: queuing {args.jobs} jobs for each side")
    prepare_plasmaart_queue(context, server, args.users, args.jobs)
    postgres.create(server, PGQUEUER_TEMPLATE)
    pgqueuer_enqueue(postgres.dsn(server, PGQUEUER_TEMPLATE), args.jobs)
    compared = QueueComparison(args.workers, args.concurrency, args.jobs)
    profile_out = context.workdir / "worker.prof"
    progress("queue: profiling PlasmaArt's worker 0 during an extra run")
    profiled = run_plasmaart_queue(context, server, args, "queue_profiled", profile_out)
    profile = profiles.load_profile(profile_out, "jobs")
    profile.units = profiles.calls(profile.raw, "generation/runner.py", "run")
    profile.wall_rate = profiled.per_second
    for run in range(args.queue_runs):
        plasmaart = run_plasmaart_queue(context, server, args, f"queue_run_{run}_plasmaart")
        pgqueuer = run_pgqueuer(server, args, f"queue_run_{run}_pgqueuer")
        compared.rates.plasmaart.append(plasmaart.per_second)
        compared.rates.baseline.append(pgqueuer.per_second)
        progress(
            f"  queue run {run + 1}: PlasmaArt {plasmaart.per_second:7.1f} jobs/s, "
            f"PgQueuer {pgqueuer.per_second:7.1f} jobs/s"
        )
    return compared, profile


# -- report ----------------------------------------------------------------------------


def queue_table(c: QueueComparison) -> str:
    head = ["database", "workers x slots", "jobs", "PlasmaArt jobs/s", "PgQueuer jobs/s", "ratio"]
    row = [
        "PostgreSQL",
        f"{c.workers} x {c.concurrency}",
        f"{c.jobs:,}",
        f"{c.rates.plasmaart_median:,.0f}",
        f"{c.rates.baseline_median:,.0f}",
        f"{c.rates.ratio:.1%}",
        f"≥ {QUEUE_AIM:.0%}",
        "yes" if c.met else "no",
    ]
    return docs.markdown_table([*head, "aim", "met?"], "<<>>>>><", [row])


def runs_detail(
    submissions: Sequence[comparison.HttpComparison], queue_comparison: QueueComparison | None
) -> str:
    lines = comparison.runs_lines(submissions)
    if queue_comparison is not None:
        for side, queue_runs in (
            ("PlasmaArt", queue_comparison.rates.plasmaart),
            ("PgQueuer", queue_comparison.rates.baseline),
        ):
            runs = ", ".join(f"{rate:.0f}" for rate in queue_runs)
            lines.append(f"queue, {side} jobs/s: {runs}")
    return "\n".join(lines)


def _top_self(profile: profiles.Profile, count: int = 5) -> str:
    return ", ".join(f"`{profiles.short_name(key)}`" for key, _ in profile.top(2, count))


def _statement_line(profile: profiles.Profile) -> str:
    return (
        f"{profile.per_unit(profile.statements):.1f} SQL statements in "
        f"{profile.per_unit(profile.transactions):.1f} transactions"
    )


def _stall_note(profile: profiles.Profile) -> str:
    if profile.wall_rate == 0:
        return (
            f"The PlasmaArt server stalled in all {profile.attempts} profiled runs, so"
            " there is no profile of a submission below;"
        )
    if profile.attempts > 1:
        return f"The PlasmaArt server stalled in {profile.attempts - 1} profiled run(s) first."
    return ""


def _loop_share(profile: profiles.Profile) -> float:
    return profile.main_thread / profile.total if profile.total else 0.0


def profile_text(servers: Mapping[str, profiles.Profile], worker: profiles.Profile | None) -> str:
    parts = []
    shown: dict[str, profiles.Profile] = {}
    if servers:
        plasma, bare = servers["plasmaart"], servers["bare"]
        # A stalled server's profile is of its stall, not of a submission.
        if plasma.wall_rate:
            shown["PlasmaArt server"] = plasma
        shown["bare server"] = bare
        if plasma.wall_rate:
            plasma_figures = [
                f"PlasmaArt served {plasma.units:,} submissions ({plasma.wall_rate:,.0f} req/s",
                f"under the profiler), each {plasma.per_unit_ms():.2f} ms of CPU and",
                f"{_statement_line(plasma)};",
            ]
            loop = [
                "The event loop's thread (HTTP, the edge, routing, validation,",
                f"serialisation) took {_loop_share(plasma):.0%} of PlasmaArt's CPU time",
                f"and {_loop_share(bare):.0%} of the bare server's; the threads running",
                "the sync endpoints the rest.",
            ]
        else:
            plasma_figures, loop = [], []
        parts.append(
            docs.prose(
                "One PlasmaArt server and one bare server on SQLite, each under the same",
                "load as in the measurements but at",
                f"{comparison.PROFILE_CONNECTIONS} connections (at 64, the slower profiled",
                "PlasmaArt server stalls on the SQLite write lock),",
                "profiled with cProfile in every thread (the",
                "event loop and the threads that run sync endpoints) on thread CPU time,",
                "so waiting costs nothing: a thread waiting for the SQLite write lock or",
                "for work is not counted.",
                _stall_note(plasma),
                *plasma_figures,
                f"the bare endpoint served {bare.units:,} requests ({bare.wall_rate:,.0f}",
                f"req/s), each {bare.per_unit_ms():.2f} ms of CPU and",
                f"{_statement_line(bare)} (on SQLite, `BEGIN` counts as a statement).",
                "The profiler slows Python code more than C code, so the Python shares",
                "are inflated, the ratios between the two servers less so. One server",
                "process runs its Python on one core at a time (the GIL), so CPU per",
                "request bounds its requests per second.",
                *loop,
            )
        )
    if worker is not None:
        shown["PlasmaArt worker"] = worker
        waits = profiles.calls_from(worker.raw, "wait", "plasmaart/worker.py", "run")
        claims = profiles.calls(worker.raw, "plasmaart/worker.py", "claim")
        parts.append(
            docs.prose(
                "Worker 0 of an extra queue run (not one of the measured runs), profiled",
                f"the same way: it ran {worker.units:,} jobs, each {worker.per_unit_ms():.2f}",
                f"ms of CPU and {_statement_line(worker)} (the claim, the runner's",
                "steps, the capture, the events), and used",
                f"{worker.total:.1f} s of CPU in {worker.seconds:.1f} s; the run went at",
                f"{worker.wall_rate:,.0f} jobs/s. Its claim loop called `Worker.claim`",
                f"{claims:,} times and waited {waits:,} times, each up to",
                f"{CLAIM_IDLE_S:g} s (`CLAIM_IDLE_S`) or until a job was queued or a slot",
                "freed, when every slot was busy or no job could be claimed.",
            )
        )
    parts.append("Where the CPU time went (self time; a builtin counts for its callers):")
    parts.append(profiles.shares_table(shown))
    tops = [f"{name}: {_top_self(profile)}." for name, profile in shown.items()]
    parts.append(docs.prose("The functions with the most self time.", *tops))
    for name, profile in shown.items():
        if name.startswith("PlasmaArt"):
            parts.append(f"PlasmaArt's own functions in the {name}:")
            parts.append(profiles.own_functions_table(profile))
    parts.append(f"`--profile` prints the top {profiles.PROFILE_TOP} functions of each profile.")
    return docs.paragraphs(*parts) + "\n"


HOW_TO_READ = docs.paragraphs(
    docs.RATIOS,
    docs.prose(
        "The sides do not do the same work. A PlasmaArt submission passes the",
        "edge (one ASGI callable: a request id, the body limit, the idempotency",
        "check, an access log line and metrics), authenticates the API key",
        "(cached), and then makes one read transaction (the model, the plan in",
        "force, the team and the wallet's queue, validated) and one short write",
        "function handed to `Database.run_write` (group commit on SQLite): the",
        "credits held with a guarded update in the ledger and the job inserted",
        "with one guarded `INSERT` under the wallet's queued-jobs cap; fair use",
        "counts it after the commit, off the transaction. It answers with the",
        "generation, serialised with orjson. The bare app (FastAPI on the driver",
        "itself: `sqlite3`, psycopg) validates the same body, looks the API key up",
        "by its hash, and in one transaction (`BEGIN IMMEDIATE` on SQLite) takes",
        "one credit from the wallet with a guarded `UPDATE ... WHERE available >=",
        "1` and inserts the job into `generations`: issue 14's baseline.",
        "A PlasmaArt job is claimed with others in one transaction under the",
        "scheduling rules (wallet caps, reserved slots), as many as the worker has",
        "free slots, then run and ended in one more transaction: the provider",
        "asked for its status, the output stamped with its license and stored, the",
        "credits captured and the job finished, each change announced (on",
        "PostgreSQL the events go out in batches); a lease keeper renews the leases",
        "of running jobs together. A PgQueuer job is a row picked and, once its",
        "coroutine returns, moved to the log.",
    ),
    docs.prose(
        "Latencies are measured by the load generator from send to answer, with",
        "every connection always busy (a closed loop), so they are mostly",
        "queueing: at saturation p50 is close to connections ÷ requests per second.",
        "On SQLite, writers wait for the one write lock in SQLite's busy handler,",
        "which sleeps and retries rather than queueing them in order, so p99 is",
        "many times p50 on both sides.",
        "Submissions queue up (no worker runs), so the queue grows during a run",
        "and each run starts from a fresh copy of the prepared database.",
    ),
    docs.DURABILITY,
    docs.prose(
        "The load generator, the servers, the workers and PostgreSQL share the machine's CPUs."
    ),
)


def render_section(results: Results, facts: Facts, command: str, args: argparse.Namespace) -> str:
    submissions, servers, spies = results.submissions, results.servers, results.spies
    queue_comparison, worker = results.queue, results.worker
    if queue_comparison is None or worker is None:
        raise ValueError("the section needs the queue measured")
    submission_method = docs.prose(
        f"**Submission.** {args.runs} runs of {args.seconds:g} s on each side at each",
        f"connection count, after a {comparison.WARMUP_SECONDS} s warm-up, each run's server on a",
        "fresh copy of a database prepared with",
        f"{args.users} Studio users (credits enough for any run; Studio's bounds on",
        "queued jobs and requests per minute raised by a catalog file, checked but",
        "never binding); PlasmaArt and the bare app",
        "alternately, each in its own uvicorn process (asyncio loop, h11), the load",
        "generator (wrk, 1 thread, or the load generator named below) in another,",
        f"{' and '.join(str(n) for n in args.connections)} connections in turn on each",
        "server, the API keys in turn; p50 and p99 from wrk's latency distribution",
        "(`--latency`).",
        "PlasmaArt runs with its default settings: INFO logs, so a JSON access",
        "line per request.",
    )
    queue_method = docs.prose(
        f"**Queue.** {args.queue_runs} runs on each side of {args.jobs:,} jobs queued",
        f"before the workers start, spread over {args.users} Studio users (the",
        "plan's cap of 8 running jobs per wallet never binds), and",
        f"{args.workers} worker processes of {args.concurrency} slots, let go",
        "together. PlasmaArt: `Worker(platform, concurrency)`, a no-op provider",
        "that answers at once with one 1x1 PNG, a storage that discards it, no",
        "watermark; jobs per second from the first claim to the last finish",
        "(the jobs' `started_at` and `finished_at`). PgQueuer: a no-op async",
        f"entrypoint, `QueueManager.run(batch_size={args.concurrency})` over",
        "psycopg; from the first pick to the last completion in `pgqueuer_log`.",
    )
    return docs.section(
        SECTION_HEADING,
        "generations.py",
        command,
        submission_method,
        comparison.comparison_table(submissions),
        queue_method,
        queue_table(queue_comparison),
        docs.runs_block(runs_detail(submissions, queue_comparison)),
        docs.machine_block(facts),
        docs.subsection("Profiles", profile_text(servers, worker)),
        docs.subsection("py-spy: the live servers", py_spy_text(spies)) if spies else "",
        docs.subsection(
            "What stands in the way",
            obstacles(submissions, queue_comparison, servers, worker, args),
        ),
        docs.subsection("How to read the figures", HOW_TO_READ),
    )


def _heaviest(profile: profiles.Profile, count: int = 4) -> str:
    """The heaviest functions below the top-level ones (the service call, the
    claim, the runner), where a change would show."""
    rows = [row for row in profiles.own_functions(profile, 16) if row[1] < 0.35][:count]
    return ", ".join(
        f"`{_file_of(key)}:{key[2]}` {share:.0%} ({per_unit:.1f} calls)"
        for key, share, per_unit in rows
    )


def _file_of(key: profiles.FuncKey) -> str:
    return profiles.short_name(key).split(":")[0].removeprefix("plasmaart/")


def obstacles(
    submissions: Sequence[comparison.HttpComparison],
    queue_comparison: QueueComparison,
    servers: Mapping[str, profiles.Profile],
    worker: profiles.Profile,
    args: argparse.Namespace,
) -> str:
    parts = []
    for c in submissions:
        stalled = [load for load in c.plasmaart if load.requests == 0]
        if stalled:
            places: Counter[str] = Counter()
            for load in stalled:
                places.update(load.stuck_in)
            where = ", ".join(
                f"`{place}` {round(count / len(stalled), 1):g}"
                for place, count in places.most_common(8)
            )
            parts.append(
                docs.prose(
                    f"**Stalls.** On {c.backend}, {len(stalled)} of PlasmaArt's",
                    f"{len(c.plasmaart)} runs answered no request at all: the server",
                    "stalled, its requests waiting on each other, not on the CPU. At",
                    "the end of such a run its threads were, by their innermost",
                    f"PlasmaArt frame (threads per run): {where or 'unknown'}.",
                )
            )
    missed = [c for c in submissions if not c.met]
    if missed and servers and servers["plasmaart"].wall_rate == 0:
        parts.append(
            docs.prose(
                "**Submission** is below its aim on",
                " and ".join(f"{c.backend} at {c.connections} connections" for c in missed) + ";",
                f"the profiled PlasmaArt server stalled {comparison.PROFILE_ATTEMPTS} times in a",
                "row, so there is no profile of a submission's cost to show.",
            )
        )
    elif missed and servers:
        plasma, bare = servers["plasmaart"], servers["bare"]
        largest = sorted(profiles.BUCKETS, key=plasma.share, reverse=True)[:3]
        shares = ", ".join(f"{name} {plasma.share(name):.0%}" for name in largest)
        parts.append(
            docs.prose(
                "**Submission** is below its aim on",
                " and ".join(f"{c.backend} at {c.connections} connections" for c in missed) + ".",
                f"A submission costs {plasma.per_unit_ms():.1f} ms of CPU in the server",
                f"against {bare.per_unit_ms():.1f} ms for the bare app's submission",
                f"({plasma.per_unit_ms() / max(bare.per_unit_ms(), 1e-9):.1f} times as much,",
                "under the profiler), and",
                f"{plasma.per_unit(plasma.statements):.0f} statements in",
                f"{plasma.per_unit(plasma.transactions):.1f} transactions against",
                f"{bare.per_unit(bare.statements):.0f} in",
                f"{bare.per_unit(bare.transactions):.0f}; on PostgreSQL each",
                "statement is also a round trip. The largest shares of its CPU time:",
                f"{shares}. PlasmaArt's heaviest functions (cumulative share, calls",
                f"per request): {_heaviest(plasma)}.",
                "The write step is already one short function under group commit on",
                "SQLite and fair use counts off the transaction: what would move the",
                "figure further is the CPU each request still spends above the",
                "database, in FastAPI's routing and dependencies, pydantic's",
                "validation and SQLAlchemy's read step (building, compiling and",
                "running the read transaction's statements), as the profile shows.",
            )
        )
    elif not missed:
        parts.append(docs.prose("Submission meets its aim on every database measured."))
    if not queue_comparison.met:
        waits = profiles.calls_from(worker.raw, "wait", "plasmaart/worker.py", "run")
        largest = sorted(profiles.BUCKETS, key=worker.share, reverse=True)[:3]
        shares = ", ".join(f"{name} {worker.share(name):.0%}" for name in largest)
        parts.append(
            docs.prose(
                "**The queue** is below its aim:",
                f"{queue_comparison.rates.plasmaart_median:,.0f} jobs/s against PgQueuer's",
                f"{queue_comparison.rates.baseline_median:,.0f}. A job costs",
                f"{worker.per_unit_ms():.1f} ms of CPU in the worker (under the profiler)",
                f"and {worker.per_unit(worker.statements):.0f} statements in",
                f"{worker.per_unit(worker.transactions):.0f} transactions, where",
                "PgQueuer spends one statement per batch of picks and one per batch of",
                f"completions. The largest shares of its CPU time: {shares}.",
                "PlasmaArt's heaviest functions (cumulative share, calls per job):",
                f"{_heaviest(worker)}.",
            )
        )
        parts.append(
            docs.prose(
                "The figure is bound by CPU per job, not by waiting: with",
                f"{args.workers} workers of {args.concurrency} slots on",
                f"{os.cpu_count()} CPUs, at {worker.per_unit_ms():.0f} ms of worker CPU",
                "a job (less without the profiler) and PostgreSQL's own work per",
                "statement, the CPUs run out near the measured rate (the claim loop",
                "wakes when a job is queued or a slot frees, so it does not wait idle",
                f"while jobs are there; it waited {waits:,} times in the profiled worker).",
                "A worker already claims as many jobs as it has free slots in one",
                "transaction, reading the plans of all their wallets at once, and a job",
                "ends in one transaction (its status, outputs and capture). What would",
                "move it further: finishing many jobs in one transaction, with their",
                "captures made in one batch in the ledger, as PgQueuer completes its",
                "jobs in batches; and the queue's statements sent through psycopg",
                "directly as prepared statements rather than through SQLAlchemy, whose",
                "share of the CPU time is in the profile above. Both are",
                "`plasmaart/worker.py`, `plasmaart/generation/runner.py` and the ledger,",
                "not this benchmark's to change.",
            )
        )
    else:
        parts.append(docs.prose("The queue meets its aim."))
    return docs.paragraphs(*parts) + "\n"


def summary_rows(
    submissions: Sequence[comparison.HttpComparison], c: QueueComparison
) -> list[docs.SummaryRow]:
    bare = "bare: key lookup, guarded update, insert"
    rows = [comparison.summary_row(s, "`POST /v1/generations`", bare) for s in submissions]
    rows.append(
        docs.SummaryRow(
            f"queue, PostgreSQL, {c.workers} workers x {c.concurrency}, no-op provider",
            f"{c.rates.plasmaart_median:,.0f} jobs/s",
            f"{c.rates.baseline_median:,.0f} jobs/s (PgQueuer)",
            f"{c.rates.ratio:.1%}",
            f"≥ {QUEUE_AIM:.0%}",
            c.met,
        )
    )
    return rows


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    made = cli.parser(__doc__, SECTION_HEADING)
    cli.add_timing(made, 5.0, 5, "submission run")
    cli.option(made, "--queue-runs", int, 3, "queue runs per side")
    cli.option(made, "--jobs", int, 1000, "jobs per queue run")
    cli.add_workers(made, 4, 4, "job slots per PlasmaArt worker, jobs per PgQueuer dequeue")
    cli.option(made, "--users", int, 16, "users the work is spread over")
    cli.counts_option(made, "--connections", [16, 64], "HTTP connection counts, each measured")
    cli.add_load_generator(made)
    cli.add_measurement_choice(
        made, ("submission", "queue"), "; --sqlite-only: submission on SQLite"
    )
    made.add_argument(
        "--profile", action="store_true", help=f"print the top {profiles.PROFILE_TOP} functions"
    )
    made.add_argument(
        "--py-spy",
        action="store_true",
        help="sample both live servers with py-spy during an extra SQLite submission run "
        "(the bench extra) and summarise the top functions",
    )
    args = made.parse_args(argv)
    cli.check_complete(made, args)
    if args.load_generator == "wrk" and args.only != "queue" and not shutil.which("wrk"):
        made.error(
            "wrk is not installed (apt-get install wrk); --load-generator httpx works "
            "without it, but one Python process cannot keep up with the bare endpoint"
        )
    if args.py_spy and (args.only == "queue" or py_spy_binary() is None):
        made.error(
            "--py-spy samples the submission servers: it needs the submission measured "
            "and py-spy installed (.venv/bin/pip install -e '.[bench]')"
        )
    if args.only != "submission" and importlib.util.find_spec("pgqueuer") is None:
        made.error("PgQueuer is not installed: .venv/bin/pip install -e '.[bench]'")
    return args


@dataclass
class Results:
    submissions: list[comparison.HttpComparison] = field(default_factory=list)
    queue: QueueComparison | None = None
    servers: dict[str, profiles.Profile] = field(default_factory=dict)
    worker: profiles.Profile | None = None
    spies: dict[str, PySpyProfile] = field(default_factory=dict)
    load_description: str = "none"
    pg_version: str = "not used"


def measure(workdir: Path, args: argparse.Namespace, results: Results) -> None:
    """Every measurement ``args`` asks for, into ``results``."""
    context = fixtures.studio_context(workdir)
    if args.only != "queue":
        progress("submission on SQLite: profiling both servers")
        database, keys = fixtures.prepare_studio_database(context, "SQLite", None, args.users)
        load = LoadGenerator(args.load_generator, workdir, keys, args.connections[0])
        results.load_description = load.description
        results.servers = comparison.profile_servers(
            context, database, load.at(comparison.PROFILE_CONNECTIONS), args.seconds
        )
        progress("submission on SQLite")
        results.submissions.extend(measure_submission(context, database, load, args))
        if args.py_spy:
            progress("submission on SQLite: py-spy on both live servers")
            results.spies = comparison.py_spy_servers(context, database, load, args.seconds)
    postgres_submission = args.only != "queue" and not args.sqlite_only
    if postgres_submission or args.only != "submission":
        with postgres.throwaway_server(workdir) as server:
            results.pg_version = postgres.version(server)
            if postgres_submission:
                progress("submission on PostgreSQL")
                database, keys = fixtures.prepare_studio_database(
                    context, "PostgreSQL", server, args.users
                )
                load = LoadGenerator(args.load_generator, workdir, keys, args.connections[0])
                results.submissions.extend(measure_submission(context, database, load, args))
            if args.only != "submission":
                results.queue, results.worker = measure_queue(context, server, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results()
    with measuring("generations") as run:
        measure(run.workdir, args, results)
        if args.profile:
            for name, profile in results.servers.items():
                print(profile.table(f"{name} server"))
                print()
            if results.worker is not None:
                print(results.worker.table("PlasmaArt worker 0"))
                print()
        for spy in results.spies.values():
            print(spy.table())
            print()
        if results.submissions:
            print(comparison.comparison_table(results.submissions))
            print()
        if results.queue is not None:
            print(queue_table(results.queue))
            print()
        print(runs_detail(results.submissions, results.queue))
        if args.write_docs and results.queue is not None and results.worker is not None:
            facts = run.facts(
                results.pg_version,
                packages=PACKAGES,
                extra=[("load generator", results.load_description)],
            )
            section = render_section(results, facts, command_line(), args)
            docs.publish(
                SECTION_HEADING,
                section,
                "generations.py",
                summary_rows(results.submissions, results.queue),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

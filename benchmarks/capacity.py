"""Capacity: what one API process and one worker process carry, beside baselines.

The real commands, as docs/deployment.md starts them, on SQLite and on a
throwaway PostgreSQL server (``tests/support/pgserver.py``):

* Submissions. ``plasmaart serve --no-worker`` (one API process), then
  ``plasmaart serve --no-worker --workers 2`` (two API processes sharing the
  port, under their supervisor), each on a fresh copy of a prepared database
  (``--users`` Studio users with plenty of credits and an API key each, the
  plan's bounds raised so that they never refuse), warmed up for a second,
  then ``wrk`` (1 thread, ``--latency``; ``--load-generator httpx`` uses
  ``benchmarks/http_load.py``) keeps ``--connections`` connections busy for
  ``--seconds`` with ``POST /v1/generations`` (flux-schnell, the sandbox
  provider at zero delay), the API keys in turn. Baseline: the bare app of
  ``benchmarks/generation_servers.py`` (FastAPI on the driver itself: the key
  lookup, the guarded debit and the job's insert in one transaction), one
  uvicorn process on a copy of the same database, loaded the same way.
  Requests per second, p50 and p99.
* Jobs. ``--jobs`` jobs queued (submitted through ``GenerationService``,
  spread over the users) before one worker process starts: the ``Worker``
  that ``plasmaart worker`` runs (``generation_servers.py worker``), at its
  default concurrency and at ``--concurrency``, with a provider that answers
  at once with a 1x1 PNG and the media folder's storage (the sandbox
  provider renders a real image in the worker, a provider's work: its time
  is measured and reported beside). Jobs per second from the first claim to
  the last job succeeded (the jobs' ``started_at`` and ``finished_at``):
  the claim, the provider's calls, the output stored, the capture.
  Baselines: on PostgreSQL, PgQueuer (the ``bench`` extra) in one worker
  process with a no-op entrypoint dequeuing as many jobs at a time as the
  worker's slots; on SQLite, the standard library's ``sqlite3`` in one
  process with the same SQLite settings, per job one ``BEGIN IMMEDIATE``
  transaction claiming the oldest queued job (a ``SELECT`` and an
  ``UPDATE``) and one ending it (an ``UPDATE`` and the ``INSERT`` of its
  output).

Each figure is the median of ``--runs`` runs, the sides alternating within a
run. ``--write-docs`` rewrites this benchmark's section of
docs/performance.md and the table of the "Capacity" section of
docs/deployment.md. Every process, database and folder is removed at the
end, also on errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sqlite3
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy

# Run as a script from the repository root: the repository goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.pgserver import free_port

from benchmarks.api_costs import plasmaart_command, sandbox_render_ms
from benchmarks.generations import PGQUEUER_TEMPLATE, run_pgqueuer
from benchmarks.harness import REPO, cli, comparison, docs, fixtures, postgres
from benchmarks.harness.baselines import pgqueuer_enqueue
from benchmarks.harness.load import MODEL, Load, LoadGenerator
from benchmarks.harness.servers import (
    logged_process,
    serve,
    server_command,
    tail,
    wait_until_ready,
)
from benchmarks.harness.session import Facts, command_line, measuring, progress
from benchmarks.harness.stats import Sides
from plasmaart.config import Settings
from plasmaart.db.tables import generations

SECTION_HEADING = "## Capacity: one API process, one worker process"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
DEPLOYMENT_HEADING = "## Capacity"
PACKAGES = ("fastapi", "uvicorn", "pgqueuer")
DEFAULT_CONCURRENCY = Settings.model_fields["worker_concurrency"].default
# The API processes of each submission row: `serve --workers N`.
API_PROCESSES = (1, 2)
WARMUP_SECONDS = 1.0
# A worker run gives up when its jobs are not done after this plus 0.1 s a job.
QUEUE_GRACE = 20.0


def _count(url: str, *statuses: str) -> int:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.select(sqlalchemy.func.count()).select_from(generations)
            if statuses:
                query = query.where(generations.c.status.in_(statuses))
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


# -- submissions --------------------------------------------------------------------


@dataclass
class SubmissionRow(comparison.LoadMedians):
    """One API setup's runs on one database, beside the bare app's."""

    backend: str
    processes: int
    connections: int
    plasmaart: list[Load] = field(default_factory=list)
    bare: list[Load] = field(default_factory=list)


@contextmanager
def real_serve(context: fixtures.Context, url: str, processes: int) -> Iterator[str]:
    """``plasmaart serve --no-worker --workers N`` on a free port; its base URL."""
    port = free_port()
    log_path = context.workdir / f"serve-{processes}-{port}.log"
    command = [plasmaart_command(), "serve", "--no-worker", "--workers", str(processes)]
    env = context.command_env(url, port)
    with logged_process(
        f"plasmaart serve --workers {processes}", command, log_path, cwd=context.workdir, env=env
    ) as process:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process, log_path)
        yield base


def _load_once(load: LoadGenerator, url: str, seconds: float) -> Load:
    load.run(url, WARMUP_SECONDS)
    return load.run(url, seconds)


def measure_submissions(
    context: fixtures.Context,
    database: fixtures.PreparedDatabase,
    load: LoadGenerator,
    args: argparse.Namespace,
) -> list[SubmissionRow]:
    """``args.runs`` rounds of: each API setup, then the bare app, on fresh copies."""
    rows = [
        SubmissionRow(database.backend, processes, args.connections) for processes in API_PROCESSES
    ]
    bare: list[Load] = []
    for run in range(args.runs):
        for row in rows:
            with database.copy(f"capacity_{run}_serve_{row.processes}") as url:
                with real_serve(context, url, row.processes) as base:
                    measured = _load_once(load, base + "/v1/generations", args.seconds)
                _check_stored(url, measured)
            row.plasmaart.append(measured)
        with database.copy(f"capacity_{run}_bare") as url:
            with serve(context, "bare", url) as server:
                measured = _load_once(load, server.base + "/generations", args.seconds)
            _check_stored(url, measured)
        bare.append(measured)
        figures = ", ".join(
            f"{row.processes} process(es) {row.plasmaart[-1].per_second:.0f} req/s" for row in rows
        )
        progress(
            f"  {database.backend} submissions run {run + 1}: {figures}, "
            f"bare {measured.per_second:.0f} req/s"
        )
    for row in rows:
        row.bare = bare
    return rows


def _check_stored(url: str, measured: Load) -> None:
    """Every answered request has its job committed (the warm-up's too)."""
    stored = _count(url)
    if stored < measured.requests:
        raise RuntimeError(f"{measured.requests} submissions answered, {stored} jobs stored")


# -- jobs through one worker process --------------------------------------------------


def prepare_queue(
    context: fixtures.Context, database: fixtures.PreparedDatabase, users: int, jobs: int
) -> fixtures.PreparedDatabase:
    """A copy of ``database`` with ``jobs`` jobs queued, round-robin over the users."""
    if database.server is None:
        path = Path(database.template).with_name("queue-template.db")
        shutil.copyfile(database.template, path)
        url, template = f"sqlite:///{path}", str(path)
    else:
        template = "capacity_queue_template"
        url = postgres.create(database.server, template, database.template)
    made = context.platform(url)
    try:
        people = fixtures.users_by_email(
            made, [fixtures.studio_email(index) for index in range(users)]
        )
        fixtures.queue_jobs(made, people, jobs, MODEL)
    finally:
        made.close()
    if database.server is None:
        with sqlite3.connect(template) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    return fixtures.PreparedDatabase(database.backend, template, database.server)


@dataclass
class WorkerRow:
    """One worker setup's runs on one database, beside its baseline's; jobs/s."""

    backend: str
    concurrency: int
    jobs: int
    rates: Sides = field(default_factory=Sides)

    @property
    def baseline_name(self) -> str:
        return "raw sqlite3" if self.backend == "SQLite" else "PgQueuer"


def run_worker(
    context: fixtures.Context, queue: fixtures.PreparedDatabase, concurrency: int, name: str
) -> float:
    """One worker process as ``plasmaart worker`` runs it, with the no-op
    provider and the media folder's storage, through the queued jobs; jobs per
    second."""
    with queue.copy(name) as url:
        jobs = _count(url, "queued")
        options = ("--noop-provider", "--store-outputs", "--concurrency", str(concurrency))
        command = server_command(context, "worker", url, 0, *options)
        log_path = context.workdir / f"worker-{name}.log"
        give_up = time.monotonic() + QUEUE_GRACE + jobs / 10
        with logged_process("the worker", command, log_path) as process:
            while _count(url, "queued", "running"):
                if process.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError(f"plasmaart worker: jobs left:\n{tail(log_path)}")
                time.sleep(0.1)
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                succeeded, first, last = conn.execute(
                    sqlalchemy.select(
                        sqlalchemy.func.count(),
                        sqlalchemy.func.min(generations.c.started_at),
                        sqlalchemy.func.max(generations.c.finished_at),
                    ).where(generations.c.status == "succeeded")
                ).one()
        finally:
            engine.dispose()
    if succeeded != jobs:
        raise RuntimeError(f"plasmaart worker: {succeeded} of {jobs} jobs succeeded")
    return float(jobs / (last - first).total_seconds())


RAW_QUEUE_SCHEMA = (
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, enqueued_at REAL NOT NULL,"
    " started_at REAL, finished_at REAL)",
    "CREATE INDEX ix_jobs_queued ON jobs (status, enqueued_at)",
    "CREATE TABLE outputs (id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id),"
    " storage_key TEXT NOT NULL, content_type TEXT NOT NULL, size INTEGER NOT NULL)",
)


def run_raw_sqlite_queue(path: Path, jobs: int) -> float:
    """The SQLite baseline: ``jobs`` jobs, each claimed in one ``BEGIN
    IMMEDIATE`` transaction and ended in another; jobs per second."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        for statement in RAW_QUEUE_SCHEMA:
            conn.execute(statement)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, status, enqueued_at) VALUES (?, 'queued', ?)",
            [(uuid.uuid4().hex, float(number)) for number in range(jobs)],
        )
        conn.execute("COMMIT")
        began = time.perf_counter()
        for _ in range(jobs):
            conn.execute("BEGIN IMMEDIATE")
            (job,) = conn.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY enqueued_at LIMIT 1"
            ).fetchone()
            conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?",
                (time.time(), job),
            )
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ? WHERE id = ?",
                (time.time(), job),
            )
            conn.execute(
                "INSERT INTO outputs VALUES (?, ?, ?, 'image/png', 1)",
                (uuid.uuid4().hex, job, f"outputs/{job}.png"),
            )
            conn.execute("COMMIT")
        took = time.perf_counter() - began
        (left,) = conn.execute("SELECT count(*) FROM jobs WHERE status <> 'succeeded'").fetchone()
    finally:
        conn.close()
    if left:
        raise RuntimeError(f"raw sqlite3: {left} jobs not done")
    return jobs / took


def measure_workers(
    context: fixtures.Context, database: fixtures.PreparedDatabase, args: argparse.Namespace
) -> list[WorkerRow]:
    progress(f"{database.backend} jobs: queuing {args.jobs} jobs")
    queue = prepare_queue(context, database, args.users, args.jobs)
    server = database.server
    if server is not None:
        postgres.create(server, PGQUEUER_TEMPLATE)
        pgqueuer_enqueue(postgres.dsn(server, PGQUEUER_TEMPLATE), args.jobs)
    rows = [
        WorkerRow(database.backend, concurrency, args.jobs)
        for concurrency in sorted({DEFAULT_CONCURRENCY, args.concurrency})
    ]
    for run in range(args.runs):
        for row in rows:
            name = f"capacity_{run}_worker_{row.concurrency}"
            plasmaart = run_worker(context, queue, row.concurrency, name)
            if server is None:
                raw = context.workdir / f"{name}-raw.db"
                baseline = run_raw_sqlite_queue(raw, args.jobs)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{raw}{suffix}").unlink(missing_ok=True)
            else:
                pgqueuer_args = argparse.Namespace(
                    workers=1, concurrency=row.concurrency, jobs=args.jobs
                )
                baseline = run_pgqueuer(server, pgqueuer_args, f"{name}_pgqueuer").per_second
            row.rates.plasmaart.append(plasmaart)
            row.rates.baseline.append(baseline)
            progress(
                f"  {database.backend} jobs run {run + 1}, {row.concurrency} slots: "
                f"PlasmaArt {plasmaart:.1f} jobs/s, {row.baseline_name} {baseline:.1f} jobs/s"
            )
    return rows


# -- report ---------------------------------------------------------------------------


def submissions_table(rows: Sequence[SubmissionRow]) -> str:
    head = [
        "database",
        "API processes",
        "connections",
        "PlasmaArt req/s",
        "p50",
        "p99",
        "bare app req/s (1 process)",
        "p50",
        "p99",
        "ratio",
    ]
    body = []
    for row in rows:
        figures = [
            f"{row.rps(side):,.0f}|{row.p50(side):.1f} ms|{row.p99(side):.1f} ms".split("|")
            for side in (row.plasmaart, row.bare)
        ]
        body.append(
            [row.backend, row.processes, row.connections, *figures[0], *figures[1], row.ratio]
        )
    return docs.markdown_table(
        head,
        "<>>>>>>>>>",
        [[*cells[:-1], f"{cells[-1]:.1%}"] for cells in body],
    )


def workers_table(rows: Sequence[WorkerRow]) -> str:
    head = ["database", "worker slots", "jobs", "plasmaart worker jobs/s", "baseline jobs/s"]
    body = [
        [
            row.backend,
            row.concurrency,
            f"{row.jobs:,}",
            f"{row.rates.plasmaart_median:,.1f}",
            f"{row.rates.baseline_median:,.0f} ({row.baseline_name})",
            f"{row.rates.ratio:.1%}",
        ]
        for row in rows
    ]
    return docs.markdown_table([*head, "ratio"], "<>>>><", body)


def runs_detail(submissions: Sequence[SubmissionRow], workers: Sequence[WorkerRow]) -> str:
    lines = []
    for row in submissions:
        runs = ", ".join(load.detail() for load in row.plasmaart)
        lines.append(f"{row.backend}, serve --workers {row.processes}, req/s (p50/p99 ms): {runs}")
    for backend in dict.fromkeys(row.backend for row in submissions):
        bare = next(row.bare for row in submissions if row.backend == backend)
        lines.append(
            f"{backend}, bare app, req/s (p50/p99 ms): {', '.join(x.detail() for x in bare)}"
        )
    for w in workers:
        for side, rates in (
            ("plasmaart worker", w.rates.plasmaart),
            (w.baseline_name, w.rates.baseline),
        ):
            shown = ", ".join(f"{rate:.1f}" for rate in rates)
            lines.append(f"{w.backend}, {w.concurrency} slots, {side} jobs/s: {shown}")
    return "\n".join(lines)


def _pick(rows: Sequence[SubmissionRow], backend: str, processes: int) -> SubmissionRow | None:
    return next((r for r in rows if r.backend == backend and r.processes == processes), None)


def _pick_worker(rows: Sequence[WorkerRow], backend: str, slots: int) -> WorkerRow | None:
    return next((r for r in rows if r.backend == backend and r.concurrency == slots), None)


def capacity_table(submissions: Sequence[SubmissionRow], workers: Sequence[WorkerRow]) -> str:
    """The deployment guide's table: one row per setup, a column per database."""
    backends = list(
        dict.fromkeys([*(r.backend for r in submissions), *(w.backend for w in workers)])
    )
    connections = next((r.connections for r in submissions), 0)
    body = []
    for processes in API_PROCESSES:
        cells = []
        for backend in backends:
            row = _pick(submissions, backend, processes)
            cells.append(
                "—"
                if row is None
                else f"{row.rps(row.plasmaart):,.0f} /s (p50 {row.p50(row.plasmaart):.0f} ms,"
                f" p99 {row.p99(row.plasmaart):.0f} ms)"
            )
        what = (
            "API process (`serve --no-worker`)"
            if processes == 1
            else f"`serve --no-worker --workers {processes}` ({processes} API processes)"
        )
        body.append([what, f"submissions, {connections} connections", *cells])
    for slots in sorted({w.concurrency for w in workers}):
        cells = []
        for backend in backends:
            w = _pick_worker(workers, backend, slots)
            cells.append("—" if w is None else f"{w.rates.plasmaart_median:,.0f} jobs/s")
        default = ", the default" if slots == DEFAULT_CONCURRENCY else ""
        body.append(
            [
                f"worker process ({slots} slots{default})",
                "jobs queued to succeeded, provider answering at once",
                *cells,
            ]
        )
    return docs.markdown_table(["one …", "carries", *backends], "<<" + ">" * len(backends), body)


def ratios_text(submissions: Sequence[SubmissionRow], workers: Sequence[WorkerRow]) -> str:
    """Each figure's ratio to its baseline, in words."""
    apis = [
        f"{r.ratio:.0%} with {r.processes} API process{'es' if r.processes > 1 else ''}"
        f" on {r.backend}"
        for r in submissions
    ]
    jobs = [
        f"{w.rates.ratio:.1%} of {w.baseline_name}'s at {w.concurrency} slots on {w.backend}"
        for w in workers
    ]
    return (
        "Submissions: " + ", ".join(apis) + " of the bare app's requests per second."
        " Jobs: " + ", ".join(jobs) + "."
    )


def _bullet(*sentences: str) -> str:
    """One Markdown list item, wrapped like ``docs.prose``."""
    return textwrap.fill(
        " ".join(sentence for sentence in sentences if sentence),
        width=80,
        initial_indent="- ",
        subsequent_indent="  ",
        break_on_hyphens=False,
    )


def _times(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f} times"


def deployment_section(
    submissions: Sequence[SubmissionRow],
    workers: Sequence[WorkerRow],
    facts: Facts,
    args: argparse.Namespace,
) -> str:
    """docs/deployment.md's ``## Capacity`` section, from this run."""
    fact = dict(facts)
    cpus = fact.get("CPUs", "?")
    backends = list(dict.fromkeys(r.backend for r in submissions))
    per_submission = ", ".join(
        f"{1e3 / r.rps(r.plasmaart):.1f} ms on {r.backend}" for r in submissions if r.processes == 1
    )
    scaling = []
    for backend in backends:
        one, two = _pick(submissions, backend, 1), _pick(submissions, backend, 2)
        if one is not None and two is not None:
            scaling.append(
                f"{_times(two.rps(two.plasmaart), one.rps(one.plasmaart))} one's on {backend}"
            )
    per_job = ", ".join(
        f"{1e3 / w.rates.plasmaart_median:.0f} ms on {w.backend}"
        for w in workers
        if w.concurrency == DEFAULT_CONCURRENCY
    )
    more_slots = []
    for w in workers:
        base = _pick_worker(workers, w.backend, DEFAULT_CONCURRENCY)
        if w.concurrency != DEFAULT_CONCURRENCY and base is not None:
            more_slots.append(
                f"{_times(w.rates.plasmaart_median, base.rates.plasmaart_median)} as many on"
                f" {w.backend}"
            )
    sandbox_bound = int(cpus) * 1e3 / args.render_ms if cpus.isdigit() else 0.0
    return docs.paragraphs(
        DEPLOYMENT_HEADING,
        docs.prose(
            "What one process carries, measured by `benchmarks/capacity.py` (part of",
            "`make bench`;",
            "[performance.md](performance.md#capacity-one-api-process-one-worker-process)",
            "has the command, every run and the baselines) on",
            f"{cpus} CPUs ({fact.get('CPU model', 'unknown')}), {fact.get('memory', '?')},",
            f"Python {fact.get('Python', '?')}, SQLite {fact.get('SQLite', '?')} and",
            f"PostgreSQL {fact.get('PostgreSQL', '?')} on the same machine, measured",
            f"{docs.now()}. The machine was shared: its load average (1, 5, 15 min)",
            f"was {fact.get('load average (1, 5, 15 min) at start', '?')} at the start and",
            f"{fact.get('load average (1, 5, 15 min) at end', '?')} at the end, so take",
            "the figures as a floor. Each figure is the median of",
            f"{docs.plural(args.runs, 'run')}. The API processes are the real",
            "`plasmaart serve` with its default settings (INFO logs, an access line",
            "per request), loaded by `wrk` on the same machine with",
            f"{args.connections} connections sending `POST /v1/generations`. Each",
            f"worker process is `plasmaart worker`'s `Worker` with {args.jobs:,} jobs",
            "queued before it starts and a provider that answers at once with a",
            "small image: the worker's own work per job (the claim, the provider's",
            "calls, the output stored in the media folder, the capture, the events).",
        ),
        capacity_table(submissions, workers),
        docs.prose(
            "Against baselines measured in the same runs.",
            ratios_text(submissions, workers),
            "The bare app is FastAPI in one process doing only a submission's SQL",
            "(the key lookup, the guarded debit, the insert); PgQueuer and raw",
            "`sqlite3` claim and end no-op jobs in one process, with no provider, no",
            "media, no ledger.",
        ),
        "Reading the table for a setup:",
        "\n".join(
            [
                _bullet(
                    "**API processes**: one per CPU (`PLASMAART_WEB_WORKERS`). A",
                    f"submission costs about {per_submission} of one process's time.",
                    f"Two processes carried {', '.join(scaling) or 'no figure'}: here the",
                    f"load generator, the database and the processes share {cpus} CPUs,",
                    "so a second process adds a failover and room for slow requests",
                    "more than throughput; on a machine with CPUs to spare it adds",
                    "throughput. Either way hundreds of submissions a second is far",
                    "beyond what the providers behind them generate. Reads (balance,",
                    "history, the dashboard) are cheaper: performance.md has the",
                    "balance figures.",
                ),
                _bullet(
                    f"**Workers**: a worker turns a job over in about {per_job} at the",
                    f"default concurrency; {args.concurrency} slots carried",
                    f"{', '.join(more_slots) or 'no figure'}: with a provider that answers",
                    "at once, slots only overlap the worker's waits on the database, and",
                    "its CPU is the bound. With a real provider what bounds jobs per",
                    "second is the provider's time: a worker runs",
                    "`PLASMAART_WORKER_CONCURRENCY` jobs at once (4), so it finishes",
                    "about `concurrency ÷ job duration` jobs a second: 4 slots and",
                    "2-second images are 2 jobs/s, 60-second videos 4 a minute. Workers",
                    "wait on the provider most of the time, so raise the concurrency",
                    "(up to 256) before adding processes, and add worker units once a",
                    "worker's CPU is busy (storing and watermarking outputs is its real",
                    "work). The plans' per-wallet limits (`concurrency` in the catalog)",
                    "still hold whatever the workers' slots.",
                ),
                _bullet(
                    "**The sandbox provider** renders its images in the worker",
                    f"({args.render_ms:.0f} ms of CPU for a flux-schnell image here), so",
                    f"a sandbox install's workers carry at most about {sandbox_bound:.0f}",
                    f"jobs a second on {cpus} CPUs, whatever their slots.",
                ),
                _bullet(
                    "**SQLite** serves one machine: its writes are committed together",
                    "(group commit), and it carries the table's figures; PostgreSQL is",
                    "for several machines and for more writers than one file lock can",
                    "take.",
                ),
                _bullet(
                    "Measure your own: `make bench` (about 18 minutes on 2 CPUs), or",
                    "`.venv/bin/python benchmarks/capacity.py --write-docs` alone (3 to",
                    "4 minutes), rewrites performance.md and this table on your machine.",
                ),
            ]
        ),
    )


def render_section(
    submissions: Sequence[SubmissionRow],
    workers: Sequence[WorkerRow],
    facts: Facts,
    command: str,
    args: argparse.Namespace,
) -> str:
    method = docs.prose(
        "What one API process and one worker process carry, with the real",
        'commands as docs/deployment.md starts them (its "Capacity" table is',
        f"written from this run). **Submissions**: {docs.plural(args.runs, 'run')}; in",
        "each, `plasmaart serve --no-worker` (one API process), then `plasmaart",
        "serve --no-worker --workers 2` (two processes sharing the port, under",
        "their supervisor), then the bare app of `benchmarks/generation_servers.py`",
        "in one uvicorn process (the key lookup by hash, the guarded debit and the",
        "job's insert in one transaction, on the driver itself), each on a fresh",
        f"copy of a prepared database with {args.users} Studio users, warmed up for",
        f"a second, then `wrk` (1 thread) keeping {args.connections} connections busy",
        f"for {args.seconds:g} s with `POST /v1/generations` (flux-schnell, the",
        "sandbox provider at zero delay), the API keys in turn; p50 and p99 from",
        "wrk's latency distribution. The ratio is each setup's median over the one",
        "bare process's.",
    )
    worker_method = docs.prose(
        f"**Jobs**: {docs.plural(args.runs, 'run')}; in each, {args.jobs:,} jobs",
        "queued through `GenerationService.submit` (spread over the users) before",
        "one worker process starts: `generation_servers.py worker`, the `Worker`",
        "that `plasmaart worker` runs, at the default concurrency",
        f"({DEFAULT_CONCURRENCY}) and at {args.concurrency} slots, with a provider",
        "that answers at once with a 1x1 PNG and the media folder's storage",
        "(`--noop-provider --store-outputs`). Jobs per second from the first claim",
        "to the last job succeeded (the jobs' `started_at` and `finished_at`):",
        "the claim, the provider's calls, the output stored, the capture and the",
        "job's events. The sandbox provider would add its rendering of a real",
        f"image in the worker, {args.render_ms:.0f} ms of CPU a flux-schnell image",
        "here, a provider's work, not the worker's. Baselines, no-op jobs in one",
        "process: on PostgreSQL PgQueuer (a no-op async entrypoint,",
        "`QueueManager.run(batch_size=slots)` over psycopg, from the first pick",
        "to the last completion in `pgqueuer_log`); on SQLite the standard",
        "library's `sqlite3` with the same settings, per job one `BEGIN",
        "IMMEDIATE` transaction claiming the oldest queued job (`SELECT`,",
        "`UPDATE`) and one ending it (`UPDATE`, `INSERT` of its output).",
    )
    return docs.section(
        SECTION_HEADING,
        "capacity.py",
        command,
        method,
        submissions_table(submissions),
        worker_method,
        workers_table(workers),
        docs.RATIOS,
        docs.DURABILITY,
        docs.runs_block(runs_detail(submissions, workers)),
        docs.machine_block(facts),
    )


def publish(
    submissions: Sequence[SubmissionRow],
    workers: Sequence[WorkerRow],
    facts: Facts,
    args: argparse.Namespace,
    performance: Path = docs.PERFORMANCE_DOC,
    deployment: Path = DEPLOYMENT_DOC,
) -> None:
    """This benchmark's section of performance.md, and the deployment guide's
    ``## Capacity`` section (the other sections of both kept as they are)."""
    section = render_section(submissions, workers, facts, command_line(), args)
    docs.publish(SECTION_HEADING, section, path=performance)
    docs.write_section(
        DEPLOYMENT_HEADING, deployment_section(submissions, workers, facts, args) + "\n", deployment
    )
    progress(
        f"wrote {deployment.relative_to(REPO) if deployment.is_relative_to(REPO) else deployment}"
    )


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    made = cli.parser(__doc__, SECTION_HEADING)
    cli.add_timing(made, 2.0, 3, "run")
    cli.option(made, "--connections", int, 16, "HTTP connections of the submissions")
    cli.option(made, "--jobs", int, 200, "jobs per worker run")
    cli.option(
        made, "--concurrency", int, 16, "the second worker row's slots (the first: the default)"
    )
    cli.option(made, "--users", int, 16, "users the work is spread over")
    cli.add_load_generator(made)
    made.add_argument("--sqlite-only", action="store_true", help="SQLite only")
    args = made.parse_args(argv)
    cli.check_complete(
        made,
        argparse.Namespace(write_docs=args.write_docs, only=None, sqlite_only=args.sqlite_only),
    )
    if args.load_generator == "wrk" and not shutil.which("wrk"):
        made.error("wrk is not installed (apt-get install wrk); or --load-generator httpx")
    if not args.sqlite_only and importlib.util.find_spec("pgqueuer") is None:
        made.error("PgQueuer is not installed: .venv/bin/pip install -e '.[bench]'")
    return args


def measure_database(
    context: fixtures.Context,
    backend: str,
    server: postgres.PgServer | None,
    args: argparse.Namespace,
) -> tuple[list[SubmissionRow], list[WorkerRow]]:
    progress(f"{backend}: preparing the database")
    database, keys = fixtures.prepare_studio_database(context, backend, server, args.users)
    load = LoadGenerator(args.load_generator, context.workdir, keys, args.connections)
    progress(f"{backend} submissions")
    submissions = measure_submissions(context, database, load, args)
    workers = measure_workers(context, database, args)
    return submissions, workers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    submissions: list[SubmissionRow] = []
    workers: list[WorkerRow] = []
    pg_version = "not used"
    with measuring("capacity") as run:
        context = fixtures.studio_context(run.workdir)
        found = measure_database(context, "SQLite", None, args)
        submissions += found[0]
        workers += found[1]
        if not args.sqlite_only:
            with postgres.throwaway_server(run.workdir) as server:
                pg_version = postgres.version(server)
                found = measure_database(context, "PostgreSQL", server, args)
                submissions += found[0]
                workers += found[1]
        args.render_ms = sandbox_render_ms()
        print(submissions_table(submissions))
        print()
        print(workers_table(workers))
        print()
        print(capacity_table(submissions, workers))
        print()
        print(runs_detail(submissions, workers))
        if args.write_docs:
            load = LoadGenerator(args.load_generator, run.workdir, [], args.connections)
            facts = run.facts(
                pg_version, packages=PACKAGES, extra=[("load generator", load.description)]
            )
            publish(submissions, workers, facts, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ledger throughput: hold + capture transactions per second, beside a baseline.

What it measures, for each client count (default 1 and 8), each ``--runs`` times,
PlasmaArt and its baseline interleaved so that both see the same machine noise:

* PlasmaArt on SQLite: client processes, each with its own ``Database`` and
  ``LedgerService`` on one migrated SQLite file and its own funded wallet, loop
  for ``--seconds``: one write transaction doing ``LedgerService.hold`` (8
  credits), then one doing ``LedgerService.capture`` of that hold. Both are
  full ledger operations: wallet lock, idempotency lookup, lots, hold rows,
  journal entries and the recorded result.
* Baseline, raw sqlite3: the same number of processes on another file with the
  same settings (WAL, ``synchronous=NORMAL``, ``busy_timeout``, explicit
  ``BEGIN IMMEDIATE``), each transaction one conditional ``UPDATE`` of a
  balance and one ``INSERT`` into a journal table.
* PlasmaArt on PostgreSQL: the same client loop against a throwaway server
  (``tests/support/pgserver.py``).
* Baseline, pgbench: the built-in ``tpcb-like`` script against another
  database of the same server.

The result is the median transactions per second of each side and the ratio of
the medians, checked against an aim (SQLite >= 25 % of raw sqlite3, PostgreSQL
>= 50 % of pgbench). Before measuring, one short single-client PlasmaArt run
on SQLite is profiled with cProfile; ``--profile`` prints its top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import event

from plasmaart.clock import SystemClock
from plasmaart.db.engine import create_database
from plasmaart.ledger.service import LedgerService

# Run as a script from the repository root: the repository goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import baselines, cli, docs, ledger, postgres, processes, profiles, session
from benchmarks.harness.stats import Sides

SECTION_HEADING = "## Ledger: hold + capture"

# PlasmaArt's transactions per second at least this share of the baseline's.
AIMS = {"SQLite": 0.25, "PostgreSQL": 0.50}

# Warm-up fills SQLAlchemy's statement cache and the connection pool before
# the clock starts, so the first compiles are not counted.
WARMUP_SECONDS = 0.5
SETUP_TIMEOUT = 180.0
FINISH_GRACE = 120.0
PROFILE_SECONDS = 3.0


# -- clients ---------------------------------------------------------------


class Client(Protocol):
    """One benchmark client: runs in its own process, one step at a time."""

    # Transactions that one step commits.
    transactions_per_step: int

    def step(self) -> None: ...

    def close(self) -> None: ...


class PlasmaArtClient:
    """One hold and one capture of it, each in its own write transaction."""

    transactions_per_step = 2

    def __init__(self, url: str, wallet_id: str) -> None:
        self.db = create_database(url)
        self.pair = ledger.HoldAndCapture(LedgerService(SystemClock()), wallet_id)

    def hold(self) -> str:
        with self.db.write() as conn:
            return self.pair.hold(conn)

    def capture(self, hold_id: str) -> None:
        with self.db.write() as conn:
            self.pair.capture(conn, hold_id)

    def step(self) -> None:
        self.capture(self.hold())

    def close(self) -> None:
        self.db.dispose()


# -- running clients in processes ------------------------------------------


@dataclass(frozen=True)
class Measurement:
    steps: int
    transactions: int
    seconds: float

    @property
    def tps(self) -> float:
        return self.transactions / self.seconds

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds


def _client_process(
    index: int,
    channel: processes.Channel,
    go: processes.Go,
    _stop: processes.Stop,
    factory: Callable[[], Client],
) -> None:
    with processes.reporting(channel, index):
        client = factory()
        try:
            warm_until = time.monotonic() + WARMUP_SECONDS
            while time.monotonic() < warm_until:
                client.step()
            channel.put(("ready", index))
            # CLOCK_MONOTONIC is system-wide on Linux: every client stops at
            # the parent's deadline.
            deadline = processes.wait_for_go(go, SETUP_TIMEOUT)
            steps = 0
            last = time.monotonic()
            while last < deadline:
                client.step()
                steps += 1
                last = time.monotonic()
            channel.put(("done", index, steps, steps * client.transactions_per_step, last))
        finally:
            client.close()


def run_clients(factories: Sequence[Callable[[], Client]], seconds: float) -> Measurement:
    """Start one process per factory, warm up, then run them all for ``seconds``."""
    with processes.crew(
        [(_client_process, (factory,)) for factory in factories], "client"
    ) as clients:
        clients.collect("ready", SETUP_TIMEOUT)
        start = time.monotonic()
        clients.let_go(start + seconds)
        done = clients.collect("done", seconds + FINISH_GRACE)
    steps = sum(int(message[2]) for message in done)
    transactions = sum(int(message[3]) for message in done)
    elapsed = max(float(message[4]) for message in done) - start
    return Measurement(steps, transactions, elapsed)


# -- profile ---------------------------------------------------------------

BUCKETS = (
    "sqlite3 driver and SQLite itself",
    "SQLAlchemy: building statements",
    "SQLAlchemy: cache keys",
    "SQLAlchemy: compiling",
    "SQLAlchemy: executing, events, results, pool",
    "PlasmaArt code",
    "stdlib (json, hashlib, datetime, ...) and other",
)


def _bucket(key: profiles.FuncKey) -> str:
    path, _, name = key
    if path == "~":
        return BUCKETS[0] if "sqlite3" in name else ""
    if "/sqlalchemy/" in path:
        inner = path.rsplit("/sqlalchemy/", 1)[1]
        if inner in ("sql/compiler.py", "sql/crud.py"):
            return BUCKETS[3]
        if inner in ("sql/cache_key.py", "sql/traversals.py"):
            return BUCKETS[2]
        if inner.startswith("sql/"):
            return BUCKETS[1]
        return BUCKETS[4]
    if "/plasmaart/" in path:
        return BUCKETS[5]
    return BUCKETS[6]


@dataclass
class Profile:
    seconds: float
    pairs: int
    hold_statements: int
    capture_statements: int
    # Self time per bucket; builtins count for the bucket of their caller.
    buckets: dict[str, float]
    top_cumulative: list[tuple[profiles.FuncKey, profiles.FuncStats]]
    top_self: list[tuple[profiles.FuncKey, profiles.FuncStats]]
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.buckets.values())

    def share(self, bucket: str) -> float:
        return self.buckets.get(bucket, 0.0) / self.total if self.total else 0.0

    def table(self, rows: list[tuple[profiles.FuncKey, profiles.FuncStats]], title: str) -> str:
        per_pair = 1e6 / max(self.pairs, 1)
        lines = [
            f"{title} ({self.pairs} pairs in {self.seconds:.1f} s under cProfile)",
            f"{'calls':>9} {'self s':>8} {'cum s':>8} {'cum us/pair':>11}  function",
        ]
        lines.extend(profiles.top_lines(rows, lambda cumulative: f"{cumulative * per_pair:>11.0f}"))
        return "\n".join(lines)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {self.share(name):.0%}" for name in BUCKETS)
        return (
            f"{self.pairs} hold + capture pairs in {self.seconds:.1f} s "
            f"({1e3 * self.seconds / max(self.pairs, 1):.2f} ms per pair under the profiler); "
            f"a hold sends {self.hold_statements} statements and a capture "
            f"{self.capture_statements} (BEGIN included, COMMIT apart); self time: {parts}"
        )


def _statements_of(client: PlasmaArtClient, action: Callable[[], Any]) -> tuple[int, Any]:
    sent = 0

    def count(*_: Any) -> None:
        nonlocal sent
        sent += 1

    event.listen(client.db.engine, "before_cursor_execute", count)
    try:
        result = action()
    finally:
        event.remove(client.db.engine, "before_cursor_execute", count)
    return sent, result


def profile_sqlite(workdir: Path, seconds: float) -> Profile:
    url = f"sqlite:///{workdir / 'profile.db'}"
    (wallet,) = ledger.fund_wallets(url, 1)
    client = PlasmaArtClient(url, wallet)
    try:
        warm_until = time.monotonic() + WARMUP_SECONDS
        while time.monotonic() < warm_until:
            client.step()
        hold_statements, hold_id = _statements_of(client, client.hold)
        capture_statements, _ = _statements_of(client, lambda: client.capture(hold_id))
        profiler = cProfile.Profile()
        pairs = 0
        started = time.monotonic()
        deadline = started + seconds
        profiler.enable()
        while time.monotonic() < deadline:
            client.step()
            pairs += 1
        profiler.disable()
        elapsed = time.monotonic() - started
    finally:
        client.close()
    profiler.create_stats()
    raw = cast(dict[profiles.FuncKey, profiles.FuncStats], profiler.stats)
    buckets = profiles.self_time_by_bucket(raw, _bucket, BUCKETS[6])
    ordered = sorted(raw.items(), key=lambda item: item[1][3], reverse=True)
    by_self = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)
    return Profile(
        seconds=elapsed,
        pairs=pairs,
        hold_statements=hold_statements,
        capture_statements=capture_statements,
        buckets=buckets,
        top_cumulative=ordered[: profiles.PROFILE_TOP],
        top_self=by_self[: profiles.PROFILE_TOP],
    )


# -- measurements ----------------------------------------------------------


@dataclass
class Comparison:
    backend: str
    baseline_name: str
    clients: int
    aim: float
    # Transactions per second of each run, PlasmaArt's and its baseline's.
    tps: Sides = field(default_factory=Sides)
    # PlasmaArt's hold + capture pairs per second, each run.
    pairs: list[float] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.tps.ratio >= self.aim

    def add_run(self, plasmaart: Measurement, baseline_tps: float) -> None:
        self.tps.plasmaart.append(plasmaart.tps)
        self.pairs.append(plasmaart.steps_per_second)
        self.tps.baseline.append(baseline_tps)
        session.progress(
            f"  {self.backend} c={self.clients} run {len(self.pairs)}: "
            f"PlasmaArt {plasmaart.tps:8.1f} tx/s ({plasmaart.steps_per_second:.1f} pairs/s), "
            f"{self.baseline_name} {baseline_tps:8.1f} tx/s"
        )


def measure_sqlite(workdir: Path, clients: int, runs: int, seconds: float) -> Comparison:
    url = f"sqlite:///{workdir / f'plasmaart-c{clients}.db'}"
    wallets = ledger.fund_wallets(url, clients)
    raw_path = workdir / f"raw-c{clients}.db"
    accounts = baselines.prepare_raw_sqlite(raw_path, clients)
    plasmaart = [functools.partial(PlasmaArtClient, url, wallet) for wallet in wallets]
    raw = [functools.partial(baselines.RawWriter, str(raw_path), account) for account in accounts]
    comparison = Comparison("SQLite", "raw sqlite3", clients, AIMS["SQLite"])
    for _ in range(runs):
        comparison.add_run(run_clients(plasmaart, seconds), run_clients(raw, seconds).tps)
    return comparison


def measure_postgres(
    server: postgres.PgServer, clients: int, runs: int, seconds: float
) -> Comparison:
    url = postgres.create(server, f"plasmaart_bench_c{clients}")
    wallets = ledger.fund_wallets(url, clients)
    scale = max(10, clients)
    pgbench_db = f"pgbench_s{scale}"
    baselines.pgbench_init(server, pgbench_db, scale)
    plasmaart = [functools.partial(PlasmaArtClient, url, wallet) for wallet in wallets]
    comparison = Comparison("PostgreSQL", "pgbench tpcb-like", clients, AIMS["PostgreSQL"])
    for _ in range(runs):
        measured = run_clients(plasmaart, seconds)
        comparison.add_run(measured, baselines.pgbench_run(server, pgbench_db, clients, seconds))
    return comparison


# -- report ----------------------------------------------------------------


def results_table(comparisons: Sequence[Comparison]) -> str:
    head = ["measurement", "clients", "PlasmaArt (tx/s)", "baseline (tx/s)", "ratio", "aim"]
    rows = [
        [
            f"{c.backend}: PlasmaArt hold/capture vs {c.baseline_name}",
            c.clients,
            f"{c.tps.plasmaart_median:,.0f}",
            f"{c.tps.baseline_median:,.0f}",
            f"{c.tps.ratio:.1%}",
            f"≥ {c.aim:.0%}",
            "yes" if c.met else "no",
        ]
        for c in comparisons
    ]
    return docs.markdown_table([*head, "met?"], "<>>>>><", rows)


def runs_detail(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        plasma = ", ".join(f"{tps:.0f}" for tps in c.tps.plasmaart)
        base = ", ".join(f"{tps:.0f}" for tps in c.tps.baseline)
        lines.append(
            f"{c.backend}, {c.clients} client(s): PlasmaArt tx/s [{plasma}] "
            f"(median {statistics.median(c.pairs):.0f} pairs/s); {c.baseline_name} tx/s [{base}]"
        )
    return "\n".join(lines)


def profile_text(profile: Profile) -> str:
    per_pair = 1e3 * profile.seconds / max(profile.pairs, 1)
    largest = max(BUCKETS, key=profile.share)
    sqlalchemy_share = sum(profile.share(name) for name in BUCKETS if "SQLAlchemy" in name)
    top = ", ".join(f"`{profiles.short_name(key)}`" for key, _ in profile.top_self[:4])
    shares = "\n".join(f"| {name} | {profile.share(name):.0%} |" for name in BUCKETS)
    intro = docs.prose(
        f"One PlasmaArt client on SQLite, profiled with cProfile for {profile.seconds:.1f} s",
        f"just before the measurements: {profile.pairs} hold + capture pairs,",
        f"{per_pair:.2f} ms per pair under the profiler (which slows Python code more",
        "than C code, so the Python shares below are somewhat inflated).",
        f"A hold sends {profile.hold_statements} SQL statements and a capture",
        f"{profile.capture_statements} (`BEGIN IMMEDIATE` included, the commit apart);",
        "a baseline transaction sends 4 (`BEGIN IMMEDIATE`, `UPDATE`, `INSERT`, `COMMIT`).",
        "Where the time went (self time; a builtin such as `isinstance` counts for",
        "the code that calls it):",
    )
    outro = docs.prose(
        f"The largest share is {largest} ({profile.share(largest):.0%});",
        f"SQLAlchemy as a whole took {sqlalchemy_share:.0%} and SQLite itself",
        f"{profile.share(BUCKETS[0]):.0%}.",
        f"The functions with the most self time: {top}.",
        f"`--profile` prints the top {profiles.PROFILE_TOP} functions by cumulative and by",
        "self time.",
    )
    return f"{intro}\n\n| where | share |\n|---|---:|\n{shares}\n\n{outro}\n"


def obstacles(comparisons: Sequence[Comparison], profile: Profile) -> str:
    missed = [c for c in comparisons if not c.met]
    if not missed:
        return docs.prose("Every ledger figure meets its aim.") + "\n"
    sqlalchemy_share = sum(profile.share(name) for name in BUCKETS if "SQLAlchemy" in name)
    per_pair = profile.hold_statements + profile.capture_statements
    growth = "; ".join(
        f"{backend}: "
        + ", ".join(
            f"{c.tps.plasmaart_median:,.0f} tx/s at {c.clients}"
            for c in comparisons
            if c.backend == backend
        )
        for backend in dict.fromkeys(c.backend for c in comparisons)
    )
    own = ", ".join(
        f"`{profiles.short_name(key).removeprefix('plasmaart/')}`"
        for key, _ in profile.top_cumulative
        if "/plasmaart/" in key[0]
    )
    return (
        docs.prose(
            "**Hold + capture** is below its aim on",
            ", ".join(
                f"{c.backend} at {docs.plural(c.clients, 'client')} ({c.tps.ratio:.1%})"
                for c in missed
            )
            + ".",
            f"A pair sends {per_pair} statements where two baseline transactions send 8",
            "(raw sqlite3). The ledger's hot statements already go straight to the",
            "DBAPI cursor, written once per dialect (`Driver` in",
            "`plasmaart/ledger/repository.py`), their writes queued and sent together",
            "at the end of the operation (on PostgreSQL in one pipeline): in the",
            "profile SQLAlchemy (the transaction, the pool, events) took",
            f"{sqlalchemy_share:.0%} of the CPU time, SQLite itself",
            f"{profile.share(BUCKETS[0]):.0%} and PlasmaArt's own code",
            f"{profile.share(BUCKETS[5]):.0%}. What would move it further on SQLite:",
            "fewer pages written per transaction (each journal entry updates its",
            "table and its 3 indexes, and the holds, lots and idempotency records are",
            "keyed by text ids, wider in every B-tree page than integers), or",
            "committing several clients' holds and captures in one transaction, as",
            "group commit (`Database.run_write`) already does for submissions; on",
            "PostgreSQL, fewer round trips per transaction (the reads before the",
            "pipelined writes, the `BEGIN` and the `COMMIT`).",
            "PlasmaArt's functions among the heaviest by cumulative time:",
            f"{own or 'none in the top functions'}.",
        )
        + "\n\n"
        + docs.prose(
            "More clients add little: on SQLite every writer waits for the one write",
            "lock, held from `BEGIN IMMEDIATE` to the commit with the Python work",
            "inside it; on PostgreSQL each transaction still makes several round",
            "trips (its reads, then its writes in one pipeline), and with more",
            "client processes than CPUs the clients, the server and pgbench share",
            f"the cores. PlasmaArt by client count: {growth}.",
        )
        + "\n"
    )


HOW_TO_READ = docs.paragraphs(
    docs.RATIOS,
    docs.prose(
        "The two sides do not do the same work, so 100 % is not the goal.",
        "One PlasmaArt transaction is one hold or one capture, each a full ledger",
        "operation, its hot statements sent through the DBAPI driver: it locks",
        "the wallet, looks its idempotency key up, reads the",
        "wallet's lots (hold) or the hold and its allocations (capture), updates",
        "lots and hold rows, writes a journal entry, stores the wallet's balances",
        "and records its result under its key; a capture also adds to the wallet's",
        "daily usage roll-up. A raw sqlite3 transaction is 2",
        "statements (a guarded `UPDATE` and an `INSERT`); a pgbench tpcb-like one is",
        "5 (3 `UPDATE`s, a `SELECT`, an `INSERT`). The aims (SQLite ≥ 25 % of raw",
        "sqlite3, PostgreSQL ≥ 50 % of pgbench) say how much the ledger's",
        "bookkeeping and the Python above the driver may cost.",
    ),
    docs.prose(
        "Each client is a process with its own wallet, so clients never wait for",
        "each other's rows. On SQLite all writers still queue for the one database",
        "write lock, which a PlasmaArt transaction holds from `BEGIN IMMEDIATE` to",
        "its commit, Python work included. With more clients than cores, the",
        "clients, the PostgreSQL server and pgbench share the CPUs, so those rows",
        "measure the machine under contention, not parallel speed-up.",
    ),
    docs.DURABILITY,
)


def render_section(
    comparisons: Sequence[Comparison],
    profile: Profile,
    facts: session.Facts,
    command: str,
    args: argparse.Namespace,
) -> str:
    method = docs.prose(
        f"Each measurement ran {docs.plural(args.runs, 'time')} for {args.seconds:g} s,",
        "PlasmaArt and its",
        "baseline alternately; the table shows the medians in transactions per",
        "second (a hold and its capture are two transactions) and their ratio.",
    )
    return docs.section(
        SECTION_HEADING,
        "ledger_tps.py",
        command,
        method,
        results_table(comparisons),
        docs.runs_block(runs_detail(comparisons)),
        docs.machine_block(facts),
        docs.subsection("Profile", profile_text(profile)),
        docs.subsection("What stands in the way", obstacles(comparisons, profile)),
        docs.subsection("How to read the ratios", HOW_TO_READ),
    )


def summary_rows(comparisons: Sequence[Comparison]) -> list[docs.SummaryRow]:
    return [
        docs.SummaryRow(
            f"hold + capture, {c.backend}, {docs.plural(c.clients, 'client')}",
            f"{c.tps.plasmaart_median:,.0f} tx/s",
            f"{c.tps.baseline_median:,.0f} tx/s ({c.baseline_name})",
            f"{c.tps.ratio:.1%}",
            f"≥ {c.aim:.0%}",
            c.met,
        )
        for c in comparisons
    ]


# -- main ------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    made = cli.parser(__doc__, SECTION_HEADING)
    cli.add_timing(made, 5.0, 5, "measurement")
    cli.counts_option(made, "--clients", [1, 8], "comma-separated client process counts")
    made.add_argument(
        "--profile",
        action="store_true",
        help=f"print the top {profiles.PROFILE_TOP} functions of the SQLite profile",
    )
    return made.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    comparisons: list[Comparison] = []
    with session.measuring("ledger") as run:
        session.progress(f"profiling one SQLite client for {PROFILE_SECONDS:g} s")
        profile = profile_sqlite(run.workdir, PROFILE_SECONDS)
        if args.profile:
            print(profile.table(profile.top_cumulative, "Top functions by cumulative time"))
            print()
            print(profile.table(profile.top_self, "Top functions by self time"))
            print()
        session.progress(profile.summary())
        for clients in args.clients:
            session.progress(f"SQLite, {clients} client(s)")
            comparisons.append(measure_sqlite(run.workdir, clients, args.runs, args.seconds))
        with postgres.throwaway_server(run.workdir) as server:
            pg_version = postgres.version(server)
            for clients in args.clients:
                session.progress(f"PostgreSQL, {clients} client(s)")
                comparisons.append(measure_postgres(server, clients, args.runs, args.seconds))
        print(results_table(comparisons))
        print()
        print(runs_detail(comparisons))
        if args.write_docs:
            section = render_section(
                comparisons,
                profile,
                run.facts(pg_version),
                session.command_line(),
                args,
            )
            docs.publish(SECTION_HEADING, section, "ledger_tps.py", summary_rows(comparisons))
    return 0


if __name__ == "__main__":
    sys.exit(main())

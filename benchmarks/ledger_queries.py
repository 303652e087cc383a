"""Credits reads at scale: ledger pages and usage over one wallet's big journal.

For each size N (default 10,000, 100,000 and 1,000,000 journal entries) and
each backend (a SQLite file, and a throwaway PostgreSQL server started with
``tests/support/pgserver.py``) it builds a migrated database in which one
wallet holds N journal entries, with the lots, holds and ``usage_daily`` rows
that go with them, plus 200 neighbour wallets with about N/10 entries between
them, interleaved (so that every query has to pick its wallet out). The history is simulated
over 400 days: monthly subscription lots that expire, credit packs bought when
the balance runs low, and generations of the catalog's models that are held,
then captured (in full or in part) or released; the last few still running.
Rows are bulk-inserted directly (``executemany`` in one transaction on SQLite,
``COPY`` on PostgreSQL), not through the service, but every row satisfies the
schema's CHECK constraints and the journal's arithmetic (``amount``,
``balance_after``, ``held_after``) is the service's.

Then it times the functions of ``plasmaart.ledger.queries`` called directly on
one read connection (server-side time, no HTTP), each ``--runs`` times after a
warm-up, interleaved with a baseline measured in the same loop on the same
database: a primary-key read of one journal entry (``SELECT ... WHERE id = ?``).
It reports the medians and their ratio to the baseline's, checks the aim (the
ledger pages and the usage reads under 50 ms at the largest size), checks every
answer against the simulated history, and shows the query plans (``EXPLAIN
QUERY PLAN`` / ``EXPLAIN``) of the largest size, failing if one scans a table.

Run from the repository root:
``.venv/bin/python benchmarks/ledger_queries.py [--sizes 10000,100000,1000000] [--runs 7]``
(``--backends sqlite`` to skip PostgreSQL). The default run takes a few minutes.
"""

from __future__ import annotations

import gc
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, event, func, select

from plasmaart.catalog import load_catalog
from plasmaart.db.engine import Database, create_database
from plasmaart.db.migrate import upgrade
from plasmaart.db.tables import journal_entries
from plasmaart.ledger import queries
from plasmaart.ledger.queries import JournalPosition

# Run as a script from the repository root: the repository goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import cli, docs, postgres
from benchmarks.harness.session import command_line, measuring, progress

SECTION_HEADING = "## Credits reads at scale (`benchmarks/ledger_queries.py`)"

# "Now" in every built database: the history ends here.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SPAN = timedelta(days=400)
AIM_MS = 50.0
PAGE = 50
HISTORY_BATCH = 1000
# Journal entries per generation: a hold, then a capture and/or a release.
ENTRIES_PER_GENERATION = 2.1
# Other wallets: together a tenth of the generations, interleaved.
NEIGHBOUR_SHARE = 0.1
NEIGHBOUR_IDS = [f"wal_bench_neighbour_{n:04d}" for n in range(200)]
MONTHLY_CREDITS = 200_000
PACK_CREDITS = 500_000
STILL_RUNNING = 3
# How often each catalog model is used (the rest of the catalog: never).
MODEL_WEIGHTS = {
    "flux-schnell": 40,
    "flux-dev": 15,
    "flux-pro-v1.1": 10,
    "seedream-v3": 8,
    "imagen4-preview": 7,
    "kling-video-v2.1": 5,
    "pixverse-v4.5": 5,
    "hailuo-02-pro": 4,
    "wan-pro": 3,
    "seedance-v1-pro": 2,
    "veo3": 1,
}

WALLET_COLUMNS = ("id", "owner_kind", "owner_id", "available", "held", "created_at")
LOT_COLUMNS = (
    "id",
    "wallet_id",
    "source",
    "granted",
    "remaining",
    "expired",
    "expires_at",
    "reference",
    "created_at",
    "closed_at",
    "closed_reason",
)
HOLD_COLUMNS = (
    "id",
    "wallet_id",
    "amount",
    "captured",
    "released",
    "status",
    "generation_id",
    "model",
    "memo",
    "created_at",
    "resolved_at",
)
ENTRY_COLUMNS = (
    "id",
    "wallet_id",
    "kind",
    "from_account",
    "to_account",
    "credits",
    "amount",
    "balance_after",
    "held_after",
    "lot_id",
    "hold_id",
    "generation_id",
    "model",
    "outputs",
    "memo",
    "created_at",
)
USAGE_COLUMNS = ("wallet_id", "day", "model", "generations", "outputs", "credits")


# -- the simulated history ----------------------------------------------------


@dataclass
class Book:
    """Every row of the built database, in insertion order."""

    wallets: list[list[Any]] = field(default_factory=list)
    lots: list[list[Any]] = field(default_factory=list)
    holds: list[list[Any]] = field(default_factory=list)
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    usage: dict[tuple[str, date, str], list[int]] = field(default_factory=dict)
    # The big wallet's captures: (time, model, outputs, credits), to check answers.
    captures: list[tuple[datetime, str, int, int]] = field(default_factory=list)
    next_entry_id: int = 1
    serial: int = 0

    def new_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}_bench{self.serial:012d}"


class WalletHistory:
    """One wallet's lots, holds and entries, moved the way the ledger moves them."""

    def __init__(self, book: Book, wallet_id: str, opened: datetime, *, measured: bool) -> None:
        self.book = book
        self.id = wallet_id
        # The measured wallet's captures are kept to check the answers.
        self.measured = measured
        self.available = 0
        self.held = 0
        self.entries = 0
        self.row = [wallet_id, "user", wallet_id.replace("wal_", "usr_"), 0, 0, opened]
        book.wallets.append(self.row)
        self.subscription: list[Any] | None = None
        self.packs: list[list[Any]] = []  # purchase lots with credits left, oldest first

    def move(
        self, when: datetime, kind: str, source: str, target: str, credits: int, **refs: Any
    ) -> None:
        amount = credits if target == "wallet" else -credits if source == "wallet" else 0
        self.available += amount
        self.held += credits if target == "holds" else -credits if source == "holds" else 0
        book = self.book
        book.entries.append(
            (
                book.next_entry_id,
                self.id,
                kind,
                source,
                target,
                credits,
                amount,
                self.available,
                self.held,
                refs.get("lot_id"),
                refs.get("hold_id"),
                refs.get("generation_id"),
                refs.get("model"),
                refs.get("outputs"),
                refs.get("memo"),
                when,
            )
        )
        book.next_entry_id += 1
        self.entries += 1

    def new_lot(
        self, when: datetime, source: str, credits: int, expires_at: datetime | None
    ) -> list[Any]:
        lot = [
            self.book.new_id("lot"),
            self.id,
            source,
            credits,
            credits,
            0,
            expires_at,
            None,
            when,
            None,
            None,
        ]
        self.book.lots.append(lot)
        self.move(when, "grant", "issuance", "wallet", credits, lot_id=lot[0])
        return lot

    def renew(self, when: datetime) -> None:
        """The period ended: what is left of the monthly lot expires, a new one arrives."""
        lot = self.subscription
        if lot is not None and lot[4]:
            self.move(when, "expire", "wallet", "expired", lot[4], lot_id=lot[0])
            lot[5], lot[4] = lot[4], 0
            lot[9], lot[10] = when, "expired"
        self.subscription = self.new_lot(
            when, "subscription", MONTHLY_CREDITS, when + timedelta(days=30)
        )

    def generate(
        self,
        when: datetime,
        settled: datetime | None,
        model: str,
        price: int,
        requested: int,
        delivered: int,
    ) -> None:
        """A generation held at ``when`` and, unless still running, settled at
        ``settled``: ``delivered`` outputs captured, the rest released."""
        book = self.book
        credits = price * requested
        if self.available < credits:
            self.packs.append(self.new_lot(when, "purchase", PACK_CREDITS, None))
        # Burn order: the expiring monthly lot first, then packs, oldest first.
        taken: list[tuple[list[Any], int]] = []
        left = credits
        for lot in [self.subscription, *self.packs]:
            if lot is not None and left and lot[4]:
                take = min(lot[4], left)
                lot[4] -= take
                left -= take
                taken.append((lot, take))
        self.packs = [lot for lot in self.packs if lot[4]]  # packs this hold emptied leave
        generation_id = book.new_id("gen")
        hold = [
            book.new_id("hld"),
            self.id,
            credits,
            0,
            0,
            "pending",
            generation_id,
            model,
            None,
            when,
            None,
        ]
        book.holds.append(hold)
        refs = {"hold_id": hold[0], "generation_id": generation_id, "model": model}
        self.move(when, "hold", "wallet", "holds", credits, **refs)
        if settled is None:
            return
        captured = price * delivered
        released = credits - captured
        if captured:
            self.move(settled, "capture", "holds", "consumed", captured, outputs=delivered, **refs)
            key = (self.id, settled.date(), model)
            usage = book.usage.setdefault(key, [0, 0, 0])
            usage[0] += 1
            usage[1] += delivered
            usage[2] += captured
            if self.measured:
                book.captures.append((settled, model, delivered, captured))
        if released:
            self.move(settled, "release", "holds", "wallet", released, **refs)
            # The capture took the first lots of the hold; the rest goes back.
            for lot, take in reversed(taken):
                back = min(take, released)
                lot[4] += back
                released -= back
                if lot[2] == "purchase" and not any(pack is lot for pack in self.packs):
                    self.packs.insert(0, lot)  # emptied by this hold, refilled now
                if not released:
                    break
        hold[3], hold[4] = captured, credits - captured
        hold[5] = "captured" if captured else "released"
        hold[10] = settled


def simulate(size: int, seed: int = 7) -> tuple[Book, WalletHistory]:
    """A history in which the measured wallet has ``size`` entries (give or
    take the few of its last generation)."""
    rng = random.Random(seed)
    catalog = {model.id: model for model in load_catalog().models}
    models = list(MODEL_WEIGHTS)
    weights = [MODEL_WEIGHTS[m] for m in models]
    book = Book()
    clock = NOW - SPAN
    wallet = WalletHistory(book, "wal_bench_measured", clock, measured=True)
    neighbours = [
        WalletHistory(book, wallet_id, clock, measured=False) for wallet_id in NEIGHBOUR_IDS
    ]
    for history in (wallet, *neighbours):
        history.renew(clock)
    generations = size / ENTRIES_PER_GENERATION
    gap = (SPAN - timedelta(hours=1)).total_seconds() / (generations * (1 + NEIGHBOUR_SHARE))
    while wallet.entries < size:
        clock += timedelta(seconds=gap * rng.uniform(0.5, 1.5))
        history = rng.choice(neighbours) if rng.random() < NEIGHBOUR_SHARE else wallet
        assert history.subscription is not None
        if clock >= history.subscription[6]:
            # The clock's sweep, at the wallet's next activity.
            history.renew(clock)
        model = catalog[rng.choices(models, weights)[0]]
        requested = rng.randint(1, model.max_outputs)
        fate = rng.random()
        delivered = 0 if fate < 0.08 else rng.randint(1, requested) if fate < 0.12 else requested
        if history is wallet and wallet.entries >= size - STILL_RUNNING:
            wallet.generate(clock, None, model.id, model.credits, requested, 0)
            continue
        settled = clock + timedelta(seconds=min(gap * 0.4, rng.uniform(2, 40)))
        history.generate(clock, settled, model.id, model.credits, requested, delivered)
        clock = settled
    for history in (wallet, *neighbours):
        history.row[3], history.row[4] = history.available, history.held
    return book, wallet


# -- loading ----------------------------------------------------------------------


def _usage_rows(book: Book) -> Iterator[tuple[Any, ...]]:
    for (wallet_id, day, model), totals in book.usage.items():
        yield (wallet_id, day, model, *totals)


def _tables(book: Book) -> list[tuple[str, Sequence[str], Callable[[], Iterator[Sequence[Any]]]]]:
    return [
        ("wallets", WALLET_COLUMNS, lambda: iter(book.wallets)),
        ("lots", LOT_COLUMNS, lambda: iter(book.lots)),
        ("holds", HOLD_COLUMNS, lambda: iter(book.holds)),
        ("journal_entries", ENTRY_COLUMNS, lambda: iter(book.entries)),
        ("usage_daily", USAGE_COLUMNS, lambda: _usage_rows(book)),
    ]


def _sqlite_value(value: Any) -> Any:
    # How SQLAlchemy stores DateTime and Date on SQLite (plain text, UTC).
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return value


def load_sqlite(path: Path, book: Book) -> str:
    url = f"sqlite:///{path}"
    database = create_database(url)
    upgrade(database)
    database.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for table, columns, rows in _tables(book):
        marks = ", ".join("?" for _ in columns)
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            ([_sqlite_value(v) for v in row] for row in rows()),
        )
    conn.execute("COMMIT")
    # Readers should find the rows in the database file, not in a huge WAL.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return url


def load_postgres(server: postgres.PgServer, name: str, book: Book) -> str:
    url = postgres.create(server, name)
    database = create_database(url)
    upgrade(database)
    database.dispose()
    with psycopg.connect(postgres.libpq_url(url)) as conn:
        with conn.cursor() as cursor:
            for table, columns, rows in _tables(book):
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows():
                        copy.write_row(row)
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), %s)",
                (book.next_entry_id - 1,),
            )
        conn.commit()
        # What autovacuum would do after such a load: statistics and the
        # visibility map (which index-only scans need).
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return url


# -- measuring ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Connection], Any]
    # Held to the aim (ledger pages and usage reads); the others are reported.
    aimed: bool
    # Plans that sort every row of the range (rather than read the index in
    # order) are a failure here.
    ordered: bool


def cases(wallet_id: str, middle: JournalPosition) -> list[Case]:
    month, year = NOW - timedelta(days=30), NOW - timedelta(days=365)
    return [
        Case(
            "ledger: first page",
            lambda conn: queries.ledger_page(conn, wallet_id, limit=PAGE),
            aimed=True,
            ordered=True,
        ),
        Case(
            "ledger: deep page (cursor mid-history)",
            lambda conn: queries.ledger_page(conn, wallet_id, limit=PAGE, before=middle),
            aimed=True,
            ordered=True,
        ),
        Case(
            "ledger: first page of a neighbour (about N/2000 entries)",
            lambda conn: queries.ledger_page(conn, NEIGHBOUR_IDS[0], limit=PAGE),
            aimed=False,
            ordered=True,
        ),
        Case(
            "ledger: kind=grant (rare), first page",
            lambda conn: queries.ledger_page(conn, wallet_id, limit=PAGE, kind="grant"),
            aimed=False,
            ordered=True,
        ),
        Case(
            "usage by model, 30 days",
            lambda conn: queries.usage(conn, wallet_id, month, NOW, group_by="model"),
            aimed=True,
            ordered=False,
        ),
        Case(
            "usage by day, 365 days",
            lambda conn: queries.usage(conn, wallet_id, year, NOW, group_by="day"),
            aimed=True,
            ordered=False,
        ),
        Case(
            f"history (CSV): one batch of {HISTORY_BATCH:,}",
            lambda conn: queries.generation_history(
                conn, wallet_id, month, NOW, limit=HISTORY_BATCH
            ),
            aimed=False,
            ordered=True,
        ),
    ]


def baseline(entry_id: int) -> Callable[[Connection], Any]:
    return lambda conn: conn.execute(
        select(journal_entries).where(journal_entries.c.id == entry_id)
    ).one()


def _timed(conn: Connection, run: Callable[[Connection], Any]) -> float:
    started = time.perf_counter()
    run(conn)
    return (time.perf_counter() - started) * 1000


@dataclass
class Measurement:
    baseline_ms: float
    medians_ms: dict[str, float]
    plans: dict[str, list[str]]
    plan_problems: list[str]
    # The cases held to the aim.
    aimed: list[str]


def measure(url: str, book: Book, wallet: WalletHistory, runs: int) -> Measurement:
    own = [entry for entry in book.entries if entry[1] == wallet.id]
    middle_entry = own[len(own) // 2]
    middle = JournalPosition(middle_entry[0], middle_entry[-1])
    all_cases = cases(wallet.id, middle)
    base = baseline(middle_entry[0])
    database = create_database(url)
    try:
        check_answers(database, book, wallet, own)
        times: dict[str, list[float]] = {case.name: [] for case in all_cases}
        base_times: list[float] = []
        with database.read() as conn:
            for run in range(runs + 1):  # the first run warms caches up
                for case in all_cases:
                    base_ms, case_ms = _timed(conn, base), _timed(conn, case.run)
                    if run:
                        base_times.append(base_ms)
                        times[case.name].append(case_ms)
        plans, problems = explain(database, all_cases)
    finally:
        database.dispose()
    return Measurement(
        baseline_ms=statistics.median(base_times),
        medians_ms={name: statistics.median(values) for name, values in times.items()},
        plans=plans,
        plan_problems=problems,
        aimed=[case.name for case in all_cases if case.aimed],
    )


def check_answers(
    database: Database, book: Book, wallet: WalletHistory, own: list[tuple[Any, ...]]
) -> None:
    """The measured queries answer what the simulated history says."""
    month = NOW - timedelta(days=30)
    expected: dict[str, list[int]] = {}
    for when, model, outputs, credits in book.captures:
        if month <= when < NOW:
            total = expected.setdefault(model, [0, 0, 0])
            total[0] += 1
            total[1] += outputs
            total[2] += credits
    with database.read() as conn:
        page = queries.ledger_page(conn, wallet.id, limit=PAGE)
        got = queries.usage(conn, wallet.id, month, NOW, group_by="model")
        count = conn.execute(
            select(func.count())
            .select_from(journal_entries)
            .where(journal_entries.c.wallet_id == wallet.id)
        ).scalar_one()
    assert count == len(own), (count, len(own))
    assert [line.id for line in page.lines] == [entry[0] for entry in own[::-1][:PAGE]]
    assert page.lines[0].balance_after == wallet.available
    assert {row.key: [row.generations, row.outputs, row.credits] for row in got} == expected


def explain(database: Database, all_cases: list[Case]) -> tuple[dict[str, list[str]], list[str]]:
    """Each case's plans (one block per statement), and what is wrong with them:
    a table scan, or a sort of a whole range where an index gives the order."""
    plans: dict[str, list[str]] = {}
    problems: list[str] = []
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        statements.append((statement, parameters))

    # Listening before the connection is opened: a connection takes the
    # engine's listeners when it is made, not the ones added later.
    recording = [False]

    def maybe_record(*args: Any) -> None:
        if recording[0]:
            record(*args)

    event.listen(database.engine, "before_cursor_execute", maybe_record)
    try:
        with database.read() as conn:
            for case in all_cases:
                statements.clear()
                recording[0] = True
                try:
                    case.run(conn)
                finally:
                    recording[0] = False
                plans[case.name] = _plans_of(database, conn, case, list(statements), problems)
    finally:
        event.remove(database.engine, "before_cursor_execute", maybe_record)
    return plans, problems


def _plans_of(
    database: Database,
    conn: Connection,
    case: Case,
    statements: list[tuple[str, Any]],
    problems: list[str],
) -> list[str]:
    """The plan of each of ``case``'s statements, ``--`` between them; what
    is wrong with them goes into ``problems``."""
    blocks: list[str] = []
    for statement, parameters in statements:
        if database.is_sqlite:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = [str(row[3]) for row in rows]
            bad = [line for line in plan if line.startswith("SCAN ")]
            if case.ordered:
                bad += [line for line in plan if "FOR ORDER BY" in line]
        else:
            rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
            plan = [str(row[0]) for row in rows]
            bad = [line.strip() for line in plan if "Seq Scan" in line]
            if case.ordered:
                bad += [line.strip() for line in plan if _big_sort(line)]
        if blocks:
            blocks.append("--")
        blocks.extend(plan)
        problems.extend(f"{case.name}: {line}" for line in bad)
    return blocks


def _big_sort(line: str) -> bool:
    """A PostgreSQL sort (not an incremental one) of more rows than a page."""
    node = line.strip().removeprefix("->").strip()
    if not node.startswith("Sort  ("):
        return False
    estimate = node.split("rows=", 1)[1].split()[0]
    return int(estimate) > HISTORY_BATCH


# -- report -----------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    size: int
    build_s: float
    measurement: Measurement


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def report(results: list[Result], runs: int, versions: dict[str, str]) -> tuple[bool, str]:
    """The Markdown report, and whether every aim and plan check holds."""
    ok = True
    lines: list[str] = []

    def out(text: str = "") -> None:
        lines.append(text)

    out(
        f"One wallet with N journal entries ({len(NEIGHBOUR_IDS)} other wallets have N/10 between "
        "them, interleaved); "
        f"median of {runs} runs after a warm-up, server-side time of the functions of "
        "`plasmaart.ledger.queries`; in brackets the ratio to the baseline, a primary-key "
        "read of one journal entry measured in the same loop. "
        f"Aim: the ledger pages and the usage reads under {AIM_MS:.0f} ms at the largest size.\n"
    )
    out(
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + ".\n"
    )
    for backend in dict.fromkeys(result.backend for result in results):
        mine = [result for result in results if result.backend == backend]
        largest = mine[-1]
        names = list(largest.measurement.medians_ms)
        aimed = largest.measurement.aimed
        out(f"### {backend}\n")
        out("| query | " + " | ".join(f"{r.size:,} entries" for r in mine) + " | aim |")
        out("|---|" + "---:|" * len(mine) + "---|")
        out(
            "| baseline: `SELECT … WHERE id = ?` | "
            + " | ".join(_ms(r.measurement.baseline_ms) for r in mine)
            + " | |"
        )
        for name in names:
            cells = []
            for r in mine:
                median = r.measurement.medians_ms[name]
                cells.append(f"{_ms(median)} ({median / r.measurement.baseline_ms:,.0f}x)")
            verdict = ""
            if name in aimed:
                met = largest.measurement.medians_ms[name] < AIM_MS
                ok &= met
                verdict = f"{'✓' if met else '✗'} < {AIM_MS:.0f} ms"
            out(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
        out(
            "| build (generate + bulk insert) | "
            + " | ".join(f"{r.build_s:.0f} s" for r in mine)
            + " | |\n"
        )
        out(f"Plans at {largest.size:,} entries:\n")
        for name, plan in largest.measurement.plans.items():
            out(f"- {name}:")
            out("  ```")
            for line in plan:
                out(f"  {line}")
            out("  ```")
        problems = largest.measurement.plan_problems
        if problems:
            ok = False
            out("\n**Plans that scan or sort the whole range:**\n")
            for problem in problems:
                out(f"- {problem}")
        else:
            out("\nNo plan scans a table or sorts a whole range.")
        out()
    return ok, "\n".join(lines)


def summary_rows(results: list[Result]) -> list[docs.SummaryRow]:
    """Per database, the slowest of the reads held to the aim at the largest size."""
    rows = []
    for backend in dict.fromkeys(result.backend for result in results):
        largest = [result for result in results if result.backend == backend][-1]
        measured = largest.measurement
        slowest = max(measured.aimed, key=lambda name: measured.medians_ms[name])
        worst = measured.medians_ms[slowest]
        rows.append(
            docs.SummaryRow(
                f"ledger pages and usage, {backend}, {largest.size:,} entries (slowest: {slowest})",
                _ms(worst),
                f"{_ms(measured.baseline_ms)} (primary-key read)",
                _ms(worst),
                f"< {AIM_MS:.0f} ms",
                worst < AIM_MS,
            )
        )
    return rows


# -- main -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    made = cli.parser(__doc__, SECTION_HEADING)
    cli.counts_option(made, "--sizes", [10_000, 100_000, 1_000_000], "journal entries")
    cli.option(made, "--runs", int, 7, "timed runs of each query")
    made.add_argument("--backends", default="sqlite,postgres")
    args = made.parse_args(argv)
    backends = [backend.strip() for backend in args.backends.split(",")]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        made.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    results: list[Result] = []
    versions = {"Python": platform.python_version(), "SQLite": sqlite3.sqlite_version}
    with measuring("queries") as run, ExitStack() as stack:
        server: postgres.PgServer | None = None
        if "postgres" in backends:
            server = stack.enter_context(postgres.throwaway_server(run.workdir))
            versions["PostgreSQL"] = postgres.version(server)
        for size in args.sizes:
            results.extend(measure_size(run.workdir, server, size, backends, args.runs))
        stack.close()
        ok, markdown = report(results, args.runs, versions)
        print(f"{SECTION_HEADING}\n\n{markdown}")
        if args.write_docs:
            facts = run.facts(versions.get("PostgreSQL", "not used"))
            body = docs.section(
                SECTION_HEADING,
                "ledger_queries.py",
                command_line(),
                markdown,
                docs.machine_block(facts),
            )
            docs.publish(SECTION_HEADING, body, "ledger_queries.py", summary_rows(results))
    return 0 if ok else 1


def measure_size(
    workdir: Path, server: postgres.PgServer | None, size: int, backends: Sequence[str], runs: int
) -> list[Result]:
    """Build the history of ``size`` entries on each backend and measure it there."""
    results = []
    started = time.perf_counter()
    book, wallet = simulate(size)
    simulated = time.perf_counter() - started
    progress(
        f"[{size:,}] simulated {len(book.entries):,} entries "
        f"({wallet.entries:,} in the measured wallet) in {simulated:.0f} s"
    )
    for backend in backends:
        started = time.perf_counter()
        if backend == "sqlite":
            url = load_sqlite(workdir / f"ledger-{size}.db", book)
        else:
            assert server is not None
            url = load_postgres(server, f"ledger_{size}", book)
        built = simulated + time.perf_counter() - started
        progress(f"[{size:,}] {backend}: built in {built:.0f} s")
        results.append(Result(backend, size, built, measure(url, book, wallet, runs)))
        if backend == "sqlite":
            (workdir / f"ledger-{size}.db").unlink()
        else:
            assert server is not None
            postgres.drop(server, f"ledger_{size}")
    del book, wallet
    gc.collect()
    return results


if __name__ == "__main__":
    raise SystemExit(main())

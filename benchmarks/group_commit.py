"""Group commit on SQLite: ledger writes per second through ``Database.run_write``
with group commit on and off, beside raw sqlite3, from threads of one process.

What it measures, for each thread count (default 1, 8 and 64), each ``--runs``
times, the three sides in turn (the order rotating from run to run) so that
they see the same machine noise:

* PlasmaArt, group commit on: one ``Database`` (``create_database`` with its
  defaults, as ``serve`` builds it) and one ``LedgerService`` shared by the
  threads, each with its own funded wallet, looping for ``--seconds``: one
  ``run_write`` doing ``LedgerService.hold`` (8 credits), then one doing
  ``LedgerService.capture`` of that hold. A write that finds no batch running
  and none queued runs at once in its caller's thread, as a batch of one; the
  writes that arrive meanwhile queue for the writer thread, which runs them in
  one transaction, each in its own savepoint, and commits once.
* PlasmaArt, group commit off: the same, each ``run_write`` its own
  ``BEGIN IMMEDIATE`` transaction.
* Raw sqlite3: as many threads, each with its own ``sqlite3`` connection on
  another file with the same settings (WAL, ``synchronous=NORMAL``,
  ``busy_timeout``), each write one ``BEGIN IMMEDIATE`` transaction doing a
  guarded ``UPDATE`` of a balance and an ``INSERT`` into a journal, then
  ``COMMIT``: the least a ledger write can be, committed once per write.

The result is the median of writes per second of each side (a hold and its
capture are two writes), the ratios to raw sqlite3 and of on to off, with
group commit on the writes per COMMIT, and the process's CPU time per write
and CPUs used. Threads in one process share one GIL,
as the API server's request threads do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, event

from plasmaart.clock import SystemClock
from plasmaart.db.engine import Database, create_database
from plasmaart.ledger.service import LedgerService

# Run as a script from the repository root: the repository goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import baselines, cli, docs
from benchmarks.harness.ledger import HoldAndCapture, fund_wallets
from benchmarks.harness.session import Facts, command_line, measuring, progress

SECTION_HEADING = "## Group commit: ledger writes from threads of one process"

WARMUP_SECONDS = 0.3
# A thread that is not done this long after the deadline is stuck.
FINISH_GRACE = 120.0

SIDES = ("raw sqlite3", "group commit off", "group commit on")


@dataclass(frozen=True)
class Writes:
    writes: int
    seconds: float
    # CPU time of the whole process (every thread) while measuring.
    cpu_seconds: float
    commits: int | None = None

    @property
    def per_second(self) -> float:
        return self.writes / self.seconds

    @property
    def cpu_us_per_write(self) -> float:
        return self.cpu_seconds / self.writes * 1e6

    @property
    def cores_used(self) -> float:
        return self.cpu_seconds / self.seconds

    @property
    def writes_per_commit(self) -> float | None:
        return self.writes / self.commits if self.commits else None


# -- the sides' workers ---------------------------------------------------------


class Worker(ABC):
    """One thread's loop: ``step()`` does some writes and says how many."""

    @abstractmethod
    def step(self) -> int:
        """Do one round of writes; how many."""

    def close(self) -> None:  # noqa: B027 - a worker with nothing to release keeps this
        """Release what the worker holds (nothing, unless it says otherwise)."""


class LedgerWorker(Worker):
    """A hold, then its capture, each through ``run_write``."""

    def __init__(self, db: Database, ledger: LedgerService, wallet_id: str) -> None:
        self.db = db
        self.pair = HoldAndCapture(ledger, wallet_id)

    def step(self) -> int:
        hold_id = self.db.run_write(self.pair.hold)
        self.db.run_write(lambda conn: self.pair.capture(conn, hold_id))
        return 2


class RawWorker(Worker):
    """A guarded debit and a journal row, one transaction per write."""

    def __init__(self, path: Path, account_id: int) -> None:
        self.raw = baselines.RawWriter(path, account_id, threads=True)

    def step(self) -> int:
        self.raw.step()
        return 1

    def close(self) -> None:
        self.raw.close()


def run_threads(
    workers: Sequence[Worker], seconds: float, on_start: Callable[[], object] | None = None
) -> tuple[int, float, float]:
    """Warm every worker up, then run them all for ``seconds``; the writes
    done, the seconds they took and the process's CPU seconds meanwhile.
    ``on_start`` runs when every worker is warm and idle, just before the
    measured period."""
    start: list[float] = []
    cpu_start: list[float] = []
    done: list[tuple[int, float]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def begin() -> None:
        # Run by the last worker to arrive, before any is released.
        if on_start is not None:
            on_start()
        cpu_start.append(time.process_time())
        start.append(time.monotonic())

    ready = threading.Barrier(len(workers), action=begin)

    def loop(worker: Worker) -> None:
        try:
            warm_until = time.monotonic() + WARMUP_SECONDS
            while time.monotonic() < warm_until:
                worker.step()
            ready.wait(FINISH_GRACE)
            deadline = start[0] + seconds
            writes = 0
            last = time.monotonic()
            while last < deadline:
                writes += worker.step()
                last = time.monotonic()
        except threading.BrokenBarrierError:
            return  # another worker failed
        except BaseException as exc:
            with lock:
                failures.append(exc)
            ready.abort()
            return
        with lock:
            done.append((writes, last))

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WARMUP_SECONDS + seconds + 2 * FINISH_GRACE)
    cpu = time.process_time() - cpu_start[0] if cpu_start else 0.0
    if failures:
        raise RuntimeError(f"a worker failed: {failures[0]!r}") from failures[0]
    if any(thread.is_alive() for thread in threads) or len(done) != len(workers):
        raise RuntimeError("the workers did not finish in time")
    return sum(w for w, _ in done), max(last for _, last in done) - start[0], cpu


def measure_ledger(
    url: str, wallets: Sequence[str], *, group_commit: bool, seconds: float
) -> Writes:
    db = create_database(url, group_commit=group_commit)
    commits = [0]

    def on_commit(_conn: Connection) -> None:
        commits[0] += 1

    event.listen(db.engine, "commit", on_commit)
    try:
        ledger = LedgerService(SystemClock())
        workers = [LedgerWorker(db, ledger, wallet) for wallet in wallets]
        at_start: list[int] = []
        writes, elapsed, cpu = run_threads(
            workers, seconds, on_start=lambda: at_start.append(commits[0])
        )
        return Writes(writes, elapsed, cpu, commits[0] - at_start[0])
    finally:
        event.remove(db.engine, "commit", on_commit)
        db.dispose()


def measure_raw(path: Path, accounts: Sequence[int], seconds: float) -> Writes:
    workers = [RawWorker(path, account) for account in accounts]
    try:
        writes, elapsed, cpu = run_threads(workers, seconds)
    finally:
        for worker in workers:
            worker.close()
    return Writes(writes, elapsed, cpu)


# -- comparing -----------------------------------------------------------------


@dataclass
class Comparison:
    threads: int
    runs: dict[str, list[Writes]] = field(default_factory=lambda: {s: [] for s in SIDES})

    def median(self, side: str) -> float:
        return statistics.median(m.per_second for m in self.runs[side])

    def cpu(self, side: str) -> float:
        """Median CPU microseconds per write."""
        return statistics.median(m.cpu_us_per_write for m in self.runs[side])

    def cores(self, side: str) -> float:
        """Median CPU seconds per second the process got."""
        return statistics.median(m.cores_used for m in self.runs[side])

    @property
    def raw(self) -> float:
        return self.median("raw sqlite3")

    @property
    def off(self) -> float:
        return self.median("group commit off")

    @property
    def on(self) -> float:
        return self.median("group commit on")

    @property
    def writes_per_commit(self) -> float:
        return statistics.median(m.writes_per_commit or 0.0 for m in self.runs["group commit on"])


def measure(workdir: Path, threads: int, runs: int, seconds: float) -> Comparison:
    path = workdir / f"plasmaart-{threads}.db"
    url = f"sqlite:///{path}"
    wallets = fund_wallets(url, threads)
    raw_path = workdir / f"raw-{threads}.db"
    accounts = baselines.prepare_raw_sqlite(raw_path, threads)
    comparison = Comparison(threads)
    sides: dict[str, Callable[[], Writes]] = {
        "raw sqlite3": lambda: measure_raw(raw_path, accounts, seconds),
        "group commit off": lambda: measure_ledger(
            url, wallets, group_commit=False, seconds=seconds
        ),
        "group commit on": lambda: measure_ledger(url, wallets, group_commit=True, seconds=seconds),
    }
    for run in range(runs):
        # Rotate the order so that no side always goes first.
        order = SIDES[run % 3 :] + SIDES[: run % 3]
        for side in order:
            measured = sides[side]()
            comparison.runs[side].append(measured)
            extra = (
                f", {measured.writes_per_commit:.1f} writes per commit"
                if measured.writes_per_commit and side == "group commit on"
                else ""
            )
            progress(
                f"{threads} thread(s), run {run + 1}, {side}: "
                f"{measured.per_second:,.0f} writes/s, "
                f"{measured.cpu_us_per_write:,.0f} µs CPU per write{extra}"
            )
    return comparison


def results_table(comparisons: Sequence[Comparison]) -> str:
    head = [*("threads", *SIDES), "writes per commit (on)", "off / raw", "on / raw", "on / off"]
    rows = [
        [
            c.threads,
            *(f"{rate:,.0f}" for rate in (c.raw, c.off, c.on)),
            f"{c.writes_per_commit:.1f}",
            *(f"{ratio:.1%}" for ratio in (c.off / c.raw, c.on / c.raw)),
            f"{c.on / c.off:.2f} x",
        ]
        for c in comparisons
    ]
    return docs.markdown_table(head, ">" * len(head), rows)


def cpu_table(comparisons: Sequence[Comparison]) -> str:
    head = ["threads", *SIDES, "on / off", "CPUs used: off", "CPUs used: on"]
    rows = []
    for c in comparisons:
        raw, off, on = (c.cpu(side) for side in SIDES)
        cores = (c.cores(side) for side in SIDES[1:])
        rows.append(
            [
                c.threads,
                *(f"{cpu:,.0f} µs" for cpu in (raw, off, on)),
                f"{on / off:.2f}",
                *(f"{used:.2f}" for used in cores),
            ]
        )
    return docs.markdown_table(head, ">" * len(head), rows)


def runs_detail(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        for side in SIDES:
            figures = ", ".join(
                f"{m.per_second:,.0f} ({m.cpu_us_per_write:,.0f} µs)" for m in c.runs[side]
            )
            lines.append(f"{c.threads:>3} thread(s)  {side:<17} {figures}")
    return "\n".join(lines)


def render_section(
    comparisons: Sequence[Comparison],
    facts: Facts,
    command: str,
    args: argparse.Namespace,
) -> str:
    method = docs.prose(
        f"Each side ran {docs.plural(args.runs, 'time')} for {args.seconds:g} s per",
        "thread count, the three in turn; the table shows the medians in writes per",
        "second (a hold and its capture are two writes, as is each raw",
        "transaction one) and their ratios. Each thread has its own wallet (its own",
        "account on the raw side), so the threads contend only for SQLite's write",
        "lock, not for rows. With group commit on, a write that finds no batch",
        "running runs at once in its own thread; the writes that arrive meanwhile",
        "queue, and the writer thread runs them in one transaction, each in its own",
        "savepoint, and commits once: the writes per commit column is the median batch.",
    )
    cpu = docs.prose(
        "CPU time of the whole process (every thread) per write, medians, and the CPUs",
        "the process got while measuring (CPU seconds per second): on a busy machine the",
        "operating system shares the CPUs among threads, so a side with many runnable",
        "threads gets more of them than one writer thread does; the CPU per write does",
        "not depend on that share. On an idle machine both PlasmaArt sides are bound by",
        "one CPU (one interpreter lock), where the CPU per write decides.",
    )
    return docs.section(
        SECTION_HEADING,
        "group_commit.py",
        command,
        method,
        results_table(comparisons),
        cpu,
        cpu_table(comparisons),
        docs.runs_block(runs_detail(comparisons), "All runs, writes per second (CPU per write):"),
        docs.machine_block(facts),
    )


# -- main ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    made = cli.parser(__doc__, SECTION_HEADING)
    cli.add_timing(made, 2.0, 3, "measurement")
    cli.counts_option(made, "--threads", [1, 8, 64], "comma-separated thread counts")
    return made.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    comparisons: list[Comparison] = []
    with measuring("group") as run:
        for threads in args.threads:
            progress(f"{threads} thread(s)")
            comparisons.append(measure(run.workdir, threads, args.runs, args.seconds))
        print(results_table(comparisons))
        print()
        print(cpu_table(comparisons))
        print()
        print(runs_detail(comparisons))
        if args.write_docs:
            section = render_section(comparisons, run.facts(), command_line(), args)
            # A ratio of PlasmaArt to PlasmaArt: no row in the summary of aims.
            docs.publish(SECTION_HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

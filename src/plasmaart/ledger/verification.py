"""``ledger verify`` on a schedule, its results kept in ``ledger_checks``.

Every worker runs ``LedgerVerification.loop`` in a thread of its own (a long
check must not delay jobs or the clock). Once per ``interval_s`` across all
workers, one of them runs ``invariants.check_ledger`` on one snapshot of the
database and records the result (ok, the number of problems, the first of
them); ``/metrics`` exposes the newest row (docs/deployment.md#monitoring).
"Once per interval" holds across processes: a worker runs only while it
holds the verification's lock (an advisory lock on PostgreSQL, a file lock
beside the SQLite database, whose workers all share one machine) and only if
the newest recorded run started ``interval_s`` ago or more. Results older than
``KEEP`` are deleted as new ones are written.

``plasmaart ledger verify`` records its result the same way (``run_now``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import Database
from plasmaart.db.outage import Backoff
from plasmaart.ids import new_id
from plasmaart.ledger import checks_repository as repo
from plasmaart.ledger.invariants import check_ledger

log = logging.getLogger(__name__)
# How long results are kept.
KEEP = timedelta(days=30)
# The problems written into a result's summary (``ledger verify`` prints all).
SUMMARY_LINES = 20
SUMMARY_CHARS = 4000
# How often an idle loop looks whether a run is due, at most (another worker
# may have run it meanwhile, or the newest run may be a CLI's).
POLL_S = 60.0


@dataclass(frozen=True)
class CheckResult:
    started_at: datetime
    finished_at: datetime
    problems: list[str]
    recorded: bool

    @property
    def ok(self) -> bool:
        return not self.problems


def summarize(problems: list[str]) -> str:
    """What a result row keeps of the problems: the first ones, bounded."""
    if not problems:
        return "the books balance"
    lines = problems[:SUMMARY_LINES]
    if len(problems) > len(lines):
        lines.append(f"… and {len(problems) - len(lines)} more")
    return "\n".join(lines)[:SUMMARY_CHARS]


def default_checked_by(role: str) -> str:
    return f"{role} {socket.gethostname()}:{os.getpid()}"[:100]


class LedgerVerification:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        interval_s: float,
        checked_by: str,
        lock_dir: Path | None = None,
    ) -> None:
        self.db = db
        # Real time (the job clock): results are compared with Prometheus' time().
        self.clock = clock
        self.interval = timedelta(seconds=interval_s)
        self.checked_by = checked_by[:100]
        self._lock_file = self._sqlite_lock_file(db, lock_dir)

    @staticmethod
    def _sqlite_lock_file(db: Database, lock_dir: Path | None) -> Path | None:
        if not db.is_sqlite:
            return None
        database = Path(str(db.engine.url.database))
        folder = lock_dir or database.parent
        return folder / f"{database.name}.ledger-verify.lock"

    def check(self) -> CheckResult:
        """Run the check on one snapshot; record nothing."""
        started = self.clock.now()
        with self.db.snapshot() as conn:
            problems = check_ledger(conn)
        return CheckResult(started, self.clock.now(), problems, recorded=False)

    def run_now(self) -> CheckResult:
        """Run the check and record its result (``plasmaart ledger verify``)."""
        result = self.check()
        self.record(result)
        return CheckResult(result.started_at, result.finished_at, result.problems, recorded=True)

    def record(self, result: CheckResult) -> None:
        with self.db.write() as conn:
            repo.record(
                conn,
                check_id=new_id("lck"),
                started_at=result.started_at,
                finished_at=result.finished_at,
                ok=result.ok,
                problems=len(result.problems),
                summary=summarize(result.problems),
                checked_by=self.checked_by,
            )
            repo.prune(conn, result.finished_at - KEEP)

    def due_at(self) -> datetime | None:
        """When the next run is due (None: never run, so now)."""
        with self.db.read() as conn:
            started = repo.latest_started_at(conn)
        return None if started is None else as_utc(started) + self.interval

    def run_if_due(self) -> CheckResult | None:
        """Run and record the check if no process ran it within the interval
        and none is running it now; None when it was not this one's turn."""
        with self._exclusive() as mine:
            if not mine:
                return None
            due = self.due_at()
            if due is not None and self.clock.now() < due:
                return None
            # A large journal may take longer than PLASMAART_DB_TIMEOUT_S.
            with self.db.deadline(None):
                result = self.run_now()
        if result.ok:
            log.info("scheduled ledger verify: the books balance")
        else:
            log.error(
                "scheduled ledger verify: %d problems, the first: %s",
                len(result.problems),
                result.problems[0],
            )
        return result

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        if self._lock_file is not None:
            self._lock_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_file, "a+b") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        with self.db.engine.connect() as conn:
            got = repo.try_lock(conn)
            conn.commit()  # the lock is the session's: it outlives this transaction
            try:
                yield got
            finally:
                if got:
                    repo.unlock(conn)
                    conn.commit()

    def loop(self, stop: threading.Event) -> None:
        """Run the check whenever it is due, until ``stop`` is set."""
        if self.interval <= timedelta(0):
            return
        backoff = Backoff("scheduled ledger verification", logger=log)
        while not stop.is_set():
            try:
                self.run_if_due()
                due = self.due_at()
                wait = (
                    self.interval.total_seconds()
                    if due is None
                    else (due - self.clock.now()).total_seconds()
                )
            except Exception as exc:
                backoff.failed(exc)  # an outage is logged once, a bug each time
                wait = POLL_S
            else:
                backoff.succeeded()
            stop.wait(min(max(wait, 0.2), POLL_S))

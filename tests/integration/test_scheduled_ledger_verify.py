"""``ledger verify`` on a schedule (ledger/verification.py), on SQLite and
PostgreSQL: once per interval whichever of several workers gets there, its
result in ``ledger_checks`` and on /metrics, a corrupted ledger reported as
such, the check on one snapshot while the platform writes, the command
line's runs recorded too."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, select, update
from typer.testing import CliRunner

from plasmaart.cli import app
from plasmaart.clock import ManualClock, as_utc
from plasmaart.db.engine import create_database
from plasmaart.db.tables import ledger_checks, wallets
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.verification import KEEP, SUMMARY_LINES, LedgerVerification, summarize
from plasmaart.platform import Platform
from tests.support.accounts import make_user
from tests.support.platforms import api_client, running_platform, settings_for
from tests.support.processes import WorkerProcess, child_env

INTERVAL = timedelta(hours=1)


def verification(platform: Platform, name: str) -> LedgerVerification:
    return LedgerVerification(
        platform.db,
        platform.job_clock,
        interval_s=INTERVAL.total_seconds(),
        checked_by=name,
    )


def checks(platform: Platform) -> list[Any]:
    with platform.db.read() as conn:
        return list(conn.execute(select(ledger_checks).order_by(ledger_checks.c.started_at)))


@pytest.fixture
def second(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    """Another process's platform on the same database and clock."""
    with running_platform(settings_for(database_url, tmp_path / "var2"), clock) as built:
        yield built


def test_once_per_interval_across_two_workers(
    platform: Platform, second: Platform, clock: ManualClock
) -> None:
    make_user(platform, "ann@example.com", credits=10)
    runners = [verification(platform, "worker a"), verification(second, "worker b")]

    def race() -> list[bool]:
        """Both workers look at the same moment; who ran the check."""
        ran = [False, False]
        barrier = threading.Barrier(2)

        def look(index: int) -> None:
            barrier.wait(timeout=10)
            ran[index] = runners[index].run_if_due() is not None

        threads = [threading.Thread(target=look, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return ran

    assert sum(race()) == 1
    assert len(checks(platform)) == 1
    clock.advance(INTERVAL - timedelta(seconds=1))
    assert race() == [False, False]
    clock.advance(timedelta(seconds=1))
    assert sum(race()) == 1
    rows = checks(platform)
    assert len(rows) == 2
    assert all(row.ok and row.problems == 0 for row in rows)
    assert as_utc(rows[1].started_at) - as_utc(rows[0].started_at) == INTERVAL
    assert {row.checked_by for row in rows} <= {"worker a", "worker b"}
    assert rows[0].summary == "the books balance"


def test_a_held_lock_means_another_worker_is_on_it(platform: Platform, second: Platform) -> None:
    """While one worker runs the check (holding the lock), another does not
    start a second one, even though no result is recorded yet."""
    first, other = verification(platform, "a"), verification(second, "b")
    with first._exclusive() as mine:
        assert mine
        assert other.run_if_due() is None
    assert other.run_if_due() is not None
    assert len(checks(platform)) == 1


def test_a_corrupted_ledger_is_reported(platform: Platform, clock: ManualClock) -> None:
    ann = make_user(platform, "ann@example.com", credits=10)
    runner = verification(platform, "worker a")
    assert runner.run_if_due() is not None
    # A bad row written behind the ledger's back: credits out of nowhere.
    with platform.db.write() as conn:
        conn.execute(update(wallets).where(wallets.c.id == ann.wallet_id).values(available=15))
    clock.advance(INTERVAL)
    result = runner.run_if_due()
    assert result is not None
    assert not result.ok
    latest = checks(platform)[-1]
    assert (latest.ok, latest.problems) == (False, len(result.problems))
    assert latest.problems == 2  # available disagrees with the entries and with the lots
    assert f"wallet {ann.wallet_id}: available 15, entries 10" in latest.summary
    with api_client(platform) as client:
        text = client.get("/metrics").text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["plasmaart_ledger_verify_ok"] == 0
    assert samples["plasmaart_ledger_verify_problems"] == 2
    assert samples["plasmaart_ledger_verify_last_run_timestamp_seconds"] == (
        as_utc(latest.finished_at).timestamp()
    )
    assert samples["plasmaart_ledger_verify_interval_seconds"] == 3600


def test_old_results_are_pruned(platform: Platform, clock: ManualClock) -> None:
    runner = verification(platform, "worker a")
    runner.run_now()
    clock.advance(KEEP - timedelta(seconds=1))
    runner.run_now()
    assert len(checks(platform)) == 2
    clock.advance(timedelta(seconds=2))
    runner.run_now()
    assert len(checks(platform)) == 2  # the first is over 30 days old now


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_check_reads_one_snapshot(platform: Platform) -> None:
    """A grant committed while the check reads (between its statements) is
    not half seen: on PostgreSQL at READ COMMITTED, as ``db.read()`` is, the
    wallets would be read with the grant and the journal without it."""
    ann = make_user(platform, "ann@example.com", credits=10)
    armed: list[str] = []

    def grant_between_statements(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if armed and "FROM journal_entries" in statement:
            key = armed.pop()
            with platform.db.write() as other:
                platform.ledger.grant(other, ann.wallet_id, 5, source="promo", idempotency_key=key)

    event.listen(platform.db.engine, "after_cursor_execute", grant_between_statements)
    try:
        armed.append("during-read")
        with platform.db.read() as conn:
            torn = check_ledger(conn)
        assert not armed
        assert torn != []  # the reason for the snapshot
        armed.append("during-check")
        result = verification(platform, "a").check()
        assert not armed
        assert result.problems == []
    finally:
        event.remove(platform.db.engine, "after_cursor_execute", grant_between_statements)
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


@pytest.fixture
def keep_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_command_line_records_its_result(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_logging: None
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PLASMAART_VAR_DIR", str(tmp_path / "var"))
    result = CliRunner().invoke(app, ["ledger", "verify"])
    assert (result.exit_code, result.output.strip()) == (0, "the books balance")
    db = create_database(database_url)
    try:
        with db.read() as conn:
            rows = list(conn.execute(select(ledger_checks)))
    finally:
        db.dispose()
    assert len(rows) == 1
    assert rows[0].ok
    assert rows[0].checked_by.startswith("cli ")


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_worker_processes_run_it_on_schedule(database_url: str, tmp_path: Path) -> None:
    """Two ``plasmaart worker`` processes with a 1-second interval: runs
    follow each other at least a second apart, whoever ran them."""
    env = child_env(database_url, tmp_path / "var")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    env["PLASMAART_LEDGER_VERIFY_INTERVAL_S"] = "1"
    workers = [WorkerProcess(f"worker{n}", env, tmp_path, concurrency=1) for n in range(2)]
    db = create_database(database_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            with db.read() as conn:
                found = conn.execute(select(func.count()).select_from(ledger_checks)).scalar_one()
            if found >= 3:
                break
            assert time.monotonic() < deadline, [w.log() for w in workers]
            time.sleep(0.2)
        with db.read() as conn:
            rows = list(conn.execute(select(ledger_checks).order_by(ledger_checks.c.started_at)))
    finally:
        for worker in workers:
            worker.close()
        db.dispose()
    assert all(row.ok for row in rows)
    starts = [as_utc(row.started_at) for row in rows]
    assert all(b - a >= timedelta(seconds=1) for a, b in itertools.pairwise(starts))
    assert all(row.checked_by.startswith("worker ") for row in rows)


def test_a_long_list_of_problems_is_kept_bounded() -> None:
    problems = [f"wallet w{index}: balance off by {index}" for index in range(SUMMARY_LINES + 7)]
    kept = summarize(problems).splitlines()
    assert kept[:SUMMARY_LINES] == problems[:SUMMARY_LINES]
    assert kept[-1] == "… and 7 more"
    assert summarize([]) == "the books balance"


def test_an_interval_of_zero_never_runs(platform: Platform) -> None:
    never = LedgerVerification(platform.db, platform.job_clock, interval_s=0, checked_by="off")
    stop = threading.Event()  # never set: the loop must return by itself
    finished = threading.Thread(target=never.loop, args=(stop,), daemon=True)
    finished.start()
    finished.join(timeout=5)
    assert not finished.is_alive()
    assert checks(platform) == []


def test_a_failing_run_is_logged_and_the_loop_goes_on(
    platform: Platform, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scheduled = verification(platform, "flaky")
    calls: list[int] = []
    stop = threading.Event()

    def run_if_due() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        stop.set()

    monkeypatch.setattr(scheduled, "run_if_due", run_if_due)
    # The wait after a failure is cut short by the stop flag's own wait.
    monkeypatch.setattr("plasmaart.ledger.verification.POLL_S", 0.01)
    with caplog.at_level(logging.ERROR, logger="plasmaart.ledger.verification"):
        scheduled.loop(stop)
    assert calls == [0, 1]
    assert "scheduled ledger verification failed" in caplog.text

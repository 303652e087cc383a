"""The group-commit writer on its own: batch limit, stopping, a dead or slow
writer, writes from inside a write, and the setting."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.queues import Queue
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text

from plasmaart.config import load_settings
from plasmaart.db.engine import Database, after_commit, create_database
from plasmaart.db.group_commit import GroupCommitError, GroupCommitWriter
from plasmaart.logs import request_id

WAIT_S = 30.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = create_database(f"sqlite:///{tmp_path / 'group.db'}", group_commit_batch=4)
    with database.write() as conn:
        conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
    try:
        yield database
    finally:
        database.dispose()


def writer_of(db: Database) -> GroupCommitWriter:
    writer = db.group_commit
    assert writer is not None
    return writer


def insert(row_id: int) -> Callable[[Connection], int]:
    def fn(conn: Connection) -> int:
        conn.execute(text("INSERT INTO probe (id) VALUES (:id)"), {"id": row_id})
        return row_id

    return fn


def rows(db: Database) -> list[int]:
    with db.read() as conn:
        return list(conn.execute(text("SELECT id FROM probe ORDER BY id")).scalars())


def hold_the_batch_slot(
    db: Database, pool: ThreadPoolExecutor
) -> tuple[threading.Event, Future[int]]:
    """A write that runs (alone, in a thread of ``pool``) until the returned
    gate opens: meanwhile no other batch runs, writes queue for the writer."""
    gate = threading.Event()
    entered = threading.Event()

    def held(conn: Connection) -> int:
        entered.set()
        assert gate.wait(WAIT_S)
        return insert(0)(conn)

    future = pool.submit(db.run_write, held)
    assert entered.wait(WAIT_S)
    return gate, future


def wait_queued(writer: GroupCommitWriter, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while writer.queued() < count:
        assert time.monotonic() < deadline, "the writes never queued"
        time.sleep(0.005)


def test_a_batch_takes_at_most_the_limit(db: Database) -> None:
    writer = writer_of(db)
    assert writer.batch_limit == 4
    begins: Counter[str] = Counter()

    def on_begin(_conn: Connection) -> None:
        begins["begin"] += 1

    event.listen(db.engine, "begin", on_begin)
    with ThreadPoolExecutor(11) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        futures = [pool.submit(db.run_write, insert(n)) for n in range(1, 11)]
        wait_queued(writer, 10)
        gate.set()
        results = [future.result(timeout=WAIT_S) for future in [held, *futures]]
    event.remove(db.engine, "begin", on_begin)
    assert results == list(range(11))
    assert rows(db) == list(range(11))
    # The held write, then 10 queued writes in batches of 4, 4 and 2.
    assert begins["begin"] == 4


def test_a_write_alone_runs_in_its_callers_thread(db: Database) -> None:
    writer = writer_of(db)
    ran_in: list[str] = []

    def noting(conn: Connection) -> int:
        ran_in.append(threading.current_thread().name)
        return insert(1)(conn)

    assert db.run_write(noting) == 1
    # No other write was running or queued: no hand-off to a writer thread.
    assert ran_in == [threading.current_thread().name]
    assert not writer.running
    assert rows(db) == [1]


def test_the_writer_starts_with_the_first_queued_write_and_stops_with_dispose(
    db: Database,
) -> None:
    writer = writer_of(db)
    ran_in: list[str] = []

    def noting(conn: Connection) -> int:
        ran_in.append(threading.current_thread().name)
        return insert(1)(conn)

    with ThreadPoolExecutor(2) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        queued = pool.submit(db.run_write, noting)
        wait_queued(writer, 1)
        assert writer.running
        gate.set()
        assert (held.result(timeout=WAIT_S), queued.result(timeout=WAIT_S)) == (0, 1)
    assert ran_in == ["plasmaart-db-writer"]
    threads = [t for t in threading.enumerate() if t.name == "plasmaart-db-writer"]
    assert threads
    # Batches share one connection, kept between them and given back when
    # the writer stops (which is what dispose() does first).
    assert db.engine.pool.checkedout() == 1
    writer.close()
    assert not writer.running
    assert db.engine.pool.checkedout() == 0
    db.dispose()
    assert not any(t.is_alive() for t in threads)
    # Writes after dispose work as before.
    assert db.run_write(insert(2)) == 2
    assert rows(db) == [0, 1, 2]


def test_dispose_answers_the_writes_already_queued(db: Database) -> None:
    writer = writer_of(db)
    with ThreadPoolExecutor(4) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        futures = [pool.submit(db.run_write, insert(n)) for n in (1, 2)]
        wait_queued(writer, 2)
        closing = threading.Thread(target=db.dispose)
        closing.start()
        gate.set()
        closing.join(WAIT_S)
        assert not closing.is_alive()
        assert [f.result(timeout=WAIT_S) for f in [held, *futures]] == [0, 1, 2]
    assert not writer.running
    assert rows(db) == [0, 1, 2]


def test_a_dead_writer_fails_its_callers_instead_of_hanging(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_of(db)
    monkeypatch.setattr(writer, "_poll_s", 0.05)
    # A writer thread that ends without running anything.
    monkeypatch.setattr(writer, "_loop", lambda: None)
    with ThreadPoolExecutor(1) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        started = time.monotonic()
        with pytest.raises(GroupCommitError, match="nothing was written"):
            db.run_write(insert(1))
        assert time.monotonic() - started < WAIT_S
        assert writer.queued() == 0
        monkeypatch.undo()
        gate.set()
        assert held.result(timeout=WAIT_S) == 0
    # The next writes work (with a new writer when they queue); the failed
    # one never runs.
    assert db.run_write(insert(2)) == 2
    assert rows(db) == [0, 2]


def test_a_fault_of_the_writer_answers_everyone_waiting(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_of(db)

    def broken(_batch: object) -> None:
        raise RuntimeError("a bug in the writer")

    with ThreadPoolExecutor(1) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        # The held write is already running: only the writer's batches break.
        monkeypatch.setattr(writer, "_run_batch", broken)
        with ThreadPoolExecutor(2) as callers:
            futures = [callers.submit(db.run_write, insert(n)) for n in (1, 2)]
            wait_queued(writer, 2)
            gate.set()
            for future in futures:
                with pytest.raises(GroupCommitError, match="a bug in the writer"):
                    future.result(timeout=WAIT_S)
        assert held.result(timeout=WAIT_S) == 0
    monkeypatch.undo()
    assert db.run_write(insert(3)) == 3
    assert rows(db) == [0, 3]


def test_a_write_not_started_in_time_is_never_run(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_of(db)
    with ThreadPoolExecutor(2) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        # Short only for the write below (the held one's deadline is set).
        monkeypatch.setattr(writer, "_poll_s", 0.05)
        monkeypatch.setattr(writer, "_timeout_s", 0.3)
        with pytest.raises(GroupCommitError, match="not started and nothing was written"):
            db.run_write(insert(1))
        gate.set()
        assert held.result(timeout=WAIT_S) == 0
    assert db.run_write(insert(2)) == 2
    assert rows(db) == [0, 2]


def test_a_write_running_too_long_says_its_outcome_is_unknown(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_of(db)
    slow_gate = threading.Event()
    slow_entered = threading.Event()

    def slow(conn: Connection) -> int:
        slow_entered.set()
        assert slow_gate.wait(WAIT_S)
        return insert(1)(conn)

    with ThreadPoolExecutor(2) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        monkeypatch.setattr(writer, "_poll_s", 0.05)
        monkeypatch.setattr(writer, "_timeout_s", 3.0)
        waiting = pool.submit(db.run_write, slow)
        wait_queued(writer, 1)
        gate.set()
        # The writer runs it now; its caller gives up before it ends.
        assert slow_entered.wait(WAIT_S)
        with pytest.raises(GroupCommitError, match="outcome is unknown"):
            waiting.result(timeout=WAIT_S)
        slow_gate.set()
        assert held.result(timeout=WAIT_S) == 0
    monkeypatch.undo()
    # It did commit in the end: its caller was not told it had not.
    assert db.run_write(insert(2)) == 2
    assert rows(db) == [0, 1, 2]


def test_a_write_alone_that_fails_writes_nothing(db: Database) -> None:
    ran: list[str] = []

    def failing(conn: Connection) -> None:
        insert(1)(conn)
        after_commit(conn, lambda: ran.append("failing"))
        raise KeyError("no")

    with pytest.raises(KeyError):
        db.run_write(failing)

    def fine(conn: Connection) -> int:
        after_commit(conn, lambda: ran.append("fine"))
        return insert(2)(conn)

    assert db.run_write(fine) == 2
    assert ran == ["fine"]
    assert rows(db) == [2]


def test_savepoints_a_write_leaves_open_end_with_it(db: Database) -> None:
    writer = writer_of(db)

    def leaves_one_open(row_id: int, fail: bool) -> Callable[[Connection], int]:
        def fn(conn: Connection) -> int:
            conn.begin_nested()
            insert(row_id)(conn)
            if fail:
                raise ValueError(row_id)
            return row_id

        return fn

    with ThreadPoolExecutor(4) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        futures = [
            pool.submit(db.run_write, fn)
            for fn in (leaves_one_open(1, False), leaves_one_open(2, True), insert(3))
        ]
        wait_queued(writer, 3)
        gate.set()
        assert held.result(timeout=WAIT_S) == 0
        assert futures[0].result(timeout=WAIT_S) == 1
        with pytest.raises(ValueError, match="2"):
            futures[1].result(timeout=WAIT_S)
        assert futures[2].result(timeout=WAIT_S) == 3
    assert rows(db) == [0, 1, 3]


def test_writes_and_their_callbacks_see_the_callers_context(db: Database) -> None:
    writer = writer_of(db)
    seen: list[tuple[str, str | None]] = []

    def noting(row_id: int) -> Callable[[Connection], int]:
        def fn(conn: Connection) -> int:
            seen.append(("write", request_id.get()))
            after_commit(conn, lambda: seen.append(("callback", request_id.get())))
            return insert(row_id)(conn)

        return fn

    def as_request(name: str, row_id: int) -> int:
        token = request_id.set(name)
        try:
            return db.run_write(noting(row_id))
        finally:
            request_id.reset(token)

    # Alone in its batch, then two in one batch.
    assert as_request("req-alone", 1) == 1
    with ThreadPoolExecutor(3) as pool:
        gate, held = hold_the_batch_slot(db, pool)
        futures = [pool.submit(as_request, f"req-{n}", n) for n in (2, 3)]
        wait_queued(writer, 2)
        gate.set()
        assert [f.result(timeout=WAIT_S) for f in [held, *futures]] == [0, 2, 3]
    assert seen[:2] == [("write", "req-alone"), ("callback", "req-alone")]
    assert sorted(seen[2:]) == [
        ("callback", "req-2"),
        ("callback", "req-3"),
        ("write", "req-2"),
        ("write", "req-3"),
    ]
    assert request_id.get() is None


def _write_in_child(db: Database, results: Queue[str]) -> None:
    # What a forked process does with an inherited engine: new connections.
    db.engine.dispose(close=False)
    writer = writer_of(db)
    try:
        # SQLite handles must not cross a fork: not the writer's either.
        results.put(f"inherited connection: {writer._conn is not None}")
        results.put(f"wrote {db.run_write(insert(5))}")
    except BaseException as exc:
        results.put(f"failed: {exc!r}")


def test_a_forked_process_starts_its_writes_afresh(db: Database) -> None:
    writer = writer_of(db)
    assert db.run_write(insert(1)) == 1
    assert writer._conn is not None  # kept between batches
    context = multiprocessing.get_context("fork")
    results: Queue[str] = context.Queue()
    child = context.Process(target=_write_in_child, args=(db, results))
    child.start()
    try:
        assert results.get(timeout=WAIT_S) == "inherited connection: False"
        assert results.get(timeout=WAIT_S) == "wrote 5"
    finally:
        child.join(WAIT_S)
    assert child.exitcode == 0
    assert rows(db) == [1, 5]
    assert db.run_write(insert(6)) == 6


def test_run_write_inside_a_write_is_refused(db: Database) -> None:
    def nested(conn: Connection) -> int:
        insert(1)(conn)
        return db.run_write(insert(2))

    with pytest.raises(RuntimeError, match="use the connection it got"):
        db.run_write(nested)
    assert rows(db) == []


def test_the_batch_limit_is_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        create_database(f"sqlite:///{tmp_path / 'x.db'}", group_commit_batch=0)


def test_group_commit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLASMAART_GROUP_COMMIT", raising=False)
    assert load_settings().group_commit is True
    monkeypatch.setenv("PLASMAART_GROUP_COMMIT", "false")
    assert load_settings().group_commit is False


def test_postgresql_has_no_writer() -> None:
    # Building a PostgreSQL engine connects to nothing.
    database = create_database("postgresql://user@127.0.0.1:1/none")
    try:
        assert database.group_commit is None
    finally:
        database.dispose()

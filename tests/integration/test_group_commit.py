"""Group commit: concurrent ``run_write`` calls on SQLite share one transaction,
each still all-or-nothing; on PostgreSQL (and with the setting off) each call
is its own transaction.

On SQLite a test makes its batch certain: a first write runs (alone, in its
caller's thread) and waits on a gate inside its function while the others
queue, since one batch runs at a time; then the gate opens and the writer
thread runs the queued writes as one batch.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import IntegrityError, OperationalError

from plasmaart.bootstrap import bootstrap
from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.engine import Database, after_commit, create_database
from plasmaart.ledger.errors import InsufficientCredits
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.service import LedgerService

WAIT_S = 30.0


# -- helpers -------------------------------------------------------------------


def create_probe_tables(db: Database) -> None:
    with db.write() as conn:
        conn.execute(
            text(
                "CREATE TABLE gc_probe (id INTEGER PRIMARY KEY, label VARCHAR(200) NOT NULL UNIQUE)"
            )
        )
        conn.execute(text("CREATE TABLE gc_parent (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE gc_child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL"
                " REFERENCES gc_parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )


def insert(conn: Connection, row_id: int, label: str) -> None:
    conn.execute(
        text("INSERT INTO gc_probe (id, label) VALUES (:id, :label)"),
        {"id": row_id, "label": label},
    )


def labels(db: Database) -> set[str]:
    with db.read() as conn:
        return set(conn.execute(text("SELECT label FROM gc_probe")).scalars())


@contextmanager
def count_transactions(db: Database) -> Iterator[Counter[str]]:
    """Transactions begun and committed on ``db``'s engine meanwhile."""
    seen: Counter[str] = Counter()

    def on_begin(_conn: Connection) -> None:
        seen["begin"] += 1

    def on_commit(_conn: Connection) -> None:
        seen["commit"] += 1

    event.listen(db.engine, "begin", on_begin)
    event.listen(db.engine, "commit", on_commit)
    try:
        yield seen
    finally:
        event.remove(db.engine, "begin", on_begin)
        event.remove(db.engine, "commit", on_commit)


def outcome(future: Future[Any]) -> Any:
    """The result of ``future``, or the exception it raised."""
    try:
        return future.result(timeout=WAIT_S)
    except Exception as exc:
        return exc


def run_together(db: Database, fns: Sequence[Callable[[Connection], Any]]) -> list[Any]:
    """Run every function through ``db.run_write`` from its own thread, at
    once; each one's result or exception, in order.

    With group commit, all of them go in one batch: a first write (row 0,
    "gate") keeps the batch slot until they are all queued.
    """
    writer = db.group_commit
    with ThreadPoolExecutor(len(fns) + 1) as pool:
        if writer is None:
            start = threading.Barrier(len(fns))

            def together(fn: Callable[[Connection], Any]) -> Any:
                start.wait(WAIT_S)
                return db.run_write(fn)

            return [outcome(f) for f in [pool.submit(together, fn) for fn in fns]]
        gate = threading.Event()
        entered = threading.Event()

        def hold_the_batch_slot(conn: Connection) -> None:
            entered.set()
            assert gate.wait(WAIT_S)
            insert(conn, 0, "gate")

        held = pool.submit(db.run_write, hold_the_batch_slot)
        assert entered.wait(WAIT_S)
        futures = [pool.submit(db.run_write, fn) for fn in fns]
        deadline = time.monotonic() + WAIT_S
        while writer.queued() < len(fns):
            assert time.monotonic() < deadline, "the writes never queued"
            time.sleep(0.005)
        gate.set()
        assert outcome(held) is None
        return [outcome(f) for f in futures]


def writes_in_one_batch(db: Database) -> bool:
    return db.group_commit is not None


# -- tests ----------------------------------------------------------------------


def test_concurrent_writes_all_commit_in_fewer_transactions(db: Database) -> None:
    create_probe_tables(db)
    calls = 24

    def write(n: int) -> Callable[[Connection], str]:
        def fn(conn: Connection) -> str:
            insert(conn, n, f"row {n}")
            return f"wrote {n}"

        return fn

    with count_transactions(db) as seen:
        results = run_together(db, [write(n) for n in range(1, calls + 1)])

    assert results == [f"wrote {n}" for n in range(1, calls + 1)]
    assert labels(db) - {"gate"} == {f"row {n}" for n in range(1, calls + 1)}
    if writes_in_one_batch(db):
        # The write holding the writer, then one batch of all the others.
        assert seen == {"begin": 2, "commit": 2}
    else:
        assert seen == {"begin": calls, "commit": calls}


def test_a_failing_write_rolls_back_alone(db: Database) -> None:
    create_probe_tables(db)
    with db.write() as conn:
        insert(conn, 99, "taken")
    ran: Counter[str] = Counter()

    def write(
        row_id: int, label: str, error: Exception | None = None
    ) -> Callable[[Connection], str]:
        def fn(conn: Connection) -> str:
            insert(conn, row_id, label)
            after_commit(conn, lambda: ran.update([label]))
            if error is not None:
                raise error
            return label

        return fn

    with count_transactions(db) as seen:
        results = run_together(
            db,
            [
                write(1, "first"),
                write(2, "refused", ValueError("no")),
                write(3, "taken"),  # IntegrityError: the label is taken
                write(4, "last"),
            ],
        )

    assert results[0] == "first"
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], IntegrityError)
    assert results[3] == "last"
    assert labels(db) - {"gate"} == {"first", "last", "taken"}
    with db.read() as conn:
        kept = conn.execute(text("SELECT id FROM gc_probe WHERE id > 0 ORDER BY id"))
        assert kept.scalars().all() == [1, 4, 99]
    # Only the committed writes' callbacks ran, each once, before their
    # callers got their answer.
    assert ran == {"first": 1, "last": 1}
    assert seen["begin"] == (2 if writes_in_one_batch(db) else 4)


def test_a_failed_commit_fails_the_whole_batch(db: Database) -> None:
    create_probe_tables(db)
    ran: Counter[str] = Counter()

    def write(row_id: int) -> Callable[[Connection], int]:
        def fn(conn: Connection) -> int:
            insert(conn, row_id, f"row {row_id}")
            after_commit(conn, lambda: ran.update([row_id]))
            return row_id

        return fn

    def orphan(conn: Connection) -> int:
        # A deferred foreign key: the statement passes, the COMMIT fails.
        conn.execute(text("INSERT INTO gc_child (id, parent_id) VALUES (1, 999)"))
        after_commit(conn, lambda: ran.update(["orphan"]))
        return 0

    results = run_together(db, [write(1), orphan, write(2)])

    if writes_in_one_batch(db):
        assert all(isinstance(result, IntegrityError) for result in results)
        assert results[0] is results[1] is results[2]
        assert labels(db) == {"gate"}
        assert ran == {}
    else:
        assert (results[0], results[2]) == (1, 2)
        assert isinstance(results[1], IntegrityError)
        assert labels(db) == {"row 1", "row 2"}
        assert ran == {1: 1, 2: 1}
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM gc_child")).scalar_one() == 0
    # The writer goes on.
    assert db.run_write(write(3)) == 3
    assert "row 3" in labels(db)


def test_a_write_using_savepoints_of_its_own(db: Database) -> None:
    create_probe_tables(db)

    def with_savepoints(conn: Connection) -> str:
        insert(conn, 1, "kept")
        try:
            with conn.begin_nested():
                insert(conn, 2, "undone")
                raise ValueError("undo this part")
        except ValueError:
            pass
        with conn.begin_nested():
            insert(conn, 3, "nested and kept")
        return "done"

    def failing_with_savepoints(conn: Connection) -> None:
        with conn.begin_nested():
            insert(conn, 4, "released, then rolled back with its write")
        raise LookupError("the whole write fails")

    def plain(conn: Connection) -> str:
        insert(conn, 5, "plain")
        return "plain"

    results = run_together(db, [with_savepoints, failing_with_savepoints, plain])

    assert results[0] == "done"
    assert isinstance(results[1], LookupError)
    assert results[2] == "plain"
    assert labels(db) - {"gate"} == {"kept", "nested and kept", "plain"}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_write_that_ends_the_transaction_fails_alone_and_the_others_run_again(
    db: Database,
) -> None:
    create_probe_tables(db)

    def write(row_id: int) -> Callable[[Connection], int]:
        def fn(conn: Connection) -> int:
            insert(conn, row_id, f"row {row_id}")
            return row_id

        return fn

    def rogue(conn: Connection) -> None:
        conn.exec_driver_sql("ROLLBACK")

    results = run_together(db, [write(1), rogue, write(2)])

    # The transaction is gone with everything of the batch: the rogue write
    # fails with its own error, the others run again, once, without it (as
    # after a write too large for a full disk: tests/chaos/test_full_disk.py).
    assert results[0] == 1
    assert isinstance(results[1], OperationalError)
    assert results[2] == 2
    assert labels(db) == {"gate", "row 1", "row 2"}
    assert db.run_write(write(3)) == 3
    assert labels(db) == {"gate", "row 1", "row 2", "row 3"}


def test_ledger_operations_through_group_commit(db: Database, ledger: LedgerService) -> None:
    threads, rounds = 8, 6
    with db.write() as conn:
        wallets = [ledger.open_wallet(conn, "user", f"usr_group_{n}") for n in range(threads)]
        for n, wallet in enumerate(wallets):
            # The last wallet affords half its holds: refusals among the batch.
            funds = 10 * rounds // 2 if n == threads - 1 else 1000
            ledger.grant(conn, wallet, funds, source="purchase", idempotency_key=f"fund:{n}")
    refused: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def hold(wallet: str, key: str) -> Callable[[Connection], str]:
        return lambda conn: ledger.hold(conn, wallet, 10, idempotency_key=f"hold:{key}").hold_id

    def capture(hold_id: str, key: str) -> Callable[[Connection], None]:
        def fn(conn: Connection) -> None:
            ledger.capture(conn, hold_id, 7, idempotency_key=f"capture:{key}")

        return fn

    def client(n: int) -> None:
        start.wait(WAIT_S)
        for attempt in range(rounds):
            key = f"c{n}:{attempt}"
            try:
                hold_id = db.run_write(hold(wallets[n], key))
            except InsufficientCredits:
                with lock:
                    refused.append(n)
                continue
            db.run_write(capture(hold_id, key))

    with count_transactions(db) as seen, ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(client, n) for n in range(threads)]:
            future.result(timeout=WAIT_S * 4)

    assert refused == [threads - 1] * (rounds - rounds // 2)
    calls = threads * rounds * 2 - len(refused)
    if writes_in_one_batch(db):
        # A refused hold alone in its batch is a transaction rolled back.
        assert seen["commit"] <= seen["begin"] <= calls
    else:
        # A refused hold is a transaction rolled back.
        assert (seen["begin"], seen["commit"]) == (calls, calls - len(refused))
    with db.read() as conn:
        assert check_ledger(conn) == []
        for n, wallet in enumerate(wallets):
            balance = ledger.balance(conn, wallet)
            captured = 7 * (rounds // 2 if n == threads - 1 else rounds)
            funds = 10 * rounds // 2 if n == threads - 1 else 1000
            assert (balance.available, balance.held) == (funds - captured, 0)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_with_the_setting_off_each_write_is_its_own_transaction(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=database_url, var_dir=tmp_path / "var", group_commit=False)
    platform = bootstrap(settings, clock=ManualClock(), migrate=False)
    try:
        db = platform.db
        assert db.group_commit is None
        create_probe_tables(db)
        calls = 12

        def write(n: int) -> Callable[[Connection], int]:
            def fn(conn: Connection) -> int:
                insert(conn, n, f"row {n}")
                return n

            return fn

        with count_transactions(db) as seen:
            results = run_together(db, [write(n) for n in range(1, calls + 1)])
        assert results == list(range(1, calls + 1))
        assert seen == {"begin": calls, "commit": calls}
        assert len(labels(db)) == calls
    finally:
        platform.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_group_commit_is_on_by_default_on_sqlite(database_url: str, tmp_path: Path) -> None:
    platform = bootstrap(
        Settings(database_url=database_url, var_dir=tmp_path / "var"),
        clock=ManualClock(),
        migrate=False,
    )
    try:
        assert platform.db.group_commit is not None
    finally:
        platform.close()
    assert create_database(database_url, group_commit=False).group_commit is None

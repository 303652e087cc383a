"""Group commit: one writer thread that coalesces concurrent SQLite writes.

SQLite has one write lock. When every request opens its own ``BEGIN
IMMEDIATE``, writers queue on that lock, and SQLite's busy handler makes each
of them sleep and retry; a commit per request adds its own cost. Instead,
``Database.run_write(fn)`` hands ``fn`` to one writer thread per process,
which takes everything queued (up to a batch limit), opens one ``BEGIN
IMMEDIATE``, runs each ``fn`` inside its own ``SAVEPOINT`` and commits once.

Each function stays all-or-nothing: one that raises is rolled back to its
savepoint alone (its ``after_commit`` callbacks dropped) and its exception is
raised in its caller's thread once the batch committed; the others are not
affected. When one function's error takes the whole transaction down (SQLite
rolls everything back on a full disk or an I/O error), that function gets its
own error and the others run again, once, in the next batch, without it. If
the transaction cannot begin or commit, every item of the batch gets the
error and nothing of it was written. A caller is answered only after the COMMIT: a crash before it
loses the batch, which no caller was told was accepted.

A write that finds no batch running and none queued runs at once in its
caller's thread, as a batch of one: without concurrency there is nothing to
coalesce, and a hand-off to another thread would only add latency. One batch
runs at a time either way, so this process's writes never queue on SQLite's
lock; the writes that arrive while one runs queue for the writer thread.

The writer never waits for work while it holds the lock: it takes what is
queued, then begins the transaction. It starts with the first write and stops
with ``Database.dispose()``; a caller whose writer is gone gets an error
instead of waiting forever.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
Callbacks = list[Callable[[], None]]
log = logging.getLogger(__name__)

DEFAULT_BATCH_LIMIT = 64
# How often a waiting caller checks that the writer is still alive.
POLL_S = 0.5


_WRITERS: weakref.WeakSet[GroupCommitWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class GroupCommitError(RuntimeError):
    """The writer could not give an answer: it stopped, died, or took too long."""


class _BatchBroken(Exception):
    """The batch's transaction is gone (a failed rollback to a savepoint, or
    SQLite rolled everything back): no item of it can commit."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Item:
    __slots__ = ("abandoned", "callbacks", "context", "done", "error", "fn", "rerun", "result")

    def __init__(self, fn: Callable[[Connection], Any]) -> None:
        self.fn = fn
        # The caller's context variables (the request id of its log lines):
        # the function and its callbacks run in them.
        self.context = contextvars.copy_context()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.callbacks: Callbacks = []
        # Run again once after another item's error broke its batch.
        self.rerun = False
        # Its caller stopped waiting (told it failed): never run it again.
        self.abandoned = False


class GroupCommitWriter:
    """The writer thread of one ``Database`` and the queue that feeds it.

    ``engine`` begins its transactions with ``BEGIN IMMEDIATE``;
    ``take_callbacks(conn)`` takes the ``after_commit`` callbacks registered on
    ``conn`` so far, ``run_callbacks`` runs a list of them (logging failures).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        take_callbacks: Callable[[Connection], Callbacks],
        run_callbacks: Callable[[Callbacks], None],
        batch_limit: int = DEFAULT_BATCH_LIMIT,
        timeout_s: float = 90.0,
        poll_s: float = POLL_S,
    ) -> None:
        if batch_limit < 1:
            raise ValueError("batch_limit must be at least 1")
        self._engine = engine
        self._take_callbacks = take_callbacks
        self._run_callbacks = run_callbacks
        self.batch_limit = batch_limit
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # The thread running a batch now (the writer, or a caller running
        # its own write alone): one at a time, and only it uses _conn.
        self._runner: threading.Thread | None = None
        # The connection batches run on, kept between them (a checkout per
        # batch costs about a tenth of a small write).
        self._conn: Connection | None = None
        self._inherited: list[Connection] = []
        _WRITERS.add(self)

    def _forget_after_fork(self) -> None:
        """In a child process: the parent's threads, batch and connection are
        not there; start afresh (the parent's callers are the parent's)."""
        self._cond = threading.Condition()
        self._queue = deque()
        self._thread = None
        self._runner = None
        self._stopping = False
        # The SQLite handle belongs to the parent: never use nor close it here
        # (kept referenced, so that no finaliser touches it either).
        if self._conn is not None:
            self._inherited.append(self._conn)
        self._conn = None

    # -- the callers' side ------------------------------------------------------

    def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a batch; its result once the batch committed, or its
        own exception, or the batch's.

        When no batch is running and none is queued, the caller runs its
        write itself, as a batch of one, instead of handing it to the writer
        thread: at low concurrency a hand-off between threads would cost more
        than it saves. Writes that arrive meanwhile queue for the writer.
        """
        me = threading.current_thread()
        if me is self._runner:
            raise RuntimeError(
                "run_write called from a function that run_write runs: use the connection it got"
            )
        item = _Item(fn)
        with self._cond:
            alone = self._runner is None and not self._queue
            if alone:
                self._runner = me
            else:
                self._queue.append(item)
                self._ensure_writer()
                self._cond.notify_all()
        if alone:
            try:
                self._run_batch([item])
            finally:
                with self._cond:
                    self._runner = None
                    if self._queue:
                        self._ensure_writer()
                    self._cond.notify_all()
        else:
            self._wait(item)
        if item.error is not None:
            raise item.error
        return cast(T, item.result)

    def _ensure_writer(self) -> None:
        """Start the writer thread unless it runs (called holding the lock)."""
        if self._thread is None or not self._thread.is_alive():
            # The first queued write, or the first since dispose() (or a fork).
            self._start()

    def queued(self) -> int:
        """Items waiting for a batch (not those of the batch running)."""
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _wait(self, item: _Item) -> None:
        deadline = time.monotonic() + self._timeout_s
        while not item.done.wait(self._poll_s):
            with self._cond:
                if item.done.is_set():
                    return
                thread = self._thread
                dead = thread is None or not thread.is_alive()
                late = time.monotonic() >= deadline
                if not (dead or late):
                    continue
                waiting = item in self._queue
                item.abandoned = True
                if waiting:
                    # Never run it later: this caller is told it failed.
                    self._queue.remove(item)
                if dead and self._thread is thread:
                    # The next write starts a new writer.
                    self._thread = None
            if dead:
                raise GroupCommitError(
                    "the database writer stopped before running this write; nothing was written"
                    if waiting
                    else "the database writer stopped during this write's batch; "
                    "its transaction was not committed"
                )
            raise GroupCommitError(
                f"no answer from the database writer within {self._timeout_s:g} s; "
                + (
                    "the write was not started and nothing was written"
                    if waiting
                    else "the write was running, its outcome is unknown"
                )
            )

    # -- the writer's side ------------------------------------------------------

    def _start(self) -> None:
        thread = threading.Thread(target=self._loop, name="plasmaart-db-writer", daemon=True)
        self._thread = thread
        thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer once it has run what is queued, and close its
        connection (a later write starts again)."""
        me = threading.current_thread()
        with self._cond:
            thread = self._thread
            if thread is not None:
                self._stopping = True
                self._cond.notify_all()
        if thread is not None and thread is not me:
            thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            # A caller may be running its own write on the connection.
            while self._runner is not None and self._runner is not me:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)
            self._close_connection()

    def _loop(self) -> None:
        me = threading.current_thread()
        batch: list[_Item] = []
        try:
            while True:
                with self._cond:
                    while not (self._queue and self._runner is None):
                        if self._stopping and not self._queue and self._runner is None:
                            self._close_connection()
                            self._stopping = False
                            self._thread = None
                            return
                        self._cond.wait()
                    size = min(len(self._queue), self.batch_limit)
                    batch = [self._queue.popleft() for _ in range(size)]
                    self._runner = me
                try:
                    self._run_batch(batch)
                finally:
                    with self._cond:
                        self._runner = None
                        self._cond.notify_all()
                batch = []
        except BaseException as exc:
            # A fault of the writer itself, not of a write: answer everyone
            # waiting on it rather than leave them to their time-out.
            log.exception("the database writer failed")
            with self._cond:
                if self._runner is None:
                    self._close_connection()
                stranded = [*batch, *self._queue]
                self._queue.clear()
                if self._thread is me:
                    self._thread = None
                self._stopping = False
            for item in stranded:
                if not item.done.is_set():
                    item.error = GroupCommitError(f"the database writer failed: {exc!r}")
                    item.done.set()

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._conn = self._engine.connect()
        return conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.exception("closing the database writer's connection failed")

    def _run_batch(self, batch: list[_Item]) -> None:
        try:
            conn = self._connection()
            try:
                # BEGIN IMMEDIATE; COMMIT, or ROLLBACK on any error (a failed
                # COMMIT included).
                with conn.begin():
                    if len(batch) == 1:
                        # Alone, a write needs no savepoint: it is the
                        # transaction (its error rolls it back).
                        self._run_alone(conn, batch[0])
                    else:
                        for item in batch:
                            self._run_item(conn, item)
            finally:
                self._take_callbacks(conn)
        except BaseException as exc:
            # The next batch starts on a fresh connection.
            self._close_connection()
            if isinstance(exc, _BatchBroken) and len(batch) > 1:
                # One item's error took the transaction down: the others did
                # nothing wrong, and run again (once) in the next batch.
                again = [i for i in batch if i.error is None and not i.rerun and not i.abandoned]
                for item in again:
                    item.rerun = True
                    item.result = None
                    item.callbacks = []
                if again:
                    log.warning(
                        "a write's error rolled back its whole batch (%s); running the "
                        "%d other write(s) again",
                        exc.cause,
                        len(again),
                    )
                    with self._cond:
                        self._queue.extendleft(reversed(again))
                        self._cond.notify_all()
                batch = [item for item in batch if item not in again]
            # Nothing of the batch was written: every item fails, those that
            # failed on their own with their own error.
            error = exc.cause if isinstance(exc, _BatchBroken) else exc
            for item in batch:
                item.result = None
                item.callbacks = []
                if item.error is None:
                    item.error = error
                item.done.set()
            return
        for item in batch:
            if item.error is None and item.callbacks:
                item.context.run(self._run_callbacks, item.callbacks)
                item.callbacks = []
            item.done.set()

    def _run_alone(self, conn: Connection, item: _Item) -> None:
        self._take_callbacks(conn)
        result = item.context.run(item.fn, conn)
        item.callbacks = self._take_callbacks(conn)
        item.result = result

    def _run_item(self, conn: Connection, item: _Item) -> None:
        # The savepoints go straight to the driver: through SQLAlchemy, each
        # costs as much as one of the write's own statements. A function's
        # own conn.begin_nested() nests inside this one.
        driver = conn.connection.driver_connection
        self._take_callbacks(conn)
        _execute(driver, f"SAVEPOINT {_SAVEPOINT}")
        try:
            result = item.context.run(item.fn, conn)
        except BaseException as exc:
            self._take_callbacks(conn)
            try:
                # Savepoints the function left open (SQLAlchemy's view of them).
                while (nested := conn.get_nested_transaction()) is not None:
                    nested.rollback()
                # Fails when the transaction is gone: the function ended it,
                # or SQLite rolled it back on its own (a full disk, an I/O
                # error), taking the earlier items with it.
                _execute(driver, f"ROLLBACK TO {_SAVEPOINT}")
                _execute(driver, f"RELEASE {_SAVEPOINT}")
            except BaseException as failed:
                # This item fails with its own error (not the failed
                # rollback's), and so do those of the batch that cannot run
                # again.
                item.error = exc
                raise _BatchBroken(exc) from failed
            item.error = exc
            return
        item.callbacks = self._take_callbacks(conn)
        try:
            while (nested := conn.get_nested_transaction()) is not None:
                nested.commit()
            _execute(driver, f"RELEASE {_SAVEPOINT}")
        except BaseException as failed:
            item.callbacks = []
            item.error = failed
            raise _BatchBroken(failed) from failed
        item.result = result


_SAVEPOINT = "plasmaart_write"


def _execute(driver: Any, statement: str) -> None:
    """``statement`` on the driver's connection; its error as SQLAlchemy's
    (``OperationalError``...), as a statement run through it would raise."""
    try:
        driver.execute(statement).close()
    except Exception as exc:
        if isinstance(exc, sqlite3.Error):
            raise DBAPIError.instance(statement, (), exc, sqlite3.Error) from exc
        raise

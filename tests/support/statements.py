"""Counting what a piece of work asks of the database: transactions and SQL
statements, from every thread that runs it.

``StatementCounter(engine)`` listens on the engine's events while it is open:

* ``begin``: one transaction opened (a write transaction when it was opened
  through ``Database.write()``, which asks for ``BEGIN IMMEDIATE`` on SQLite);
* ``commit`` and ``rollback``: how it ended;
* ``savepoint``: a nested transaction (``conn.begin_nested()``);
* ``before_cursor_execute``: every statement sent to the driver. On SQLite the
  ``BEGIN`` that ``db/engine.py`` issues at the start of each transaction is
  one of them; it is recorded, but counted as transaction control, not as a
  statement, so that the statement counts of both databases compare (on
  PostgreSQL the driver opens the transaction implicitly).

Statements sent by the platform's periodic background threads (``IGNORED``:
the sandbox test clock's reader, the API keys' last-use writer, fair use's
signal flusher) are recorded apart: they are not the cost of
the work measured, and when they run is a matter of timing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, event

# Threads that read the database on a timer, whatever the work measured.
IGNORED = frozenset({"plasmaart-test-clock", "plasmaart-key-last-used", "fairuse-signals"})
_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|END)\b", re.IGNORECASE)
_WRITE_OPTION = "plasmaart_begin"  # set by Database.write() (db/engine.py)


@dataclass
class Counts:
    """What one piece of work sent; ``log`` in order, one line each."""

    transactions: int = 0
    writes: int = 0
    commits: int = 0
    rollbacks: int = 0
    savepoints: int = 0
    statements: int = 0
    log: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.transactions} transactions ({self.writes} write, {self.commits} committed, "
            f"{self.rollbacks} rolled back, {self.savepoints} savepoints), "
            f"{self.statements} statements"
        )

    def listing(self) -> str:
        """Every transaction event and statement, numbered, in order."""
        lines = [f"{index:3d}. {line}" for index, line in enumerate(self.log, 1)]
        if self.ignored:
            lines.append(f"(and {len(self.ignored)} from background threads, not counted)")
        return "\n".join(lines)


def _one_line(statement: str, limit: int = 300) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class StatementCounter:
    """Counts into ``counts`` while open (``with StatementCounter(engine) as counts``)."""

    def __init__(self, engine: Engine, *, ignored_threads: frozenset[str] = IGNORED) -> None:
        self.engine = engine
        self.ignored_threads = ignored_threads
        self.counts = Counts()
        self._lock = threading.Lock()

    def _record(self, line: str, **deltas: int) -> None:
        if threading.current_thread().name in self.ignored_threads:
            with self._lock:
                self.counts.ignored.append(line)
            return
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counts, name, getattr(self.counts, name) + delta)
            self.counts.log.append(line)

    def _begin(self, conn: Connection) -> None:
        write = _WRITE_OPTION in conn.get_execution_options()
        self._record(
            "-- begin (write)" if write else "-- begin (read)", transactions=1, writes=int(write)
        )

    def _commit(self, _conn: Connection) -> None:
        self._record("-- commit", commits=1)

    def _rollback(self, _conn: Connection) -> None:
        self._record("-- rollback", rollbacks=1)

    def _savepoint(self, _conn: Connection, name: str) -> None:
        self._record(f"-- savepoint {name}", savepoints=1)

    def _statement(self, _conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if _CONTROL.match(statement):
            self._record(f"-- {_one_line(statement)} (driver)")
        else:
            self._record(_one_line(statement), statements=1)

    _EVENTS = (
        ("begin", "_begin"),
        ("commit", "_commit"),
        ("rollback", "_rollback"),
        ("savepoint", "_savepoint"),
        ("before_cursor_execute", "_statement"),
    )

    def __enter__(self) -> Counts:
        for name, method in self._EVENTS:
            # First in line, so that a transaction's "begin" comes before the
            # BEGIN statement that db/engine.py's own "begin" hook sends.
            event.listen(self.engine, name, getattr(self, method), insert=True)
        return self.counts

    def __exit__(self, *_exc: object) -> None:
        for name, method in self._EVENTS:
            event.remove(self.engine, name, getattr(self, method))


@contextmanager
def counting(engine: Engine) -> Iterator[Counts]:
    """``StatementCounter`` as a function."""
    with StatementCounter(engine) as counts:
        yield counts

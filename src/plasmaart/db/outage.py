"""A database that went away: which errors say so, and how a loop that
needs the database waits for it to come back.

``is_unavailable(exc)`` tells an error that means "the database cannot be
reached, or lost the connection, or gave no answer in time" (the request
may succeed if sent again shortly: the API answers 503 ``unavailable`` with
``Retry-After``) from one that is a bug or a refusal of the data (those stay
errors: a 500, a log line with its traceback). Unavailable:

* the connection could not be made, broke, or was cut (psycopg's
  ``OperationalError`` without a server's SQLSTATE, a disconnect SQLAlchemy
  noticed, an ``InterfaceError`` of a closed connection);
* the server says it cannot serve now: SQLSTATE class 08 (connection
  exception), 57P01-57P05 (admin or crash shutdown, starting up, idle
  session timeout), 53300 (too many connections), 57014 (a statement timeout
  or cancel: the deadline of ``db/deadline.py`` or the server's), 55P03 (a
  lock timeout);
* the pool had no connection to give within its timeout;
* SQLite: "database is locked" (the busy timeout ran out) and "unable to
  open database file".

``Backoff`` is what every background loop of ``serve`` and ``worker`` does
after a failure: it waits longer each time (exponential, with jitter,
capped), logs the start of an outage once and its end once, instead of a
traceback per attempt, and keeps logging real bugs with their traceback.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)

# SQLSTATEs of a server that cannot serve now (see the module's docstring).
_UNAVAILABLE_STATES = frozenset(
    {"57P01", "57P02", "57P03", "57P04", "57P05", "53300", "57014", "55P03"}
)
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file")


def _sqlstate(error: BaseException) -> str | None:
    state = getattr(error, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) says the database is out of
    reach for now rather than that the statement or its data is wrong."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _one_unavailable(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _one_unavailable(error: BaseException) -> bool:
    if isinstance(error, PoolTimeoutError):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        if error.orig is not None and error.orig is not error:
            return _driver_unavailable(error.orig)
        return False
    return _driver_unavailable(error)


def _driver_unavailable(error: BaseException) -> bool:
    module = type(error).__module__
    if module.startswith("psycopg"):
        import psycopg

        state = _sqlstate(error)
        if state is not None:
            return state.startswith("08") or state in _UNAVAILABLE_STATES
        # No SQLSTATE: the client's own error (refused, reset, cut, closed).
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
    if module == "sqlite3":
        import sqlite3

        text = str(error).lower()
        return isinstance(error, sqlite3.OperationalError) and text.startswith(_SQLITE_UNAVAILABLE)
    return False


def reason(exc: BaseException) -> str:
    """A short line naming the error, for logs and ``/readyz``."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {first[0]}" if first else type(inner).__name__


_KINDS_BY_STATE = {
    "57P01": "the server is shutting down",
    "57P02": "the server crashed",
    "57P03": "the server is starting up or shutting down",
    "57014": "no answer in time",
    "55P03": "a lock not granted in time",
    "53300": "too many connections",
}


def kind_of(exc: BaseException) -> str:
    """What went wrong in a few words, without the server's address (for
    answers anyone may read, such as ``/readyz``)."""
    if isinstance(exc, PoolTimeoutError):
        return "no free connection in time"
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    state = _sqlstate(inner)
    if state in _KINDS_BY_STATE:
        return _KINDS_BY_STATE[state]
    if state is not None and state.startswith("08"):
        return "connection failure"
    text = str(inner).lower()
    for words, kind in (
        (("refused",), "connection refused"),
        (("timeout", "timed out"), "no answer in time"),
        (("closed", "terminat", "lost", "reset", "broken"), "connection lost"),
        (("database is locked",), "database is locked"),
        (("unable to open",), "unable to open the database file"),
    ):
        if any(word in text for word in words):
            return kind
    return type(inner).__name__


class Backoff:
    """The waits of one loop that needs the database, across its failures.

    ``failed(exc)`` after an attempt that raised returns how long to wait
    before the next one: ``first_s`` doubling up to ``longest_s``, each wait
    between half and all of that (jitter, so that the processes of an
    installation do not come back in step). A database outage is logged
    once, when it starts (a warning), and once when the loop succeeds again
    (``succeeded``, an info line with how long it lasted); any other error
    is logged each time with its traceback: it is a bug, not an outage.
    """

    def __init__(
        self,
        what: str,
        *,
        first_s: float = 0.2,
        longest_s: float = 30.0,
        jitter: Callable[[], float] = random.random,
        logger: logging.Logger = log,
    ) -> None:
        if first_s <= 0 or longest_s < first_s:
            raise ValueError("waits must be positive, the longest at least the first")
        self.what = what
        self.first_s = first_s
        self.longest_s = longest_s
        self._jitter = jitter
        self._log = logger
        self._lock = threading.Lock()
        self._failures = 0
        self._outage_since: float | None = None

    @property
    def failures(self) -> int:
        """Failed attempts in a row (0 after a success)."""
        return self._failures

    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed attempt; the seconds to wait before the next."""
        with self._lock:
            self._failures += 1
            ceiling = min(self.longest_s, self.first_s * 2.0 ** (self._failures - 1))
            wait = ceiling / 2 + self._jitter() * ceiling / 2
            unavailable = is_unavailable(exc)
            starts = unavailable and self._outage_since is None
            if starts:
                self._outage_since = time.monotonic()
        if starts:
            self._log.warning(
                "%s: the database is unavailable (%s); retrying with backoff up to %.0fs, "
                "quietly until it answers",
                self.what,
                reason(exc),
                self.longest_s,
            )
        elif not unavailable:
            self._log.error("%s failed", self.what, exc_info=exc)
        return wait

    def succeeded(self) -> None:
        """Note a successful attempt: the waits start over."""
        with self._lock:
            if self._failures == 0:
                return
            since, attempts = self._outage_since, self._failures
            self._failures = 0
            self._outage_since = None
        if since is not None:
            self._log.info(
                "%s: the database answers again, after %.1fs and %d failed attempt(s)",
                self.what,
                time.monotonic() - since,
                attempts,
            )

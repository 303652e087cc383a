"""Writing the abuse signals found on the request path, off the request path.

A submission, a cancel, a rate-limit refusal or an invalid input only queues
its signal (``FairUseService.pending``); ``SignalFlusher`` takes the queue at
most every second (``FLUSH_INTERVAL_S``) and records each signal through
``FairUseService.record_signal`` as of the time it happened, one transaction
per account, which scores the account and flags or suspends it as before.
The flusher runs in a thread of each process that serves the API, started
with the app and stopped (after a last flush) when the platform closes.
Tests flush at once with ``FairUseService.flush()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection

from plasmaart.db.engine import Database
from plasmaart.fairuse.counters import PendingSignal, PendingSignals

log = logging.getLogger(__name__)

# How often the queued signals are written: what a crash can lose at most.
FLUSH_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 10.0

Record = Callable[[Connection, PendingSignal], object]


class SignalFlusher:
    def __init__(
        self,
        db: Database,
        pending: PendingSignals,
        record: Record,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.db = db
        self.pending = pending
        self.record = record
        self.interval_s = interval_s
        self._flushing = threading.Lock()
        self._state = threading.Lock()
        self._thread: tuple[threading.Thread, threading.Event] | None = None

    def start(self) -> None:
        """Start the background thread, unless it runs."""
        with self._state:
            if self._thread is not None:
                return
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(stop,), name="fairuse-signals", daemon=True
            )
            self._thread = (thread, stop)
            thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is still queued."""
        with self._state:
            running, self._thread = self._thread, None
        if running is not None:
            thread, stop = running
            stop.set()
            thread.join(timeout=STOP_TIMEOUT_S)
        self.flush()

    @property
    def running(self) -> bool:
        running = self._thread
        return running is not None and running[0].is_alive()

    def flush(self) -> int:
        """Record every queued signal now; how many were recorded. One
        transaction per account, its signals in the order they happened; a
        signal that cannot be recorded (its account was deleted, the database
        failed) is logged and dropped, and does not keep the others out."""
        with self._flushing:
            batch = self.pending.take()
            if not batch:
                return 0
            by_user: dict[str, list[PendingSignal]] = {}
            for signal in batch:
                by_user.setdefault(signal.user_id, []).append(signal)
            recorded = 0
            for signals in by_user.values():
                recorded += self._record_all(signals)
            return recorded

    def _record_all(self, signals: list[PendingSignal]) -> int:
        try:
            with self.db.write() as conn:
                for signal in signals:
                    self.record(conn, signal)
            return len(signals)
        except Exception:
            if len(signals) == 1:
                log.exception(
                    "could not record the %s signal of %s", signals[0].kind, signals[0].user_id
                )
                return 0
        # One of them failed: each alone, so that the others still count.
        return sum(self._record_all([signal]) for signal in signals)

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # the thread must outlive any one failure
                log.exception("fair-use signal flush failed")

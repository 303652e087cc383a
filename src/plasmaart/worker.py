"""The worker: a thin entry point that runs the platform's background work.

Today that is the clock (expiring lots that fell due); generation jobs join it
with the generation package. Several workers may run at once: every task is
safe to run concurrently (row locks on PostgreSQL, the write lock on SQLite).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from plasmaart.bootstrap import Platform
from plasmaart.ledger.tasks import expire_due_lots

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.stop_event = threading.Event()
        self.ticks = 0

    def run_once(self) -> None:
        platform = self.platform
        expired = expire_due_lots(platform.db, platform.ledger)
        if expired.lots:
            log.info("expired %d lots (%d credits)", expired.lots, expired.credits)
        with platform.db.write() as conn:
            platform.credentials.purge_expired_sessions(conn)
            platform.credentials.purge_login_failures(conn)
            platform.credentials.purge_idempotency_records(conn)
        self.ticks += 1

    def run(self) -> None:
        interval = self.platform.settings.clock_interval_s
        log.info("worker started (clock every %.1fs)", interval)
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:
                # One failed tick (database restarting, say) must not end the
                # worker; the next tick retries.
                log.exception("worker tick failed")
            self.stop_event.wait(max(0.0, interval - (time.monotonic() - started)))
        log.info("worker stopped")

    def stop(self) -> None:
        self.stop_event.set()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="plasmaart-worker", daemon=True)
        thread.start()
        return thread

    def run_until_signalled(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT, then finish the tick."""

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received signal %d, stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.run()

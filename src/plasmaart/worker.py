"""The worker: a thin entry point that runs the platform's background work.

It runs generation jobs (up to ``concurrency`` at once, claimed from the queue
in the database) and the clock (renewals, cancellations and grace periods that
fell due, expiring lots, purging stale sessions and records). Several workers
may run at once: claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and the
write lock on SQLite, and every job is leased with a fencing token.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from plasmaart.billing.tasks import run_billing_clock
from plasmaart.generation import queue
from plasmaart.generation.queue import Claim
from plasmaart.generation.runner import JobRunner
from plasmaart.ledger.tasks import expire_due_lots
from plasmaart.ledger.verification import LedgerVerification
from plasmaart.notify.delivery import DeliveryResult, OutboxDelivery
from plasmaart.notify.email import sender_of
from plasmaart.notify.notices import queue_expiry_notices, queue_low_balance_notices
from plasmaart.platform import Platform
from plasmaart.signals import SignalThread
from plasmaart.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)
# How long an idle worker waits before looking at the queue again.
CLAIM_IDLE_S = 0.2
# How long the webhook loop waits when a pass found nothing to do.
WEBHOOK_IDLE_S = 1.0
# How often (in ticks of the billing clock) the worker looks for files of
# deleted accounts left in storage by a crash.
SWEEP_EVERY_TICKS = 60


@dataclass(frozen=True)
class NotificationsTick:
    queued: int
    delivery: DeliveryResult


def run_notifications(platform: Platform, worker_id: str) -> NotificationsTick:
    """The worker's notification step: notice the causes that are found by
    looking (announced changes, expiring credits, low balances), then deliver
    what the outbox holds. One pass; safe to run in several workers at once."""
    settings = platform.settings
    queued = platform.catalog_changes.queue_change_notices(platform.db).notices
    with platform.db.write() as conn:
        now = platform.clock.now()
        queued += queue_expiry_notices(
            conn,
            platform.outbox,
            now=now,
            within=timedelta(days=settings.expiry_notice_days),
            webhook_events=platform.webhook_events,
        )
        queued += queue_low_balance_notices(
            conn, platform.outbox, now=now, threshold=settings.low_balance_credits
        )
    return NotificationsTick(queued, outbox_delivery(platform).run(worker_id))


def outbox_delivery(platform: Platform) -> OutboxDelivery:
    """The outbox's delivery, as the worker runs it (tests deliver with it too)."""
    return OutboxDelivery(
        platform.db,
        platform.clock,
        platform.notifications,
        platform.mailer,
        sender=sender_of(platform.settings),
        support_email=platform.settings.support_email,
    )


def webhook_delivery(platform: Platform) -> WebhookDispatcher:
    """The webhook dispatcher, as the worker runs it (tests run passes with it too)."""
    return WebhookDispatcher(
        platform.db,
        platform.clock,
        platform.outbox,
        platform.links,
        allow_private=platform.settings.webhooks_allow_private,
        # Real time for webhook-timestamp: receivers check it against their clocks.
        wall_clock=platform.job_clock,
    )


class Worker:
    def __init__(self, platform: Platform, concurrency: int | None = None) -> None:
        self.platform = platform
        self.concurrency = concurrency or platform.settings.worker_concurrency
        self.stop_event = threading.Event()
        self.ticks = 0
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._busy = 0
        self._busy_lock = threading.RLock()
        self._busy_changed = threading.Condition(self._busy_lock)
        # The jobs running now, by id (what a drain hands back).
        self._running: set[str] = set()
        # Once set, running jobs hand themselves back at their next poll.
        self._handing_back = threading.Event()
        # How long a stop lets running jobs finish (``stop``).
        self._drain_s = 0.0
        self.runner = JobRunner(
            db=platform.db,
            clock=platform.clock,
            # The job runs the model as the file describes it (announced
            # changes touch only credits and availability, which the job's
            # quote already settled).
            catalog=platform.catalogs.base,
            ledger=platform.ledger,
            generations=platform.generations,
            provider=platform.provider,
            storage=platform.storage,
            stopping=self._handing_back.is_set,
            lease=timedelta(seconds=platform.settings.job_lease_s),
            job_clock=platform.job_clock,
            max_attempts=platform.settings.max_job_attempts,
        )
        settings = platform.settings
        if settings.provider == "fal" and settings.fal_webhook_url:
            # fal calls back when a job finishes, waking its poll: polls between
            # are only a fallback for a lost webhook.
            self.runner.webhook_url = settings.fal_webhook_url
            self.runner.wakeups = platform.wakeups
            self.runner.poll_interval_s = settings.fal_poll_interval_s

    def claim(self) -> Claim | None:
        """Claim the next job this worker may run, or None."""
        claimed = self.claim_many(limit=1)
        return claimed[0] if claimed else None

    def claim_many(self, limit: int | None = None) -> list[Claim]:
        """Claim as many jobs as this worker has free slots (at most
        ``limit``), in one transaction: one read of the queue, one update."""
        platform = self.platform
        with self._busy_lock:
            busy = self._busy
        if busy >= self.concurrency:
            return []
        with platform.db.write() as conn:
            claimed = queue.claim_batch(
                conn,
                worker_id=self.id,
                # Leases and deadlines run on real time, not the billing test clock.
                now=platform.job_clock.now(),
                recorded_at=platform.clock.now(),
                lease=self.runner.lease,
                busy_slots=busy,
                total_slots=self.concurrency,
                catalog=platform.catalogs.base,
                plans=platform.billing.plans,
                limit=limit,
            )
            for job in claimed:
                if job.row is not None and not job.resumed:
                    # Just started: no output yet, nothing to read again.
                    platform.generations.announce_row(conn, job.row, ())
                else:
                    platform.generations.announce(conn, job.id)
        return claimed

    def drain(self) -> int:
        """Run queued jobs in this thread, one after another, until none is
        left that this worker may take; how many ran. (Tests and tools.)"""
        ran = 0
        while (claimed := self.claim()) is not None:
            self.runner.run(claimed)
            ran += 1
        return ran

    def _run_job(self, claimed: Claim) -> None:
        try:
            self.runner.run(claimed)
        except Exception:
            # The job stays leased; when the lease expires another claim
            # resumes it from its provider request id. Each claim counts one
            # of its attempts: past the cap (or its deadline) a claim ends it.
            log.exception(
                "job %s failed in the worker", claimed.id, extra={"generation_id": claimed.id}
            )
        finally:
            with self._busy_changed:
                self._busy -= 1
                self._running.discard(claimed.id)
                self._busy_changed.notify_all()
            self.platform.wakeups.claimable.set()  # a slot is free: claim now

    def run_once(self) -> None:
        platform = self.platform
        # Renewals first: they close each ended period through the ledger
        # (rollover, then the new allocation); the sweep expires the rest.
        billing = run_billing_clock(platform.db, platform.billing)
        if billing.total:
            log.info("billing clock: %s", dict(billing.steps))
        expired = expire_due_lots(platform.db, platform.ledger)
        # Leases the wall clock jumped away from (generation/queue.py).
        clamped = queue.clamp_runaway_leases(
            platform.db, now=platform.job_clock.now(), lease=self.runner.lease
        )
        if clamped:
            log.warning(
                "%d job lease(s) ran out more than a lease from now (the clock jumped "
                "back?): brought back to %gs from now: %s",
                len(clamped),
                self.runner.lease.total_seconds(),
                ", ".join(clamped),
            )
        if expired.lots:
            log.info("expired %d lots (%d credits)", expired.lots, expired.credits)
        # Auto top-ups to charge (those left pending by a worker that died too).
        self.charge_topups()
        # After renewals and expiry, whose notices it then delivers.
        notified = run_notifications(platform, self.id)
        if notified.queued or notified.delivery.claimed:
            log.info("notifications: %d queued, %s", notified.queued, notified.delivery)
        with platform.db.write() as conn:
            platform.credentials.purge_expired_sessions(conn)
            platform.credentials.purge_login_failures(conn)
            platform.credentials.purge_idempotency_records(conn)
            platform.account_tokens.purge(conn)
            platform.throttle.purge(conn)
        # Files of deleted accounts a crash left in storage (leaving/deletion.py):
        # on the first tick and every SWEEP_EVERY_TICKS after, not on each.
        if self.ticks % SWEEP_EVERY_TICKS == 0:
            platform.account_deletion.remove_files(platform.db)
        self.ticks += 1

    def run_webhooks(self) -> None:
        """The webhook loop, in a thread of its own beside the jobs and the
        clock: a pass fans new events out and attempts due deliveries (a
        slow receiver delays no job and no tick); idle passes wait
        ``WEBHOOK_IDLE_S``."""
        dispatcher = webhook_delivery(self.platform)
        while not self.stop_event.is_set():
            busy = False
            try:
                result = dispatcher.run(self.id)
                busy = result.busy
                if result.claimed:
                    log.info("webhooks: %s", result)
            except Exception:
                log.exception("webhook delivery pass failed")
            if not busy:
                self.stop_event.wait(WEBHOOK_IDLE_S)

    def ledger_verification(self) -> LedgerVerification:
        """The scheduled ledger verification (ledger/verification.py)."""
        return LedgerVerification(
            self.platform.db,
            self.platform.job_clock,
            interval_s=self.platform.settings.ledger_verify_interval_s,
            checked_by=f"worker {self.id}",
        )

    def charge_topups(self) -> None:
        """Charge the pending auto top-ups off-session (controls/topup.py)."""
        charged = self.platform.auto_topups.charge_pending(self.platform.db)
        if charged.total or charged.deferred:
            log.info("auto top-ups: %s", charged)

    def run(self) -> None:
        interval = self.platform.settings.clock_interval_s
        log.info(
            "worker %s started (%d job slots, clock every %.1fs)",
            self.id,
            self.concurrency,
            interval,
        )
        next_tick = 0.0
        # Queued jobs and freed slots wake the loop at once; CLAIM_IDLE_S is
        # only the fallback (an event lost, or SQLite with the API in another
        # process, whose events stay there).
        claimable = self.platform.wakeups.claimable
        self.platform.wakeups.start()
        webhooks = threading.Thread(
            target=self.run_webhooks, name="plasmaart-webhooks", daemon=True
        )
        webhooks.start()
        # `ledger verify` on a schedule, once per interval across all workers.
        verification = self.ledger_verification()
        threading.Thread(
            target=verification.loop, args=(self.stop_event,), name="plasmaart-ledger", daemon=True
        ).start()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="plasmaart-job") as pool:
            while not self.stop_event.is_set():
                if time.monotonic() >= next_tick:
                    try:
                        self.run_once()
                    except Exception:
                        # One failed tick (database restarting, say) must not
                        # end the worker; the next tick retries.
                        log.exception("worker tick failed")
                    next_tick = time.monotonic() + interval
                elif self.platform.auto_topups.wake.is_set():
                    # A run started in this process: charge it now, not at the tick.
                    try:
                        self.charge_topups()
                    except Exception:
                        log.exception("charging auto top-ups failed")
                claimed: list[Claim] = []
                claimable.clear()
                try:
                    claimed = self.claim_many()
                except Exception:
                    log.exception("claiming a job failed")
                if claimed:
                    with self._busy_lock:
                        self._busy += len(claimed)
                        self._running.update(job.id for job in claimed)
                    for job in claimed:
                        pool.submit(self._run_job, job)
                    continue
                claimable.wait(CLAIM_IDLE_S)
            self._drain()
            # Leaving the with-block waits for the jobs handed back, which
            # stop at their next poll, free for whoever claims them next.
        webhooks.join()
        self.runner.close()
        log.info("worker stopped")

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop: no new claim, no more ticks; the running jobs may finish
        for ``drain_s`` seconds, then whatever still runs is handed back
        (at once with 0)."""
        self._drain_s = max(drain_s, 0.0)
        self.stop_event.set()
        if self._drain_s == 0:
            self._hand_back()
        self.platform.wakeups.claimable.set()  # the loop sees the stop now

    def _hand_back(self) -> None:
        self._handing_back.set()
        with self._busy_changed:
            self._busy_changed.notify_all()  # a drain waiting ends now
        # Jobs waiting for a webhook between polls see it now.
        self.platform.wakeups.wake_all()

    def _drain(self) -> None:
        """After the loop: wait up to the drain for the running jobs, then
        hand back those still running. A job handed back keeps its hold and
        its provider request; its lease is released, so another worker
        resumes it at once, and the hand-back is not one of its attempts."""
        deadline = time.monotonic() + self._drain_s
        with self._busy_changed:
            if self._busy and not self._handing_back.is_set():
                log.info(
                    "worker %s draining: %d job(s) running, waiting up to %.0fs",
                    self.id,
                    self._busy,
                    self._drain_s,
                )
            while self._busy and not self._handing_back.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._busy_changed.wait(left)
            left_running = sorted(self._running)
        if left_running:
            log.warning(
                "worker %s handing back %d job(s) to the queue: %s",
                self.id,
                len(left_running),
                ", ".join(left_running),
            )
        self._hand_back()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="plasmaart-worker", daemon=True)
        thread.start()
        return thread

    def run_until_signalled(self, drain_s: float | None = None) -> None:
        """Run in the foreground until SIGTERM or SIGINT, then drain: no new
        claim, the running jobs finish within ``drain_s`` (by default
        ``PLASMAART_WORKER_DRAIN_S``), the rest are handed back. A second
        signal hands them back at once."""
        drain = self.platform.settings.worker_drain_s if drain_s is None else drain_s

        def _stop(signum: int) -> None:
            # On a thread of its own (plasmaart/signals.py), not in the handler.
            if self.stop_event.is_set():
                log.info("received signal %d again, handing running jobs back now", signum)
                self._hand_back()
                return
            log.info("received signal %d, draining (up to %.0fs)", signum, drain)
            self.stop(drain)

        with SignalThread({signal.SIGTERM: _stop, signal.SIGINT: _stop}):
            self.run()

"""Delivering webhook events, at least once (docs/webhooks.md, "Delivery,
retries and the delivery log").

``WebhookDispatcher.run`` is one pass of the worker's webhook loop:

1. **Fan-out.** Each event not fanned out yet (``webhook_events``, written
   in its cause's transaction by ``outbox.webhooks``) becomes one delivery
   per enabled endpoint of its user whose ``events`` name its type, plus one
   to its ``webhook_url`` (a generation's per-request URL), in the
   transaction that marks it fanned out: a conditional UPDATE, and
   ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so each event fans out once
   however many workers run.
2. **Claims.** Due deliveries are leased (``claimed_by``,
   ``claim_expires_at``) by a conditional UPDATE, as the notification outbox
   does (``notify/delivery.py``): a delivery is attempted by one worker at a
   time, and one that a dead worker held is taken again once its lease ends.
   The claim reads what the attempt needs: the stored body, the endpoint's
   secret (and the previous one while a rotation's overlap lasts), or for a
   per-request URL the account's secret (created if the user has none yet).
3. **Attempts**, in a bounded thread pool, outside any transaction: the URL
   is checked again (``webhook_urls.check_destination``, a fresh
   resolution) and the POST goes to an address that check accepted
   (``transport.py``), signed (``signing.headers``: ``webhook-id`` the
   event's id, ``webhook-timestamp`` the attempt's time). Any 2xx within the
   timeout succeeds; anything else is retried on ``RETRY_SCHEDULE``, then
   the delivery has failed. A refused address is a failed attempt with its
   reason, and no request is sent.
4. **Outcomes**, each in a transaction of its own: the attempt's row in
   ``webhook_attempts``, the delivery's new state (only while this worker
   still holds its lease), and the endpoint's health: ``failing_since`` is
   set by the first failure after a success and cleared by any success; an
   endpoint failing for ``FAILING_FOR`` is disabled, its pending deliveries
   stop, and its owner is told (``notices.EndpointDisabled``).

At least once: a worker that dies after the receiver answered and before
the outcome committed leaves the lease to expire, and the delivery is sent
again with the same ``webhook-id``, the receiver's idempotency key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.ids import new_id
from plasmaart.links import Links
from plasmaart.outbox import Outbox
from plasmaart.webhook_urls import Address, UnsafeUrl, check_destination
from plasmaart.webhooks import deliveries_repository as repo
from plasmaart.webhooks import signing, transport
from plasmaart.webhooks.deliveries_repository import Delivery
from plasmaart.webhooks.notices import EndpointDisabled
from plasmaart.webhooks.transport import Outcome

log = logging.getLogger(__name__)

# The waits after each failed attempt (the Standard Webhooks / Svix
# schedule): attempts at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after
# the one before: eight attempts over about 27 h 35 min, then failed.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_ATTEMPTS = len(RETRY_SCHEDULE) + 1
# An endpoint whose every attempt has failed this long is disabled.
FAILING_FOR = timedelta(days=3)
# How long a claimed delivery is one worker's alone: far longer than an
# attempt may take (its timeouts), so a live worker never loses it.
LEASE = timedelta(minutes=2)
# Deliveries one pass claims, and how many of them are attempted at once: a
# slow endpoint holds one thread, the others go on.
BATCH = 32
CONCURRENCY = 8
# Deliveries to one endpoint (or URL) one pass claims at most: a receiver that
# hangs holds that many threads for a pass, the others deliver.
PER_DESTINATION = 2
# Events one pass fans out.
FAN_OUT_BATCH = 100
STOPPED = "the endpoint is disabled"

# Checks a URL and returns the addresses a delivery may connect to (raises
# ``UnsafeUrl``): ``webhook_urls.check_destination`` with the operator's rule.
Resolver = Callable[[str], Sequence[Address]]
Poster = Callable[..., Outcome]


def retry_delay(attempts: int) -> timedelta | None:
    """How long to wait after the ``attempts``-th failed attempt; None when
    that was the last one."""
    if attempts < 1 or attempts > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempts - 1]


@dataclass
class DispatchResult:
    events: int = 0  # fanned out
    created: int = 0  # deliveries they made
    claimed: int = 0
    succeeded: int = 0
    retrying: int = 0
    failed: int = 0
    disabled: list[str] = field(default_factory=list)  # endpoints turned off

    @property
    def busy(self) -> bool:
        return bool(self.events or self.claimed)


@dataclass(frozen=True)
class Claimed:
    delivery: Delivery
    url: str
    secrets: tuple[str, ...]


class WebhookDispatcher:
    """Fans webhook events out and delivers them (one pass: ``run``)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        outbox: Outbox,
        links: Links,
        *,
        allow_private: bool,
        resolve: Resolver | None = None,
        post: Poster = transport.post,
        connect_timeout_s: float = transport.CONNECT_TIMEOUT_S,
        read_timeout_s: float = transport.READ_TIMEOUT_S,
        concurrency: int = CONCURRENCY,
        wall_clock: Clock | None = None,
    ) -> None:
        self.db = db
        # The platform's clock, as the endpoints API's (a replay is due at
        # its "now", a rotation's overlap ends by it): schedules, leases,
        # the endpoints' health.
        self.clock = clock
        # Real time for ``webhook-timestamp``, which receivers check against
        # theirs (the sandbox's test clock may be days ahead).
        self.wall_clock = wall_clock or clock
        self.outbox = outbox
        self.links = links
        self.resolve: Resolver = resolve or partial(check_destination, allow_private=allow_private)
        self.post = post
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.concurrency = concurrency

    def run(self, worker_id: str, *, limit: int = BATCH) -> DispatchResult:
        """One pass: fan out what is new, then attempt up to ``limit`` due deliveries."""
        result = DispatchResult()
        result.events, result.created = self.fan_out()
        claimed = self.claim(worker_id, limit=limit)
        result.claimed = len(claimed)
        if not claimed:
            return result
        with ThreadPoolExecutor(
            min(self.concurrency, len(claimed)), thread_name_prefix="plasmaart-webhook"
        ) as pool:
            outcomes = list(pool.map(partial(self.attempt, worker_id=worker_id), claimed))
        for outcome, disabled in outcomes:
            if outcome == "succeeded":
                result.succeeded += 1
            elif outcome == "pending":
                result.retrying += 1
            elif outcome == "failed":
                result.failed += 1
            if disabled is not None:
                result.disabled.append(disabled)
        return result

    # -- fan-out -------------------------------------------------------------------

    def fan_out(self, *, limit: int = FAN_OUT_BATCH) -> tuple[int, int]:
        """Turn up to ``limit`` new events into deliveries; (events, deliveries)."""
        events = created = 0
        with self.db.write() as conn:
            now = self.clock.now()
            for event_id in repo.pending_event_ids(conn, limit=limit):
                event = repo.take_event(conn, event_id, now)
                if event is None:
                    continue
                rows = [
                    _delivery_row(event.id, endpoint.id, endpoint.url, now)
                    for endpoint in repo.subscribers(conn, event.user_id)
                    if event.type in endpoint.events
                ]
                if event.webhook_url:
                    rows.append(_delivery_row(event.id, None, event.webhook_url, now))
                repo.insert_deliveries(conn, rows)
                events += 1
                created += len(rows)
        return events, created

    # -- claims and attempts ----------------------------------------------------------

    def claim(self, worker_id: str, *, limit: int = BATCH) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries, at most ``PER_DESTINATION``
        to any one endpoint or URL, with the secrets that sign them."""
        claimed: list[Claimed] = []
        per_destination: dict[str, int] = {}
        with self.db.write() as conn:
            now = self.clock.now()
            for due in repo.due_deliveries(conn, now, limit=limit * PER_DESTINATION):
                if len(claimed) >= limit:
                    break
                if per_destination.get(due.destination, 0) >= PER_DESTINATION:
                    continue
                delivery = repo.take_delivery(conn, due.id, worker_id, now=now, lease=LEASE)
                if delivery is None:
                    continue
                if delivery.endpoint_id is None:
                    secrets: tuple[str, ...] = (
                        repo.account_secret(conn, delivery.user_id, signing.new_secret(), now),
                    )
                else:
                    secrets = _endpoint_secrets(delivery, now)
                claimed.append(Claimed(delivery, delivery.url, secrets))
                per_destination[due.destination] = per_destination.get(due.destination, 0) + 1
        return claimed

    def attempt(self, claimed: Claimed, worker_id: str) -> tuple[str, str | None]:
        """Attempt one claimed delivery and record it: its new status
        (``succeeded``, ``pending``, ``failed``; ``lost`` if the lease was
        lost meanwhile) and the endpoint it disabled, if it did."""
        delivery = claimed.delivery
        if delivery.endpoint_id is not None and not delivery.endpoint_enabled:
            return self._stop(delivery, worker_id), None
        attempted_at = self.clock.now()
        sent_at = int(self.wall_clock.now().timestamp())
        try:
            addresses = self.resolve(claimed.url)
        except UnsafeUrl as refused:
            outcome = Outcome(None, f"address refused: {refused}", 0)
        else:
            body = delivery.payload.encode()
            headers = signing.headers(list(claimed.secrets), delivery.event_id, sent_at, body)
            outcome = self.post(
                claimed.url,
                addresses,
                body,
                headers,
                connect_timeout_s=self.connect_timeout_s,
                read_timeout_s=self.read_timeout_s,
            )
        return self._record(claimed, worker_id, attempted_at, outcome)

    # -- outcomes ------------------------------------------------------------------

    def _record(
        self, claimed: Claimed, worker_id: str, attempted_at: datetime, outcome: Outcome
    ) -> tuple[str, str | None]:
        delivery = claimed.delivery
        disabled = None
        with self.db.write() as conn:
            now = self.clock.now()
            if outcome.succeeded:
                status, next_at = "succeeded", None
            else:
                delay = retry_delay(delivery.attempts)
                status = "failed" if delay is None else "pending"
                next_at = None if delay is None else now + delay
            # The endpoint's row first, then the delivery's: every transaction
            # that writes both takes their locks in this order (no deadlock
            # between two outcomes of one endpoint, one of which disables it).
            if delivery.endpoint_id is not None:
                if outcome.succeeded:
                    repo.endpoint_succeeded(conn, delivery.endpoint_id)
                else:
                    repo.endpoint_failing(conn, delivery.endpoint_id, now=now)
            settled = repo.settle(
                conn,
                delivery.id,
                worker_id,
                now=now,
                status=status,
                next_attempt_at=next_at,
                status_code=outcome.status_code,
                error=outcome.error,
            )
            if settled or repo.delivery_exists(conn, delivery.id):
                repo.insert_attempt(
                    conn,
                    delivery.id,
                    attempted_at=attempted_at,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                )
            if delivery.endpoint_id is not None and not outcome.succeeded:
                disabled = self._failed(conn, delivery.endpoint_id, now, outcome)
        if not outcome.succeeded:
            log.info(
                "webhook delivery %s of %s to %s failed (attempt %d): %s",
                delivery.id,
                delivery.event_id,
                claimed.url,
                delivery.attempts,
                outcome.error,
            )
        return (status if settled else "lost"), disabled

    def _failed(
        self, conn: Connection, endpoint_id: str, now: datetime, outcome: Outcome
    ) -> str | None:
        """Disable the endpoint if it has failed for ``FAILING_FOR``; its id
        if that happened now (its pending deliveries stopped, its owner told)."""
        reason = f"every delivery failed for {FAILING_FOR.days} days"
        disabled = repo.disable_if_failing(
            conn, endpoint_id, now=now, failing_for=FAILING_FOR, reason=reason
        )
        if disabled is None:
            return None
        stopped = repo.stop_deliveries(conn, endpoint_id, reason=STOPPED)
        self.outbox.enqueue(
            conn,
            cause_key=f"webhook-endpoint-disabled:{endpoint_id}:{now.isoformat()}",
            user_id=disabled.user_id,
            fact=EndpointDisabled(
                endpoint_id=endpoint_id,
                url=disabled.url,
                failing_since=disabled.failing_since,
                disabled_at=now,
                failing_for_days=FAILING_FOR.days,
                last_error=outcome.error or "no answer",
                manage_url=self.links.url("/webhooks"),
            ),
        )
        log.warning(
            "webhook endpoint %s disabled after %s of failures; %d pending deliveries stopped",
            endpoint_id,
            FAILING_FOR,
            stopped,
        )
        return endpoint_id

    def _stop(self, delivery: Delivery, worker_id: str) -> str:
        """A delivery whose endpoint was disabled (or deleted) since it was
        due: it ends failed, without an attempt."""
        with self.db.write() as conn:
            settled = repo.settle(
                conn,
                delivery.id,
                worker_id,
                now=self.clock.now(),
                status="failed",
                next_attempt_at=None,
                status_code=None,
                error=STOPPED,
            )
        return "failed" if settled else "lost"


def _endpoint_secrets(delivery: Delivery, now: datetime) -> tuple[str, ...]:
    """The endpoint's secret, and the previous one while its overlap lasts."""
    secrets = [delivery.secret] if delivery.secret else []
    expires = delivery.previous_secret_expires_at
    if delivery.previous_secret and expires is not None and expires > now:
        secrets.append(delivery.previous_secret)
    return tuple(secrets)


def _delivery_row(
    event_id: str, endpoint_id: str | None, url: str, now: datetime
) -> dict[str, object]:
    return {
        "id": new_id("wd"),
        "event_id": event_id,
        "endpoint_id": endpoint_id,
        "url": url,
        "next_attempt_at": now,
        "created_at": now,
    }

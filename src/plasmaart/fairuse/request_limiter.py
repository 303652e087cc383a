"""Requests per minute per account, counted with the ``limits`` library.

A moving window: at most N accepted requests in any 60 seconds, and a refused
request takes no slot, so a client that waits ``Retry-After`` gets in. The
counters live in memory (one API process) or in Redis when ``REDIS_URL`` is
set, so that every API process of a deployment shares them.

When Redis cannot be reached the limiter fails OPEN: the request goes on
unlimited (and answers without rate-limit headers) and a warning is logged.
A rate limit protects capacity; the credits themselves are protected by the
ledger's holds and the queued-job and concurrency caps, which live in the
database and keep working, so an outage of the counter store should not turn
into an outage of generation for every paying user.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from plasmaart.fairuse.rules import Budget, retry_after_seconds

log = logging.getLogger(__name__)

# Short, so that a dead Redis costs each request well under a second.
REDIS_TIMEOUT_S = 0.5
# A dead Redis is logged at most this often per process.
OUTAGE_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class RateWindow:
    """The account's window after a request: accepted or not, and what the
    ``RateLimit-*`` headers say."""

    allowed: bool
    limit: int
    remaining: int
    # Seconds until the oldest counted request leaves the window (a slot frees).
    reset_after: int


class RequestLimiter:
    def __init__(
        self, redis_url: str | None = None, *, now: Callable[[], float] = time.time
    ) -> None:
        self.shared = redis_url is not None
        if redis_url is None:
            storage = storage_from_string("memory://", wrap_exceptions=True)
        else:
            storage = storage_from_string(
                redis_url,
                wrap_exceptions=True,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S,
            )
        self._limiter = MovingWindowRateLimiter(storage)
        self._now = now
        self._lock = threading.Lock()
        self._last_outage_log = -OUTAGE_LOG_EVERY_S

    def hit(self, account: str, per_minute: int, budget: Budget) -> RateWindow | None:
        """Count one request of ``account`` against ``per_minute`` in ``budget``.
        None when the counter store is unreachable (the request goes on: fail open)."""
        item = RateLimitItemPerMinute(per_minute)
        try:
            allowed = self._limiter.hit(item, budget, account)
            reset_at, remaining = self._limiter.get_window_stats(item, budget, account)
        except StorageError as exc:
            self._outage(exc)
            return None
        return RateWindow(
            allowed=allowed,
            limit=per_minute,
            remaining=max(0, remaining),
            reset_after=retry_after_seconds(reset_at, self._now()),
        )

    def once_per(self, key: str, seconds: int) -> bool:
        """True the first time ``key`` is seen in ``seconds`` (always with 0):
        a cheap way to keep a flood of refusals from becoming a flood of writes."""
        if seconds <= 0:
            return True
        return self.within(key, 1, seconds) is True

    def within(self, key: str, amount: int, seconds: int) -> bool | None:
        """Count one event of ``key``: True while there were at most ``amount``
        in the last ``seconds``; None when the counter store is down."""
        try:
            return self._limiter.hit(RateLimitItemPerSecond(amount, seconds), "events", key)
        except StorageError as exc:
            self._outage(exc)
            return None

    def _outage(self, exc: StorageError) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_outage_log < OUTAGE_LOG_EVERY_S:
                return
            self._last_outage_log = now
        log.warning("rate-limit store unreachable, requests go on unlimited: %s", exc)

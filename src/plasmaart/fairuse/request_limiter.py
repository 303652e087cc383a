"""Requests per minute per account, counted with the ``limits`` library.

A moving window: at most N accepted requests in any 60 seconds, and a refused
request takes no slot, so a client that waits ``Retry-After`` gets in. The
counters live in memory (one API process) or in Redis when ``REDIS_URL`` is
set, so that every API process of a deployment shares them.

When Redis cannot be reached the limiter fails OPEN: the request goes on
unlimited (and answers without rate-limit headers); the outage is logged once,
shown by ``/readyz`` and ``/metrics``, and for a second after a failure Redis
is not asked again (``fairuse/redis_health.py``).
A rate limit protects capacity; the credits themselves are protected by the
ledger's holds and the queued-job and concurrency caps, which live in the
database and keep working, so an outage of the counter store should not turn
into an outage of generation for every paying user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from plasmaart.fairuse.redis_health import RedisHealth, health_for
from plasmaart.fairuse.rules import Budget, retry_after_seconds

log = logging.getLogger(__name__)

# Short, so that a dead Redis costs each request well under a second.
REDIS_TIMEOUT_S = 0.5


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
        self._health: RedisHealth | None = None if redis_url is None else health_for(redis_url)

    def hit(self, account: str, per_minute: int, budget: Budget) -> RateWindow | None:
        """Count one request of ``account`` against ``per_minute`` in ``budget``.
        None when the counter store is unreachable (the request goes on: fail open)."""
        item = RateLimitItemPerMinute(per_minute)
        if not self._may_try():
            return None
        try:
            allowed = self._limiter.hit(item, budget, account)
            reset_at, remaining = self._limiter.get_window_stats(item, budget, account)
        except StorageError as exc:
            self._outage(exc)
            return None
        self._answered()
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
        if not self._may_try():
            return None
        try:
            within = self._limiter.hit(RateLimitItemPerSecond(amount, seconds), "events", key)
        except StorageError as exc:
            self._outage(exc)
            return None
        self._answered()
        return within

    def _may_try(self) -> bool:
        """False (fail open at once) right after Redis failed."""
        if self._health is None or self._health.should_try():
            return True
        self._health.failed("rate limits", None)
        return False

    def _outage(self, exc: StorageError) -> None:
        if self._health is not None:
            self._health.failed("rate limits", exc)
        else:  # pragma: no cover - the memory store does not fail
            log.warning("rate-limit store failed, requests go on unlimited: %s", exc)

    def _answered(self) -> None:
        if self._health is not None:
            self._health.succeeded()

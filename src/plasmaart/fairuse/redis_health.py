"""Whether this process reaches Redis, the fair-use counters' shared store.

Redis holds only counters (requests per minute, identical requests): when it
cannot be reached, both fail OPEN (the request goes on, uncounted). This
module makes that visible and cheap:

* one warning when an outage begins (not one per request), and one line when
  Redis answers again, saying how long it was away and how many requests went
  on uncounted;
* after a failure, Redis is not asked again for ``RETRY_AFTER_FAILURE_S``: a
  Redis that hangs (stopped, or a network that drops packets) costs one
  request per process its socket timeout, not every request;
* ``health_for(url)`` (one per Redis URL and process, shared by the rate
  limiter and the identical-request counter) says whether it is reachable
  now; ``unreachable()`` and ``fail_open_total()`` sum them up for
  ``/readyz`` (``degraded``) and ``/metrics`` (``plasmaart_redis_up``,
  ``plasmaart_redis_fail_open_total``).

A connection broken mid-call (Redis killed) fails like an unreachable one;
the client library reconnects on the next call, so nothing needs a restart.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

# After a failed call, calls fail open at once for this long, then one tries.
RETRY_AFTER_FAILURE_S = 1.0
# While the outage lasts, a reminder is logged at most this often.
REMIND_EVERY_S = 300.0


class RedisHealth:
    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._reminded_at = 0.0
        self._uncounted = 0
        # Every request (or count) that went on uncounted, since the start.
        self.fail_open_total = 0

    @property
    def up(self) -> bool:
        return self._down_since is None

    def should_try(self) -> bool:
        """False while a recent failure says Redis is away (fail open at once)."""
        if self._down_since is None:
            return True
        with self._lock:
            if self._now() >= self._retry_at:
                self._retry_at = self._now() + RETRY_AFTER_FAILURE_S
                return True
        return False

    def failed(self, what: str, exc: BaseException | None) -> None:
        """A call to Redis failed (``exc``), or was skipped (None): the
        request goes on uncounted."""
        now = self._now()
        with self._lock:
            self.fail_open_total += 1
            self._uncounted += 1
            first = exc is not None and self._down_since is None
            remind = (
                not first
                and exc is not None
                and self._down_since is not None
                and now - self._reminded_at >= REMIND_EVERY_S
            )
            if exc is not None:
                if self._down_since is None:
                    self._down_since = now
                    self._uncounted = 1
                self._retry_at = now + RETRY_AFTER_FAILURE_S
            if first or remind:
                self._reminded_at = now
            since, uncounted = self._down_since, self._uncounted
        if first:
            log.warning(
                "Redis unreachable (%s: %s): rate limits and identical-request counts fail "
                "open (requests go on uncounted) until it answers again",
                what,
                exc,
                extra={"redis_event": "down"},
            )
        elif remind and since is not None:
            log.warning(
                "Redis still unreachable after %.0f s: %d request(s) went on uncounted",
                now - since,
                uncounted,
                extra={"redis_event": "still_down"},
            )

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, uncounted = self._down_since, self._uncounted
            self._down_since = None
            self._uncounted = 0
        if since is not None:
            log.warning(
                "Redis answers again after %.1f s; %d request(s) went on uncounted meanwhile",
                self._now() - since,
                uncounted,
                extra={"redis_event": "up"},
            )


# Held by the limiters and counters that use them: a platform closed and
# dropped (tests build many) takes its Redis's health with it.
_BY_URL: weakref.WeakValueDictionary[str, RedisHealth] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


def health_for(url: str) -> RedisHealth:
    """The health of the Redis at ``url`` as this process sees it."""
    with _REGISTRY_LOCK:
        found = _BY_URL.get(url)
        if found is None:
            found = RedisHealth()
            _BY_URL[url] = found
        return found


def configured() -> bool:
    """Whether this process uses a Redis at all."""
    with _REGISTRY_LOCK:
        return bool(_BY_URL)


def unreachable() -> bool:
    """Whether a Redis this process uses is unreachable now."""
    with _REGISTRY_LOCK:
        return any(not health.up for health in list(_BY_URL.values()))


def fail_open_total() -> int:
    with _REGISTRY_LOCK:
        return sum(health.fail_open_total for health in list(_BY_URL.values()))

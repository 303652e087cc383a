"""Fair-use counters off the database: identical requests per account, and
the abuse signals waiting to be written.

Identical requests (``identical_prompt``) are counted per account and request
fingerprint over ``rules.IDENTICAL_PROMPT_WINDOW``: in the process's memory,
or in Redis when ``REDIS_URL`` is set, so that every API process of a
deployment counts the same copies. Each counted submission is a member named
by its generation id, so counting one submission twice (an idempotent replay)
counts it once. Like the rate limiter, a Redis that cannot be reached fails
OPEN: the submission goes on and is not counted (the outage is logged once,
``fairuse/redis_health.py``).

Signals found on the request path are not written there: ``PendingSignals``
keeps them, with the time they happened, until the flusher
(``fairuse.tasks.SignalFlusher``) records and scores them in transactions of
its own, at most a second later. docs/fair-use.md says what a crash can lose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from plasmaart.fairuse.redis_health import health_for
from plasmaart.fairuse.rules import SignalKind

if TYPE_CHECKING:
    # Imported where REDIS_URL is set: the default setup never loads redis.
    from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Short, so that a dead Redis costs each submission well under a second.
REDIS_TIMEOUT_S = 0.5
# A dead Redis or a full queue is logged at most this often per process.
WARN_EVERY_S = 60.0
REDIS_PREFIX = "plasmaart:fairuse:copies:"
# Every this many counted submissions, the memory counter forgets the
# requests whose copies all left the window (its memory stays bounded by
# what the window holds).
SWEEP_EVERY = 1000
# Signals waiting for the flusher, at most: beyond that (the database has
# been unreachable for a long while) new ones are dropped with a warning.
MAX_PENDING = 10_000


def request_fingerprint(
    model: str,
    prompt: str,
    num_outputs: int,
    params: Mapping[str, Any],
    *,
    sandbox: Any = None,
    upload_id: str | None = None,
    image_url: str | None = None,
) -> str:
    """What makes two submissions the same request (see docs/fair-use.md,
    "Identical requests"): model, prompt, number of outputs, params with the
    seed (canonical JSON), sandbox params and input image."""
    canonical = json.dumps(
        [model, prompt, num_outputs, params, sandbox or {}, upload_id, image_url],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class CopyCounter(Protocol):
    def count(
        self, key: str, member: str, at: datetime, now: datetime, window: timedelta
    ) -> int | None:
        """Count ``member`` (seen ``at``) under ``key``; how many members of
        ``key`` were seen in ``(now - window, now]``, or None when the store
        cannot be reached."""
        ...


class MemoryCopies:
    """The copies counter of one process."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._counted = 0

    def count(
        self, key: str, member: str, at: datetime, now: datetime, window: timedelta
    ) -> int | None:
        since, until = (now - window).timestamp(), now.timestamp()
        with self._lock:
            self._counted += 1
            if self._counted % SWEEP_EVERY == 0:
                self._sweep(since)
            members = self._seen.setdefault(key, {})
            members.setdefault(member, at.timestamp())
            for old in [m for m, seen in members.items() if seen <= since]:
                del members[old]
            return sum(1 for seen in members.values() if seen <= until)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def _sweep(self, since: float) -> None:
        stale = [
            key for key, members in self._seen.items() if all(s <= since for s in members.values())
        ]
        for key in stale:
            del self._seen[key]


class RedisCopies:
    """The copies counter shared by the API processes: a sorted set per key
    (members scored by when they were seen), trimmed to the window, in one
    round trip."""

    def __init__(self, redis_url: str) -> None:
        import redis
        from redis.exceptions import RedisError

        self._error: type[RedisError] = RedisError
        self._client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        self._health = health_for(redis_url)

    def count(
        self, key: str, member: str, at: datetime, now: datetime, window: timedelta
    ) -> int | None:
        name = REDIS_PREFIX + key
        since, until = (now - window).timestamp(), now.timestamp()
        if not self._health.should_try():
            self._health.failed("identical-request counts", None)
            return None
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(name, {member: at.timestamp()}, nx=True)
            pipe.zremrangebyscore(name, "-inf", since)
            pipe.zcount(name, f"({since}", until)
            pipe.expire(name, int(window.total_seconds()) + 60)
            _, _, copies, _ = pipe.execute()
        except self._error as exc:
            self._health.failed("identical-request counts", exc)
            return None
        self._health.succeeded()
        return int(copies)

    def close(self) -> None:
        self._client.close()


def create_copy_counter(redis_url: str | None) -> MemoryCopies | RedisCopies:
    return MemoryCopies() if redis_url is None else RedisCopies(redis_url)


@dataclass(frozen=True)
class PendingSignal:
    """A signal seen on the request path, waiting to be recorded."""

    user_id: str
    kind: SignalKind
    evidence: dict[str, Any]
    subject: str | None
    # When it happened: it is recorded and scored as of then.
    at: datetime


class PendingSignals:
    """The signals waiting for the flusher, in the order they happened."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self._items: list[PendingSignal] = []
        self._lock = threading.Lock()
        self._limit = limit
        self._last_warning = -WARN_EVERY_S

    def put(self, signal: PendingSignal) -> bool:
        """Keep ``signal``; False when the queue is full and it was dropped."""
        with self._lock:
            if len(self._items) < self._limit:
                self._items.append(signal)
                return True
            now = time.monotonic()
            warn = now - self._last_warning >= WARN_EVERY_S
            if warn:
                self._last_warning = now
        if warn:
            log.warning("%d abuse signals wait to be written: dropping new ones", self._limit)
        return False

    def take(self) -> list[PendingSignal]:
        """Every waiting signal, oldest first; the queue is empty after."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

"""Waiting for a generation to finish: the decisions, shared by both clients
(which do the requests).

The clients follow ``generation.updated`` events of ``/v1/events`` and fetch
the generation whenever one concerns it (an event carries only part of the
object). A stream connection is opened first and the generation fetched right
after, so that nothing that happened before the subscription is missed. When
the stream fails, ends, or says ``resync`` (events were lost), they poll the
generation instead, about once a second. Either way the wait ends within its
timeout: a blocking read cannot be cut short, so a stream connection's read
timeout never reaches past the deadline, and one that would (the server's
heartbeats keep a connection reading) is replaced by a fresh one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from plasmaart.client.errors import GenerationTimeout
from plasmaart.client.models import Event, Generation

RESYNC = "resync"
UPDATED = "generation.updated"
# How often the fallback asks for the generation.
POLL_INTERVAL_S = 1.0
# The server sends a heartbeat every 15 s, so a healthy stream never stays
# silent this long. Kept short, as the deadline only replaces a connection
# once less than this is left (see ``outlives_deadline``).
STREAM_READ_TIMEOUT_S = 25.0
# How far past its deadline a wait may run; also the least time left for
# which a stream connection is still worth opening.
DEADLINE_SLACK_S = 1.0
STREAM_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}


def _progress(generation: Generation) -> tuple[Any, ...]:
    """What a caller is told about when it changes (not the output links,
    which are signed afresh on every read)."""
    return (
        generation.status,
        generation.queue_position,
        generation.started_at,
        generation.finished_at,
        generation.credits_held,
        generation.credits_charged,
        generation.balance_after,
        generation.error,
        tuple(output.id for output in generation.outputs),
    )


def check_timeout(timeout: float) -> None:
    """Before submitting anything: a bad wait must not leave a job behind."""
    if not timeout >= 0:
        raise ValueError(f"timeout must be 0 or more seconds, not {timeout!r}")


class GenerationWatch:
    """One wait: the last state seen of the generation and the deadline.
    ``see`` takes each state fetched and says whether the caller's
    ``on_update`` should hear of it (the first state, then each change)."""

    def __init__(
        self,
        generation: Generation,
        timeout: float,
        *,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_timeout(timeout)
        self.timeout = timeout
        self._clock = clock
        self._deadline = (clock() if started is None else started) + timeout
        self.generation = generation
        self._seen: tuple[Any, ...] | None = None

    @property
    def id(self) -> str:
        return self.generation.id

    @property
    def done(self) -> bool:
        return self.generation.finished

    def see(self, generation: Generation) -> bool:
        """Take a state; True if it is the first or differs from the last."""
        self.generation = generation
        progress = _progress(generation)
        changed = progress != self._seen
        self._seen = progress
        return changed

    def concerns(self, event: Event) -> bool:
        return (
            event.type == UPDATED
            and isinstance(event.data, dict)
            and event.data.get("id") == self.generation.id
        )

    def remaining(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def timed_out(self) -> GenerationTimeout:
        return GenerationTimeout(self.generation, self.timeout)

    def stream_read_timeout(self) -> float | None:
        """The read timeout of a new stream connection, or None when too
        little time is left for one (then poll)."""
        left = self.remaining()
        if left <= DEADLINE_SLACK_S:
            return None
        return min(left, STREAM_READ_TIMEOUT_S)

    def outlives_deadline(self, read_timeout: float) -> bool:
        """Whether a connection opened with ``read_timeout`` could now block
        past the deadline: then it is replaced by one with less."""
        return self.remaining() < read_timeout - DEADLINE_SLACK_S

    def poll_wait(self) -> float:
        return min(POLL_INTERVAL_S, self.remaining())

"""Waking a worker's wait between two polls of a job, from any process.

A worker polls the provider for a running job every ``poll_interval_s``. When
the provider calls back (fal's webhook, received by whichever API process
fal reached), ``request_poll`` publishes ``generation.poll`` on the platform's
event bus: a datagram to each process of a SQLite file (eventbus.py
``LocalSocketEventBus``), a NOTIFY on PostgreSQL, which every process's
listener hears. The worker running that
job ends its wait at once and polls; every other process ignores it.

The event goes to an address that is not a user id (user ids are ``usr_…``),
so no ``/v1/events`` stream ever receives it. Like every event it is best
effort: one lost while a listener reconnects costs at most one poll interval,
and a ``resync`` (events may have been missed) wakes every job watched here.
A wake-up only makes a poll happen sooner; what the poll finds comes from the
provider's API, so a wake-up that should not have happened changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Final

from sqlalchemy import Connection

from plasmaart.db.engine import after_commit
from plasmaart.db.listener import ListenerThread
from plasmaart.eventbus import RESYNC, Event, EventBus

log = logging.getLogger(__name__)

WAKEUP_ADDRESS: Final = "worker:poll"
POLL_EVENT: Final = "generation.poll"
# Sent to WAKEUP_ADDRESS too when a job is queued (generation/event_publisher.py).
QUEUED_EVENT: Final = "generation.updated"


class PollWakeups:
    """The wake-ups of the jobs this process runs, by generation id.

    ``watch`` before a job's first poll and ``unwatch`` after its last; a
    wake-up that arrives while the job is polling is kept, so the next
    ``wait`` returns at once instead of losing it.
    """

    # How often the listener looks at its stop flag.
    STOP_CHECK_S = 0.5

    def __init__(self, events: EventBus) -> None:
        self.events = events
        self._lock = threading.Lock()
        self._watched: dict[str, threading.Event] = {}
        self._listener = ListenerThread("plasmaart-poll-wakeups", self._listen)
        self._subscribed = threading.Event()
        # Set when there may be a job to claim: one was queued (in any
        # process), or a job slot of this process came free.
        self.claimable = threading.Event()

    @property
    def listening(self) -> bool:
        """Whether wake-ups published from now on reach this process."""
        if not self.events.listening:
            return False
        return self._subscribed.is_set()

    # -- the sender's side (the webhook) --------------------------------------

    def request_poll(self, conn: Connection, generation_id: str) -> None:
        """Ask whichever worker runs ``generation_id`` to poll now, once the
        transaction of ``conn`` commits."""
        after_commit(
            conn,
            lambda: self.events.publish([WAKEUP_ADDRESS], POLL_EVENT, {"id": generation_id}),
        )

    # -- the worker's side ----------------------------------------------------

    def watch(self, generation_id: str) -> None:
        self.start(wait=0)
        with self._lock:
            self._watched.setdefault(generation_id, threading.Event())

    def unwatch(self, generation_id: str) -> None:
        with self._lock:
            self._watched.pop(generation_id, None)

    def wait(self, generation_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds, less if the job is woken; whether it was."""
        with self._lock:
            woken = self._watched.get(generation_id)
        if woken is None:
            woken = threading.Event()  # not watched: nothing can wake it
        arrived = woken.wait(timeout)
        woken.clear()
        return arrived

    def wake(self, generation_id: str) -> None:
        with self._lock:
            woken = self._watched.get(generation_id)
        if woken is not None:
            woken.set()

    def wake_all(self) -> None:
        with self._lock:
            watched = list(self._watched.values())
        for woken in watched:
            woken.set()
        self.claimable.set()

    # -- the listener -----------------------------------------------------------

    def start(self, wait: float = 5.0) -> None:
        """Start listening (once) and wait up to ``wait`` seconds until
        wake-ups published from now on are received."""
        self._listener.start(on_start=self._subscribed.clear)
        if wait > 0:
            self.events.start(wait)
            self._subscribed.wait(wait)

    def close(self) -> None:
        self._listener.stop()
        # A job still waiting polls at once rather than out its interval.
        self.wake_all()

    def _listen(self, stopping: threading.Event) -> None:
        try:
            asyncio.run(self._pump(stopping))
        except Exception:  # a dead listener only means polls at the interval
            log.exception("the poll wake-up listener stopped")

    async def _pump(self, stopping: threading.Event) -> None:
        subscription = self.events.subscribe(WAKEUP_ADDRESS)
        self._subscribed.set()
        try:
            while not stopping.is_set():
                event = await subscription.next(self.STOP_CHECK_S)
                if event is not None:
                    self._dispatch(event)
        finally:
            self._subscribed.clear()
            self.events.unsubscribe(subscription)

    def _dispatch(self, event: Event) -> None:
        if event.type == RESYNC:
            self.wake_all()
            return
        if event.type == QUEUED_EVENT:
            self.claimable.set()
            return
        if event.type != POLL_EVENT:
            return
        data = event.data()
        generation_id = data.get("id") if isinstance(data, dict) else None
        if isinstance(generation_id, str):
            self.wake(generation_id)

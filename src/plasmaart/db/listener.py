"""A PostgreSQL LISTEN loop that survives its connection: the event bus
(eventbus.py) and the caches' invalidations (caches.py) each run one in
a thread of their own (``ListenerThread``, which the workers' poll wake-ups,
generation/wakeups.py, use for their event-bus subscription too).

It connects, LISTENs on the channel, says so (``listening`` set, then
``on_connected`` called with whether a connection was lost or could not be
made before), and hands every notification's payload to ``on_payload``. A
quiet connection is made to answer every ``ping_s`` seconds (a half-open TCP
socket never errors on its own). When the connection fails it waits,
doubling the wait (with jitter) from the first to the longest of
``backoff_s``, and starts again, until ``stopping`` is set; an outage is
logged when it starts and when it ends (db/outage.py ``Backoff``). Round
trips have a deadline (db/deadline.py). psycopg is imported here, when a thread
listens: SQLite never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from plasmaart.db.outage import Backoff

log = logging.getLogger(__name__)
# The longest a listener's LISTEN or ping waits for the server's answer.
PING_DEADLINE_S = 10.0


class ListenerThread:
    """The one daemon thread a listener runs in: ``start`` starts it unless
    it is running, with a fresh stop flag passed to ``run``; ``stop`` sets
    the flag and waits up to ``timeout`` seconds for the thread to end."""

    def __init__(self, name: str, run: Callable[[threading.Event], None]) -> None:
        self.name = name
        self._run = run
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, on_start: Callable[[], None] | None = None) -> bool:
        """Start the thread if it is not running (``on_start`` is called
        just before); whether it was started now."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._stopping = threading.Event()
            if on_start is not None:
                on_start()
            self._thread = threading.Thread(
                target=self._run, args=(self._stopping,), name=self.name, daemon=True
            )
            self._thread.start()
            return True

    def stop(self, timeout: float = 10) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None:
            thread.join(timeout=timeout)


@dataclass(frozen=True)
class ListenerSettings:
    channel: str
    application_name: str
    poll_s: float  # how often the loop looks at its stop flag
    ping_s: float  # a quiet connection checks itself this often
    backoff_s: tuple[float, float]  # first and longest wait between reconnects
    what: str  # names the loop in its log lines ("event listener")


def listen(
    conninfo: str,
    settings: ListenerSettings,
    *,
    stopping: threading.Event,
    listening: threading.Event,
    on_connected: Callable[[bool], None],
    on_payload: Callable[[str], None],
) -> None:

    from plasmaart.db.deadline import watched_connect

    first_wait, longest_wait = settings.backoff_s
    # An outage is logged when it starts and when it ends, not per attempt.
    backoff = Backoff(settings.what, first_s=first_wait, longest_s=longest_wait, logger=log)
    # True once notifications may have been missed: a dropped connection, or
    # a connect that failed.
    gap = False
    while not stopping.is_set():
        wait = first_wait
        try:
            # The ping (and LISTEN) get an answer within the deadline or the
            # connection is cut: a stalled one is not listened on forever.
            with watched_connect(
                PING_DEADLINE_S,
                conninfo,
                autocommit=True,
                connect_timeout=5,
                application_name=settings.application_name,
            ) as conn:
                conn.execute(f"LISTEN {settings.channel}")
                listening.set()
                backoff.succeeded()
                on_connected(gap)
                gap = False
                quiet = 0.0
                while not stopping.is_set():
                    heard = False
                    for notify in conn.notifies(timeout=settings.poll_s):
                        heard = True
                        on_payload(notify.payload)
                    quiet = 0.0 if heard else quiet + settings.poll_s
                    if quiet >= settings.ping_s:
                        conn.execute("SELECT 1")
                        quiet = 0.0
        except Exception as exc:
            if stopping.is_set():
                break
            wait = backoff.failed(exc)
        finally:
            listening.clear()
        gap = True
        if stopping.wait(wait):
            break

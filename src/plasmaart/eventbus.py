"""The live event bus: small ``{type, data}`` events addressed to user ids.

Anything may ``publish(user_ids, type, data)``, typically from an
``after_commit`` callback, so that an event never announces a change that was
rolled back. The web layer ``subscribe``s one queue per open ``/v1/events``
stream and writes what arrives as Server-Sent Events.

Three implementations, chosen by the database (``create_event_bus``):

* ``InProcessEventBus``: a publish fans out at once to this process's
  subscribers (the base of the two others; alone, for a database no other
  process can reach).
* ``LocalSocketEventBus`` (a SQLite file): the same, plus one datagram to
  each other process of the file (``db/peers.py``), which fans it out to its
  own subscribers: API processes and workers on one machine hear each other.
* ``PostgresEventBus``: a publish is a ``pg_notify`` on one channel, and one
  listener connection per process (a daemon thread) fans what it hears out to
  the local subscribers, so an event published by any API or worker process
  reaches the streams of every process. Events published while the listener
  is reconnecting are lost; subscribers then get a ``resync`` event telling
  their client to fetch the current state again.

Events are best effort and small: the durable record of anything important
(balances, notifications, generations) stays in the database, and a client
that gets ``resync`` re-reads it from there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection

from plasmaart.db.engine import Database, after_commit
from plasmaart.db.listener import ListenerSettings, ListenerThread, listen
from plasmaart.db.outage import Backoff, is_unavailable
from plasmaart.db.peers import EVENT as PEER_EVENT
from plasmaart.db.peers import MAX_PAYLOAD as PEER_LIMIT
from plasmaart.db.peers import RESYNC as PEER_RESYNC
from plasmaart.db.peers import PeerChannel

if TYPE_CHECKING:
    pass  # imported where it listens: SQLite never loads it

log = logging.getLogger(__name__)

CHANNEL = "plasmaart_events"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more (default build).
NOTIFY_LIMIT = 7900
# An event's data must fit one NOTIFY together with some of its user ids; the
# same limit holds in-process, so that SQLite tests catch an oversized event.
MAX_DATA_BYTES = 6000
# Events queued for one subscriber before the oldest are dropped: a client
# that falls this far behind gets ``resync`` instead of an unbounded queue.
SUBSCRIBER_CAPACITY = 256
RESYNC = "resync"
_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return iso_utc(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def iso_utc(value: datetime) -> str:
    """A timestamp as the API writes it: ISO 8601 UTC with a ``Z``."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default, ensure_ascii=False)


@dataclass(frozen=True)
class Event:
    type: str
    # The event's data as JSON text: encoded once at publish, written as-is.
    data_json: str

    def data(self) -> Any:
        return json.loads(self.data_json)

    @classmethod
    def resync(cls, reason: str, **extra: Any) -> Event:
        return cls(RESYNC, _dumps({"reason": reason, **extra}))


def make_event(type: str, data: Mapping[str, Any]) -> Event:
    """Validate and encode an event; an oversized one becomes ``resync``."""
    if not _TYPE.match(type):
        raise ValueError(f"not an event type: {type!r}")
    encoded = _dumps(dict(data))
    if len(encoded.encode()) > MAX_DATA_BYTES:
        # Events carry small state; the client can fetch a big one itself.
        log.warning("event %s too large (%d bytes), sent as resync", type, len(encoded))
        return Event.resync("event_too_large", type=type)
    return Event(type, encoded)


class Subscription:
    """One subscriber's bounded queue, read on the event loop that created it.

    Publishers on any thread hand events over with ``call_soon_threadsafe``;
    only the loop's thread touches the queue itself.
    """

    def __init__(
        self, user_id: str, loop: asyncio.AbstractEventLoop, capacity: int = SUBSCRIBER_CAPACITY
    ) -> None:
        if capacity < 1:
            raise ValueError("a subscription needs room for at least one event")
        self.user_id = user_id
        self.capacity = capacity
        self._loop = loop
        self._pending: deque[Event] = deque()
        self._missed = 0
        self._arrived = asyncio.Event()

    def deliver(self, event: Event) -> bool:
        """Queue ``event`` from any thread; False once the loop is gone."""
        try:
            self._loop.call_soon_threadsafe(self._offer, event)
        except RuntimeError:  # the loop was closed: its stream is over
            return False
        return True

    def _offer(self, event: Event) -> None:
        if len(self._pending) >= self.capacity:
            self._pending.popleft()
            self._missed += 1
        self._pending.append(event)
        self._arrived.set()

    async def next(self, timeout: float) -> Event | None:
        """The next event, ``resync`` first if some were dropped, or None
        when nothing arrived within ``timeout`` seconds."""
        if not self._pending and not self._missed:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return None
        if self._missed:
            missed, self._missed = self._missed, 0
            return Event.resync("overflow", missed=missed)
        return self._pending.popleft()


class EventBus(Protocol):
    def publish(self, user_ids: Iterable[str], type: str, data: Mapping[str, Any]) -> None:
        """Send ``{type, data}`` to the subscribers of each of ``user_ids``, in
        every process. Best effort: a transport failure is logged, not raised."""
        ...

    def publish_in(
        self, conn: Connection, user_ids: Iterable[str], type: str, data: Mapping[str, Any]
    ) -> None:
        """``publish`` as part of ``conn``'s transaction: sent if and only if
        it commits, even if this process dies right after the commit (on
        PostgreSQL the NOTIFY is a statement of the transaction; elsewhere
        the event goes out after commit, from the process that committed)."""
        ...

    def subscribe(self, user_id: str, *, capacity: int = SUBSCRIBER_CAPACITY) -> Subscription:
        """A queue of ``user_id``'s events; call on the event loop that reads it."""
        ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    def subscriber_count(self, user_id: str | None = None) -> int: ...

    def start(self, wait: float = 5.0) -> None:
        """Start receiving other processes' events (a no-op in-process)."""
        ...

    @property
    def listening(self) -> bool:
        """Whether other processes' events reach this one now."""
        ...

    def close(self) -> None: ...


class Listener(Protocol):
    """Told of the events of one address on the thread that received them
    (``add_listener``); it must not block."""

    @property
    def address(self) -> str: ...

    def __call__(self, event: Event) -> None: ...


class InProcessEventBus:
    """Fan-out to this process's subscribers, safe to publish from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}
        self._listeners: dict[str, list[Listener]] = {}

    # -- subscribers -------------------------------------------------------

    def subscribe(self, user_id: str, *, capacity: int = SUBSCRIBER_CAPACITY) -> Subscription:
        subscription = Subscription(user_id, asyncio.get_running_loop(), capacity)
        with self._lock:
            self._subscribers.setdefault(user_id, set()).add(subscription)
        return subscription

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every event of ``listener.address`` (an
        address that is no user's), and with ``resync``. Not a subscriber:
        ``subscriber_count`` leaves it out."""
        with self._lock:
            self._listeners.setdefault(listener.address, []).append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            group = self._listeners.get(listener.address, [])
            if listener in group:
                group.remove(listener)

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            group = self._subscribers.get(subscription.user_id)
            if group is None:
                return
            group.discard(subscription)
            if not group:
                del self._subscribers[subscription.user_id]

    def subscriber_count(self, user_id: str | None = None) -> int:
        with self._lock:
            if user_id is not None:
                return len(self._subscribers.get(user_id, ()))
            return sum(len(group) for group in self._subscribers.values())

    def _fan_out(self, user_ids: Iterable[str], event: Event) -> None:
        with self._lock:
            addresses = list(user_ids)
            targets = [s for u in addresses for s in self._subscribers.get(u, ())]
            told = [
                listener
                for address in (self._listeners if event.type == RESYNC else addresses)
                for listener in self._listeners.get(address, ())
            ]
        for listener in told:
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed")
        for subscription in targets:
            if not subscription.deliver(event):
                self.unsubscribe(subscription)

    def _fan_out_to_all(self, event: Event) -> None:
        with self._lock:
            users = list(self._subscribers)
        self._fan_out(users, event)

    # -- publishing ----------------------------------------------------------

    def publish(self, user_ids: Iterable[str], type: str, data: Mapping[str, Any]) -> None:
        users = list(dict.fromkeys(user_ids))
        if users:
            self._fan_out(users, make_event(type, data))

    def publish_in(
        self, conn: Connection, user_ids: Iterable[str], type: str, data: Mapping[str, Any]
    ) -> None:
        """After ``conn`` commits, ``publish`` (every publisher of this bus is
        a process on this machine: the event cannot outlive it anyway)."""
        users = list(user_ids)
        payload = dict(data)
        after_commit(conn, lambda: self.publish(users, type, payload))

    @property
    def listening(self) -> bool:
        """Whether events published from now on in any process reach this
        one's subscribers (always: every publisher is in this process)."""
        return True

    def start(self, wait: float = 5.0) -> None:
        """Nothing to start: every publisher is in this process."""

    def close(self) -> None:
        """Nothing to stop; open streams end with their connections."""


def notify_payloads(users: list[str], event: Event, limit: int = NOTIFY_LIMIT) -> list[str]:
    """NOTIFY payloads for ``event``, the user ids split so each fits
    ``limit`` bytes."""
    head = f'{{"t":{_dumps(event.type)},"d":{event.data_json},"u":['
    payloads: list[str] = []
    chunk: list[str] = []
    size = len(head.encode()) + 2
    for user in users:
        encoded = _dumps(user)
        extra = len(encoded.encode()) + 1
        if chunk and size + extra > limit:
            payloads.append(head + ",".join(chunk) + "]}")
            chunk, size = [], len(head.encode()) + 2
        chunk.append(encoded)
        size += extra
    if chunk:
        payloads.append(head + ",".join(chunk) + "]}")
    return payloads


def decode_payload(payload: str | bytes) -> tuple[list[str], Event] | None:
    """The user ids and the event of a payload ``notify_payloads`` made (a
    NOTIFY's or a peer's datagram); None, logged, if it is malformed."""
    try:
        message = json.loads(payload)
        event = Event(str(message["t"]), _dumps(message["d"]))
        users = [str(user) for user in message["u"]]
    except (ValueError, KeyError, TypeError):
        log.warning("ignored a malformed event payload: %.200r", payload)
        return None
    return users, event


def listener_conninfo(db: Database) -> str:
    """The database URL in the form psycopg itself accepts."""
    url = db.engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgresEventBus(InProcessEventBus):
    """Publishes with ``pg_notify``; one listener thread per process delivers."""

    POLL_S = 0.5  # how often the listener looks at its stop flag
    PING_S = 30.0  # a quiet listener checks its connection this often
    BACKOFF_S = (0.2, 30.0)  # first and longest wait between reconnects
    APPLICATION_NAME = "plasmaart-events"
    SENDER_IDLE_S = 5.0  # an idle sender thread ends after this long
    PUBLISH_WAIT_S = 5.0  # a publisher waits at most this long for its send

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        self._conninfo = listener_conninfo(db)
        self._listener = ListenerThread(CHANNEL, self._listen)
        self._listening = threading.Event()
        # Events published, not yet sent: (type, NOTIFY payload).
        self._outbox: deque[tuple[str, str]] = deque()
        self._outbox_lock = threading.Lock()
        self._sent = threading.Condition(self._outbox_lock)
        self._queued = threading.Event()
        self._sender: threading.Thread | None = None
        self._in_flight = 0
        self._sent_seq = 0
        self._outage = Backoff("event sender", logger=log)

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def publish(self, user_ids: Iterable[str], type: str, data: Mapping[str, Any]) -> None:
        """Send the event's NOTIFYs and return once they are sent (group
        commit): one sender thread sends whatever has been published
        meanwhile in one transaction, so concurrent publishers (a busy
        worker's jobs, an API process's requests) share one round trip, and
        an event is out before its publisher goes on, as when each sent its
        own. In the order published."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return
        payloads = notify_payloads(users, make_event(type, data))
        with self._sent:
            self._outbox.extend((type, payload) for payload in payloads)
            mine = self._published_seq()
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(
                    target=self._send, name=f"{CHANNEL}-sender", daemon=True
                )
                self._sender.start()
            self._queued.set()
            # Best effort: a stuck database does not hold the publisher long.
            self._sent.wait_for(lambda: self._sent_seq >= mine, timeout=self.PUBLISH_WAIT_S)

    def publish_in(
        self, conn: Connection, user_ids: Iterable[str], type: str, data: Mapping[str, Any]
    ) -> None:
        """The event's NOTIFY as a statement of ``conn``'s transaction:
        PostgreSQL delivers it at commit, and never if it rolls back, so a
        process killed just after committing cannot lose it (a final state
        announced after commit was lost that way, one run of the bank test in
        eight). One statement in the transaction instead of the sender's own
        transaction."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return
        for payload in notify_payloads(users, make_event(type, data)):
            conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event published so far was sent (or failed)."""
        with self._sent:
            target = self._published_seq()
            return self._sent.wait_for(lambda: self._sent_seq >= target, timeout=timeout)

    def _published_seq(self) -> int:
        return self._sent_seq + self._in_flight + len(self._outbox)

    def _send(self) -> None:
        while True:
            self._queued.wait(self.SENDER_IDLE_S)
            with self._outbox_lock:
                batch = list(self._outbox)
                self._outbox.clear()
                self._queued.clear()
                self._in_flight = len(batch)
                if not batch:
                    # Idle: the thread ends; the next publish starts another.
                    self._sender = None
                    return
            try:
                with self._db.engine.connect() as conn:
                    # One round trip for the batch (psycopg's pipeline).
                    conn.exec_driver_sql(
                        "SELECT pg_notify(%s, %s)", [(CHANNEL, payload) for _type, payload in batch]
                    )
                    conn.commit()
            except Exception as exc:
                # Events are best effort; the state they announce is committed.
                if is_unavailable(exc):  # an outage: said once, and once when it ends
                    self._outage.failed(exc)
                else:
                    log.exception(
                        "could not publish %d event(s): %s",
                        len(batch),
                        ", ".join(sorted({type for type, _payload in batch})),
                    )
            else:
                self._outage.succeeded()
            finally:
                with self._sent:
                    self._sent_seq += len(batch)
                    self._in_flight = 0
                    self._sent.notify_all()

    def subscribe(self, user_id: str, *, capacity: int = SUBSCRIBER_CAPACITY) -> Subscription:
        # Normally started with the app; never block the event loop here.
        self.start(wait=0)
        return super().subscribe(user_id, capacity=capacity)

    def start(self, wait: float = 5.0) -> None:
        """Start the listener thread (once) and wait up to ``wait`` seconds
        for it to be listening. If the database is down it keeps retrying."""
        self._listener.start()
        if wait > 0:
            self._listening.wait(wait)

    def close(self) -> None:
        self.flush()  # what was published before closing is sent
        self._listener.stop()

    def _listen(self, stopping: threading.Event) -> None:
        listen(
            self._conninfo,
            ListenerSettings(
                CHANNEL,
                self.APPLICATION_NAME,
                self.POLL_S,
                self.PING_S,
                self.BACKOFF_S,
                "event listener",
            ),
            stopping=stopping,
            listening=self._listening,
            on_connected=self._connected,
            on_payload=self._dispatch,
        )

    def _connected(self, reconnected: bool) -> None:
        # Events may have been missed while the connection was down:
        # subscribers resynchronise from the database.
        if reconnected:
            self._fan_out_to_all(Event.resync("reconnected"))

    def _dispatch(self, payload: str) -> None:
        decoded = decode_payload(payload)
        if decoded is not None:
            self._fan_out(*decoded)


class LocalSocketEventBus(InProcessEventBus):
    """A SQLite file's bus: local fan-out, and a datagram to each other
    process of the file (``db/peers.py``), which fans it out in its turn."""

    def __init__(self, peers: PeerChannel) -> None:
        super().__init__()
        self._peers = peers
        peers.on(PEER_EVENT, self._dispatch)
        peers.on(PEER_RESYNC, lambda _payload: self._fan_out_to_all(Event.resync("missed")))

    @property
    def listening(self) -> bool:
        return self._peers.receiving

    def publish(self, user_ids: Iterable[str], type: str, data: Mapping[str, Any]) -> None:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return
        event = make_event(type, data)
        self._fan_out(users, event)
        for payload in notify_payloads(users, event, limit=PEER_LIMIT):
            self._peers.send(PEER_EVENT, payload.encode())

    def subscribe(self, user_id: str, *, capacity: int = SUBSCRIBER_CAPACITY) -> Subscription:
        self._peers.start()  # normally started with the app already
        return super().subscribe(user_id, capacity=capacity)

    def start(self, wait: float = 5.0) -> None:
        """Receive the other processes' events: bound at once, so nothing to
        wait for (``wait`` is for PostgreSQL's listener). ``OSError`` if the
        socket cannot be made beside the database."""
        del wait
        self._peers.start()

    def close(self) -> None:
        """Nothing to stop here: the database's channel closes with it."""

    def _dispatch(self, payload: bytes) -> None:
        decoded = decode_payload(payload)
        if decoded is not None:
            self._fan_out(*decoded)


def create_event_bus(db: Database) -> EventBus:
    """The bus for ``db``: LISTEN/NOTIFY on PostgreSQL, local sockets
    between the processes of a SQLite file."""
    if db.is_sqlite:
        return InProcessEventBus() if db.peers is None else LocalSocketEventBus(db.peers)
    return PostgresEventBus(db)

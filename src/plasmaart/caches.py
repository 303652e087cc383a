"""Per-process caches of what every request reads, with explicit invalidation.

Every request needs to know who calls (API key or session → user), the plan
of the wallets it may spend from, and the catalog in force. Those change
rarely and only through a handful of writes, so each process keeps them in
bounded LRU caches (``TtlLru``) and drops an entry when a write changes it:

* A write names what it changes with ``invalidate(conn, scope)``
  (db/engine.py): ``user:<id>``, ``session:<token hash>``, ``wallet:<id>``,
  ``subscription:<id>``, ``catalog``, or ``*`` (everything, e.g. when the
  sandbox test clock moves). Repositories call it next to the SQL that
  changes a cached row, so no route can forget it.
* Once the transaction commits, this process evicts every entry tagged with
  one of the scopes, before the write's caller returns: the next request in
  this process sees the change.
* On PostgreSQL the same scopes go to every other process as a NOTIFY on the
  channel ``plasmaart_cache``, sent inside the writing transaction (so it is
  delivered exactly when, and only if, it commits). ``CacheHub`` listens on
  its own connection and evicts what it hears. Entries live ``PG_TTL_S``;
  while the listener is not connected (starting, or reconnecting after a lost
  connection, which also clears every cache) they live ``SQLITE_TTL_S``.
* On a SQLite file the same scopes go, after the commit, as a datagram to
  every other process of the file (``db/peers.py``): API processes, workers
  and CLI commands on one machine. Entries live ``PG_TTL_S`` while this
  process receives (its socket is bound: the API and the worker bind it at
  start-up), ``SQLITE_TTL_S`` otherwise; a process that starts receiving, or
  that may have missed a datagram, starts from an empty cache.

A load that raced an eviction is not stored: each cache has an epoch bumped by
every eviction, and a value read under an older epoch is returned but not
kept. Cached values are immutable (frozen dataclasses, tuples).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from plasmaart.db.engine import CACHE_CHANNEL, Database
from plasmaart.db.listener import ListenerSettings, ListenerThread, listen
from plasmaart.db.peers import CACHE as PEER_CACHE
from plasmaart.db.peers import MAX_PAYLOAD as PEER_LIMIT
from plasmaart.db.peers import RESYNC as PEER_RESYNC

if TYPE_CHECKING:
    pass  # imported where it listens: SQLite never loads it

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

# How long an entry is trusted without an invalidation that could reach it.
SQLITE_TTL_S: Final = 0.5
PG_TTL_S: Final = 30.0
EVERYTHING: Final = "*"


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    born: float  # time.monotonic() when the read that produced it began
    tags: frozenset[str]


class TtlLru(Generic[K, V]):
    """A bounded, thread-safe LRU map whose entries expire and carry tags
    (the invalidation scopes that evict them)."""

    def __init__(self, name: str, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("a cache holds at least one entry")
        self.name = name
        self.max_size = max_size
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def epoch(self) -> int:
        """Read before loading a value; pass it back to ``put``."""
        return self._epoch

    def get(self, key: K, ttl: float) -> V | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now - entry.born >= ttl:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.value

    def put(self, key: K, value: V, *, epoch: int, born: float, tags: Iterable[str]) -> bool:
        """Keep ``value`` unless an eviction happened since ``epoch`` was read
        (the value may predate it); whether it was kept."""
        with self._lock:
            if epoch != self._epoch:
                return False
            self._entries[key] = _Entry(value, born, frozenset(tags))
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
            return True

    def evict(self, scopes: frozenset[str]) -> int:
        """Drop the entries tagged with any of ``scopes`` (all of them for
        ``*``); how many were dropped."""
        with self._lock:
            self._epoch += 1
            if EVERYTHING in scopes:
                dropped = len(self._entries)
                self._entries.clear()
                return dropped
            doomed = [key for key, entry in self._entries.items() if entry.tags & scopes]
            for key in doomed:
                del self._entries[key]
            return len(doomed)


class CacheHub:
    """The caches of one process (one ``Database``), their TTL and their
    invalidation: local after commit, and from every process through LISTEN
    on ``plasmaart_cache`` (PostgreSQL) or the file's peer sockets (SQLite)."""

    POLL_S = 0.25  # how often the listener looks at its stop flag
    PING_S = 30.0
    BACKOFF_S = (0.2, 10.0)
    APPLICATION_NAME = "plasmaart-cache"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.origin = f"{os.getpid()}-{id(self):x}"
        self._caches: list[TtlLru[Any, Any]] = []
        self._lock = threading.Lock()
        self._listener = ListenerThread("plasmaart-cache-invalidations", self._listen)
        self._listening = threading.Event()
        db.cache_origin = self.origin
        db.invalidation_listeners.append(self.evict)
        peers = db.peers
        if peers is not None:
            db.invalidation_listeners.append(self._tell_peers)
            peers.on(PEER_CACHE, self._dispatch)
            everything = frozenset({EVERYTHING})
            peers.on(PEER_RESYNC, lambda _payload: self.evict(everything))
            # What changed before this process heard the others is unknown.
            peers.on_start(lambda: self.evict(everything))

    def cache(self, name: str, max_size: int) -> TtlLru[Any, Any]:
        created: TtlLru[Any, Any] = TtlLru(name, max_size)
        with self._lock:
            self._caches.append(created)
        return created

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def ttl(self) -> float:
        """How long an entry may be served: long while another process's
        invalidations are heard, short otherwise."""
        if self.db.is_sqlite:
            peers = self.db.peers
            return PG_TTL_S if peers is not None and peers.receiving else SQLITE_TTL_S
        if not self._listening.is_set():
            self.start()
            return SQLITE_TTL_S
        return PG_TTL_S

    def evict(self, scopes: frozenset[str]) -> None:
        with self._lock:
            caches = list(self._caches)
        for cache in caches:
            cache.evict(scopes)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            caches = list(self._caches)
        return {c.name: {"size": len(c), "hits": c.hits, "misses": c.misses} for c in caches}

    # -- the PostgreSQL listener ---------------------------------------------

    def start(self, wait: float = 0.0) -> None:
        """Start listening (once) and wait up to ``wait`` seconds until other
        processes' invalidations are heard (a SQLite file: at once)."""
        if self.db.is_sqlite:
            if self.db.peers is not None:
                self.db.peers.start()
            return
        self._listener.start()
        if wait > 0:
            self._listening.wait(wait)

    def close(self) -> None:
        self._listener.stop()

    def _conninfo(self) -> str:
        url = self.db.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _listen(self, stopping: threading.Event) -> None:
        listen(
            self._conninfo(),
            ListenerSettings(
                CACHE_CHANNEL,
                self.APPLICATION_NAME,
                self.POLL_S,
                self.PING_S,
                self.BACKOFF_S,
                "cache listener",
            ),
            stopping=stopping,
            listening=self._listening,
            # Whatever was missed before this point is gone with the entries:
            # start from an empty cache.
            on_connected=lambda _reconnected: self.evict(frozenset({EVERYTHING})),
            on_payload=self._dispatch,
        )

    def _tell_peers(self, scopes: frozenset[str]) -> None:
        """After a commit on a SQLite file: the other processes evict too."""
        peers = self.db.peers
        if peers is None:
            return
        payload = json.dumps({"o": self.origin, "s": sorted(scopes)}, separators=(",", ":"))
        if len(payload.encode()) > PEER_LIMIT:
            payload = json.dumps({"o": self.origin, "s": [EVERYTHING]}, separators=(",", ":"))
        peers.send(PEER_CACHE, payload.encode())

    def _dispatch(self, payload: str | bytes) -> None:
        try:
            message = json.loads(payload)
            origin = str(message["o"])
            scopes = frozenset(str(scope) for scope in message["s"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed cache invalidation: %.200s", payload)
            return
        if origin != self.origin:  # this process evicted after its own commit
            self.evict(scopes)


def cached(
    hub: CacheHub,
    cache: TtlLru[K, V],
    key: K,
    load: Callable[[], V | None],
    tags: Callable[[V], Iterable[str]],
) -> V | None:
    """``cache[key]``, or ``load()`` kept under ``tags`` (None is not kept)."""
    found = cache.get(key, hub.ttl())
    if found is not None:
        return found
    epoch, born = cache.epoch, time.monotonic()
    value = load()
    if value is not None:
        cache.put(key, value, epoch=epoch, born=born, tags=tags(value))
    return value

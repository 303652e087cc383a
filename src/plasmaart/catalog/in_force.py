"""The catalog in force at a moment: the catalog file plus the announced
changes due by then.

The file is loaded once per process; changes live in the database, which
every process (API servers, workers) reads, so all of them switch to a change
at the instant it takes effect. The changes not withdrawn (a short list) are
cached per process once ``attach`` gave it a ``CacheHub``, and invalidated by
scheduling or withdrawing a change (scope ``catalog``; caches.py); which of
them are in force is decided at every call from the moment asked about, so
the cache serves the new catalog from the change's effective instant on, never
the old one past it. Building the catalog from the changes in force is cached
per process too, keyed by which changes are in force (the effective boundary
crossed), so it is done again only when one takes effect.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from plasmaart.caches import CacheHub, TtlLru, cached
from plasmaart.catalog import repository as repo
from plasmaart.catalog.changes import CatalogChange, apply_changes
from plasmaart.catalog.schema import Catalog
from plasmaart.db.engine import pending_invalidations


class CatalogInForce:
    # A handful of sets in force are live at once: now, and the period
    # starts of current subscriptions on either side of a plan change.
    CACHE_SIZE = 16

    def __init__(self, base: Catalog) -> None:
        self.base = base
        self._cache: OrderedDict[tuple[str, ...], Catalog] = OrderedDict()
        self._lock = threading.Lock()
        self._hub: CacheHub | None = None
        self._changes: TtlLru[str, tuple[CatalogChange, ...]] | None = None

    def attach(self, hub: CacheHub) -> None:
        """Cache the announced changes in ``hub`` (invalidated by scope ``catalog``)."""
        self._hub = hub
        self._changes = hub.cache("catalog_changes", 1)

    def changes(self, conn: Connection) -> tuple[CatalogChange, ...]:
        """Every change not withdrawn, in order of effect (cached when attached)."""
        hub, cache = self._hub, self._changes
        if hub is None or cache is None or pending_invalidations(conn):
            return tuple(repo.active_changes(conn))

        def load() -> tuple[CatalogChange, ...]:
            return tuple(repo.active_changes(conn))

        found = cached(hub, cache, "active", load, lambda _: ("catalog",))
        return () if found is None else found

    def at(self, conn: Connection, moment: datetime) -> Catalog:
        """The catalog whose prices and terms apply to what starts at ``moment``."""
        return self.applying([c for c in self.changes(conn) if c.effective_at <= moment])

    def applying(self, changes: Sequence[CatalogChange]) -> Catalog:
        """The base catalog with ``changes`` applied in order of effect (cached)."""
        if not changes:
            return self.base
        key = tuple(sorted(change.id for change in changes))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        catalog = apply_changes(self.base, changes, max(c.effective_at for c in changes))
        with self._lock:
            self._cache[key] = catalog
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return catalog

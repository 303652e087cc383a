"""The one catalog service: the file as loaded (``base``) and the catalog in
force (``now``, ``at``): the file plus the announced changes due by then.

Read the catalog in force wherever a price, a plan's benefits or a model's
availability decides something or is shown: ``catalogs.now(conn)``, or
``catalogs.at(conn, moment)`` for what started at ``moment`` (a billing
period keeps the terms it started with). ``base`` is for what announced
changes cannot touch (ids, names, descriptions, the queue's terms, credit
packs, the currency: ``changes.CHANGEABLE_FIELDS`` lists what they can).

The file is loaded once per process; changes live in the database, which
every process (API servers, workers) reads, so all of them switch to a change
at the instant it takes effect. The changes not withdrawn (a short list) are
cached per process when it is built with a ``CacheHub``, and invalidated by
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
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from plasmaart.caches import CacheHub, TtlLru, cached
from plasmaart.catalog import repository as repo
from plasmaart.catalog.changes import CatalogChange, apply_changes
from plasmaart.catalog.schema import Catalog
from plasmaart.clock import Clock
from plasmaart.db.engine import pending_invalidations


@dataclass(frozen=True)
class CatalogTimeline:
    """The catalog in force at any moment, from one read of the announced
    changes: for a batch (the plans of many wallets, each period starting at
    its own moment) without a query per moment."""

    catalogs: Catalogs
    changes: tuple[CatalogChange, ...]

    def at(self, moment: datetime) -> Catalog:
        return self.catalogs.applying([c for c in self.changes if c.effective_at <= moment])


class Catalogs:
    # A handful of sets in force are live at once: now, and the period
    # starts of current subscriptions on either side of a plan change.
    CACHE_SIZE = 16

    def __init__(self, base: Catalog, clock: Clock, *, caches: CacheHub | None = None) -> None:
        # The catalog file as loaded, without the announced changes.
        self.base = base
        self.clock = clock
        self._cache: OrderedDict[tuple[str, ...], Catalog] = OrderedDict()
        self._lock = threading.Lock()
        # The announced changes, cached in ``caches`` when given
        # (invalidated by scope ``catalog``).
        self._hub = caches
        self._changes: TtlLru[str, tuple[CatalogChange, ...]] | None = (
            None if caches is None else caches.cache("catalog_changes", 1)
        )

    def now(self, conn: Connection) -> Catalog:
        """The catalog in force now: what is sold, and on what terms."""
        return self.at(conn, self.clock.now())

    def at(self, conn: Connection, moment: datetime) -> Catalog:
        """The catalog whose prices and terms apply to what starts at ``moment``."""
        return self.timeline(conn).at(moment)

    def timeline(self, conn: Connection) -> CatalogTimeline:
        """The catalog in force at any moment, from one read of the changes."""
        return CatalogTimeline(self, self.changes(conn))

    def changes(self, conn: Connection) -> tuple[CatalogChange, ...]:
        """Every change not withdrawn, in order of effect (cached when attached)."""
        hub, cache = self._hub, self._changes
        if hub is None or cache is None or pending_invalidations(conn):
            return tuple(repo.active_changes(conn))

        def load() -> tuple[CatalogChange, ...]:
            return tuple(repo.active_changes(conn))

        found = cached(hub, cache, "active", load, lambda _: ("catalog",))
        return () if found is None else found

    def applying(self, changes: Sequence[CatalogChange]) -> Catalog:
        """The base catalog with ``changes`` applied in order of effect (cached)."""
        if not changes:
            return self.base
        key = tuple(sorted(change.id for change in changes))
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        catalog = apply_changes(self.base, changes, max(c.effective_at for c in changes))
        with self._lock:
            self._cache[key] = catalog
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return catalog

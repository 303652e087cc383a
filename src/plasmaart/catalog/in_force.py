"""The catalog in force at a moment: the catalog file plus the announced
changes due by then.

The file is loaded once per process; changes live in the database, which
every process (API servers, workers) reads, so all of them switch to a change
at the instant it takes effect. Reading the due changes is one small indexed
query; building the catalog from them is cached per process, keyed by which
changes are in force, so it is done again only when one takes effect.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from plasmaart.catalog import repository as repo
from plasmaart.catalog.changes import CatalogChange, apply_changes
from plasmaart.catalog.schema import Catalog


class CatalogInForce:
    # A handful of sets in force are live at once: now, and the period
    # starts of current subscriptions on either side of a plan change.
    CACHE_SIZE = 16

    def __init__(self, base: Catalog) -> None:
        self.base = base
        self._cache: OrderedDict[tuple[str, ...], Catalog] = OrderedDict()
        self._lock = threading.Lock()

    def at(self, conn: Connection, moment: datetime) -> Catalog:
        """The catalog whose prices and terms apply to what starts at ``moment``."""
        return self.applying(repo.active_changes(conn, until=moment))

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

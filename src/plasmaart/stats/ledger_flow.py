"""The journal's running sums, read incrementally (the credit counters of /metrics).

Every process keeps its own sums of the journal by kind of entry and pair of
accounts, and a cursor: the highest entry id read. A refresh reads only the
entries above the cursor, one primary-key range, so a scrape costs the same
whatever the journal's size; only a process's first refresh sums the whole
journal (docs/deployment.md#monitoring measures it). Every process sums the
same committed entries, so each reports the same totals: the numbers are the
database's, not the process's, and a scrape may reach any process.

Ids are given when an entry is inserted, but transactions commit in any
order (PostgreSQL): when a refresh reads up to id 101, entry 100 may still be
uncommitted and appear later. A refresh whose range holds fewer entries than
ids looks, in the last ``TAIL_IDS`` ids of the range, for those missing and
reads them again at each refresh until they appear, or for ``GRACE_S``
seconds: an id missing longer was a rolled-back transaction (a gap a sequence
never fills), or a transaction open longer than any the platform makes.
Each refresh runs in one snapshot (``Database.snapshot``), so what it counts
and what it finds missing are the same view of the journal. A refresh first
checks that the entry at the cursor is still the one it read: if not, the
database was replaced (a restore) and the sums start again from nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from plasmaart.stats import metrics_repository as repo

# How far below the top of a range missing ids are looked for: ids a
# transaction still open at the refresh may hold.
TAIL_IDS = 10_000
# How long a missing id is looked for again before it is taken for a gap.
GRACE_S = 300.0
# At most this many missing ids are remembered (the highest).
MAX_MISSING = 10_000
# Ids per IN (...) list when missing ids are read again.
_CHUNK = 1_000

Accounts = tuple[str, str, str]  # (kind, from_account, to_account)


@dataclass(frozen=True)
class FlowTotals:
    """Credits and entries of the whole journal, by (kind, from, to)."""

    credits: dict[Accounts, int]
    entries: dict[Accounts, int]
    cursor: int  # the highest id read
    missing: int  # ids below the cursor still looked for


class JournalTotals:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.cursor = 0
        self._credits: dict[Accounts, int] = {}
        self._entries: dict[Accounts, int] = {}
        # Missing id -> when it was first found missing (monotonic seconds).
        self._missing: dict[int, float] = {}
        # The entry at the cursor, as it was read (journal_stamp).
        self._stamp: tuple[Any, ...] | None = None

    @property
    def missing(self) -> int:
        """Ids below the cursor still looked for."""
        with self._lock:
            return len(self._missing)

    def _add(self, part: repo.FlowPart) -> None:
        key = (part.kind, part.from_account, part.to_account)
        self._credits[key] = self._credits.get(key, 0) + part.credits
        self._entries[key] = self._entries.get(key, 0) + part.entries

    def refresh(self, conn: Connection) -> FlowTotals:
        """Read what the journal gained since the last refresh. ``conn``
        must be one snapshot (``Database.snapshot``)."""
        with self._lock:
            now = self._monotonic()
            self._recover_missing(conn, now)
            if self.cursor and repo.journal_stamp(conn, self.cursor) != self._stamp:
                # The entry the cursor stopped at is gone or another: the
                # database was replaced (a restore). Count it again from the start.
                self.cursor = 0
                self._credits.clear()
                self._entries.clear()
                self._missing.clear()
            top = repo.journal_top(conn)
            if top > self.cursor:
                flow = repo.journal_flow(conn, self.cursor, top)
                for part in flow.parts:
                    self._add(part)
                if flow.rows < top - self.cursor:
                    self._note_missing(conn, top, now)
                self.cursor = top
                self._stamp = repo.journal_stamp(conn, top)
            return FlowTotals(
                dict(self._credits), dict(self._entries), self.cursor, len(self._missing)
            )

    def _recover_missing(self, conn: Connection, now: float) -> None:
        if not self._missing:
            return
        ids = sorted(self._missing)
        for start in range(0, len(ids), _CHUNK):
            found = repo.journal_entries_by_id(conn, ids[start : start + _CHUNK])
            for entry_id, part in found.items():
                self._add(part)
                del self._missing[entry_id]
        for entry_id, since in list(self._missing.items()):
            if now - since > GRACE_S:
                del self._missing[entry_id]

    def _note_missing(self, conn: Connection, top: int, now: float) -> None:
        low = max(self.cursor, top - TAIL_IDS)
        present = set(repo.journal_ids(conn, low, top))
        for entry_id in range(low + 1, top + 1):
            if entry_id not in present:
                self._missing.setdefault(entry_id, now)
        if len(self._missing) > MAX_MISSING:
            for entry_id in sorted(self._missing)[: len(self._missing) - MAX_MISSING]:
                del self._missing[entry_id]

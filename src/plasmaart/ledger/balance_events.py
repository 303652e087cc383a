"""``balance.updated`` live events: the ledger's balance changes, to the
wallet's owner (its user, or its team's owner), on the event bus."""

from __future__ import annotations

import threading
from collections import OrderedDict

from plasmaart.db.engine import Database
from plasmaart.eventbus import EventBus
from plasmaart.ledger import repository as repo


class BalanceEvents:
    """A ledger balance listener: ``balance.updated`` to the wallet's owner.

    Called after commit with ``(wallet_id, available, held)``. Wallets never
    change owner, so owners are cached (bounded, most recently used kept).
    """

    CACHE_SIZE = 10_000

    def __init__(self, db: Database, events: EventBus) -> None:
        self._db = db
        self._events = events
        self._owners: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def owner_of(self, wallet_id: str) -> str | None:
        with self._lock:
            if wallet_id in self._owners:
                self._owners.move_to_end(wallet_id)
                return self._owners[wallet_id]
        with self._db.read() as conn:
            owner = repo.wallet_owner_user(conn, wallet_id)
        if owner is not None:  # an unknown wallet may yet be created: not cached
            with self._lock:
                self._owners[wallet_id] = owner
                while len(self._owners) > self.CACHE_SIZE:
                    self._owners.popitem(last=False)
        return owner

    def __call__(self, wallet_id: str, available: int, held: int) -> None:
        owner = self.owner_of(wallet_id)
        if owner is not None:
            self._events.publish([owner], "balance.updated", {"available": available, "held": held})

"""The balance watch: which balances of a wallet its controls want to see.

Each control is a ``WatchSource``. ``seen`` is shown the balance an
operation left (in the operation's transaction, under the wallet's lock), and
``bounds`` says what it wants to see next: a balance below one number (an
auto top-up's threshold, an armed alert) or above another (a fired alert,
to re-arm). ``WalletWatch`` stores the nearest of them in
``wallets.watch_below``/``watch_above``, which the ledger reads with its lock
(``ledger.service.BalanceWatch``). A control whose settings change calls
``WalletWatch.recompute`` in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from sqlalchemy import Connection

from plasmaart.controls import repository as repo


class Bounds(NamedTuple):
    """Balances a source wants to see: below ``below``, above ``above``."""

    below: int | None = None
    above: int | None = None


class WatchSource(Protocol):
    def seen(self, conn: Connection, wallet_id: str, available: int) -> None:
        """Act on the balance ``available`` an operation left (it is outside
        the watch: for this source, or for another one)."""

    def bounds(self, conn: Connection, wallet_id: str) -> Bounds:
        """What this source wants to see next, as its rows say now."""


class WalletWatch:
    """The ledger's ``BalanceWatch``: shows a balance to every source, then
    sets the wallet's watch anew. Its sources are given once, when the
    platform is built (``watch_with``): they are built on the ledger, which
    is built with this watch."""

    def __init__(self) -> None:
        self.sources: tuple[WatchSource, ...] = ()

    def watch_with(self, sources: Iterable[WatchSource]) -> None:
        self.sources = tuple(sources)

    def __call__(self, conn: Connection, wallet_id: str, available: int) -> None:
        for source in self.sources:
            source.seen(conn, wallet_id, available)
        self.recompute(conn, wallet_id)

    def recompute(self, conn: Connection, wallet_id: str) -> Bounds:
        """Set the wallet's watch from what its sources want now; the watch."""
        below: int | None = None
        above: int | None = None
        for source in self.sources:
            wanted = source.bounds(conn, wallet_id)
            if wanted.below is not None:
                below = wanted.below if below is None else max(below, wanted.below)
            if wanted.above is not None:
                above = wanted.above if above is None else min(above, wanted.above)
        watch = Bounds(below, above)
        repo.set_watch(conn, wallet_id, watch.below, watch.above)
        return watch

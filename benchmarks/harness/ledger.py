"""The ledger benchmarks' PlasmaArt side: funded wallets on a migrated
database, and a hold with its capture."""

from __future__ import annotations

import itertools
import secrets
from datetime import timedelta

from sqlalchemy import Connection

from plasmaart.clock import SystemClock
from plasmaart.db.engine import create_database
from plasmaart.db.migrate import upgrade
from plasmaart.ledger.service import LedgerService

HOLD_CREDITS = 8
# Enough for any run: never the reason a hold is refused.
PURCHASE_CREDITS = 10**12
# A second, expiring lot that holds draw from first (burn order), so a hold
# reads two open lots as a real subscriber's does.
SUBSCRIPTION_CREDITS = 1_000_000


def fund_wallets(url: str, count: int) -> list[str]:
    """Migrate the database and fund ``count`` wallets; their ids."""
    db = create_database(url)
    try:
        upgrade(db)
        ledger = LedgerService(SystemClock())
        expires = SystemClock().now() + timedelta(days=365)
        wallets = []
        with db.write() as conn:
            for index in range(count):
                wallet = ledger.open_wallet(conn, "user", f"usr_bench_{secrets.token_hex(4)}")
                ledger.grant(
                    conn,
                    wallet,
                    PURCHASE_CREDITS,
                    source="purchase",
                    idempotency_key=f"bench:fund:{wallet}:purchase:{index}",
                )
                ledger.grant(
                    conn,
                    wallet,
                    SUBSCRIPTION_CREDITS,
                    source="subscription",
                    expires_at=expires,
                    idempotency_key=f"bench:fund:{wallet}:subscription:{index}",
                )
                wallets.append(wallet)
        return wallets
    finally:
        # Nothing may stay open across a fork of the clients.
        db.dispose()


class HoldAndCapture:
    """A hold of ``HOLD_CREDITS`` on one wallet, then the capture of it: two
    full ledger operations (wallet lock, idempotency lookup, lots, hold rows,
    journal entries, the recorded result), each for one write transaction."""

    def __init__(self, ledger: LedgerService, wallet_id: str) -> None:
        self.ledger = ledger
        self.wallet_id = wallet_id
        # Keys unique across processes and runs: the ledger keeps every operation's key.
        self.prefix = f"bench:{secrets.token_hex(6)}"
        self.counter = itertools.count()

    def hold(self, conn: Connection) -> str:
        key = f"{self.prefix}:hold:{next(self.counter)}"
        return self.ledger.hold(conn, self.wallet_id, HOLD_CREDITS, idempotency_key=key).hold_id

    def capture(self, conn: Connection, hold_id: str) -> None:
        key = f"{self.prefix}:capture:{next(self.counter)}"
        self.ledger.capture(conn, hold_id, HOLD_CREDITS, idempotency_key=key)

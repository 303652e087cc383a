"""The ledger's clock work, run by every worker: expiring lots that fell due."""

from __future__ import annotations

from plasmaart.db.engine import Database
from plasmaart.ledger.service import ExpiryResult, LedgerService

BATCH = 500


def expire_due_lots(db: Database, ledger: LedgerService) -> ExpiryResult:
    """Expire every lot past its expiry, in batches of one transaction each, so
    that no transaction holds the write lock for long."""
    lots = credits = 0
    while True:
        with db.write() as conn:
            result = ledger.expire_due(conn, limit=BATCH)
        lots += result.lots
        credits += result.credits
        if result.lots < BATCH:
            return ExpiryResult(lots=lots, credits=credits)

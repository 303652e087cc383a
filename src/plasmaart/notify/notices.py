"""Causes the worker's clock notices by looking: credits about to expire and
balances that fell low. Each queues its notice through the outbox under a
cause key, so a second pass, or a second worker, queues nothing new.

* Credits about to expire: once per lot, when a lot with credits left
  expires within the notice window.
* A low balance: once per crossing. A wallet is armed while its available
  credits are at or above the threshold and fires when they drop below it;
  it is armed again once they are back up (a grant, a released hold). A
  wallet that never had that many credits is never told it is low.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import Connection

from plasmaart.notify import repository as repo
from plasmaart.outbox import Outbox

# Wallets or lots one pass looks at, so one pass stays short.
BATCH = 500


@dataclass(frozen=True)
class CreditsExpiring:
    kind: ClassVar[str] = "credits.expiring"
    lot_id: str
    credits: int
    expires_at: datetime

    def data(self) -> dict[str, Any]:
        return {
            "lot_id": self.lot_id,
            "credits": self.credits,
            "expires_at": self.expires_at.isoformat(),
        }


@dataclass(frozen=True)
class LowBalance:
    kind: ClassVar[str] = "credits.low_balance"
    available: int
    threshold: int

    def data(self) -> dict[str, Any]:
        return {"available": self.available, "threshold": self.threshold}


def queue_expiry_notices(
    conn: Connection, outbox: Outbox, *, now: datetime, within: timedelta, limit: int = BATCH
) -> int:
    """Queue a notice for each user lot with credits left that expires
    within ``within``; how many were queued."""
    queued = 0
    for lot in repo.expiring_lots(conn, now=now, within=within, limit=limit):
        queued += outbox.enqueue(
            conn,
            cause_key=f"credits_expiring:{lot.id}",
            user_id=lot.owner_id,
            fact=CreditsExpiring(lot.id, lot.remaining, lot.expires_at),
        )
    return queued


def queue_low_balance_notices(
    conn: Connection, outbox: Outbox, *, now: datetime, threshold: int, limit: int = BATCH
) -> int:
    """Arm the wallets at or above ``threshold``, and queue a notice for each
    armed one that fell below it; how many were queued."""
    if threshold <= 0:
        return 0
    repo.arm_balance_alerts(conn, now=now, threshold=threshold, limit=limit)
    queued = 0
    for wallet in repo.armed_wallets_below(conn, threshold=threshold, limit=limit):
        if not repo.fire_balance_alert(conn, wallet.id, now):
            continue  # another worker fired it first
        queued += outbox.enqueue(
            conn,
            cause_key=f"low_balance:{wallet.id}:{wallet.crossings + 1}",
            user_id=wallet.owner_id,
            fact=LowBalance(wallet.available, threshold),
        )
    return queued

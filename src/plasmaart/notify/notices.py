"""Causes the worker's clock notices by looking: credits about to expire and
balances that fell low. Each queues its notice through the outbox under a
cause key, so a second pass, or a second worker, queues nothing new.

* Credits about to expire: once per lot, when a lot with credits left
  expires within the notice window: the wallet's own
  (``wallets.expiry_notice_days``, set with its balance alerts; 0: never),
  else the operator's (``PLASMAART_EXPIRY_NOTICE_DAYS``). The same pass
  emits the webhook event ``credits.expiring``, once per lot.
* A low balance, the operator's default (``PLASMAART_LOW_BALANCE_CREDITS``):
  once per crossing. A wallet is armed while its available credits are at or
  above the threshold and fires when they drop below it; it is armed again
  once they are back up (a grant, a released hold). A wallet that never had
  that many credits is never told it is low. A wallet whose owner set balance
  alerts of their own (``controls.alerts``) is told by those only: its
  crossing of the operator's threshold is marked, silently, so the operator's
  notice does not come on top of the owner's, nor late once they are removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import Connection

from plasmaart.controls.alerts import MAX_EXPIRY_NOTICE_DAYS
from plasmaart.notify import repository as repo
from plasmaart.outbox import Outbox
from plasmaart.outbox.webhooks import WebhookEvents

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
    conn: Connection,
    outbox: Outbox,
    *,
    now: datetime,
    within: timedelta,
    webhook_events: WebhookEvents | None = None,
    limit: int = BATCH,
) -> int:
    """Queue a notice for each user lot with credits left that expires
    within its wallet's window (``within`` unless the wallet chose its own),
    and emit its ``credits.expiring`` webhook event; how many were queued."""
    queued = 0
    lots = repo.expiring_lots(
        conn,
        now=now,
        within=within,
        wallet_windows=range(1, MAX_EXPIRY_NOTICE_DAYS + 1),
        limit=limit,
    )
    for lot in lots:
        fact = CreditsExpiring(lot.id, lot.remaining, lot.expires_at)
        cause_key = f"credits_expiring:{lot.id}"
        queued += outbox.enqueue(conn, cause_key=cause_key, user_id=lot.owner_id, fact=fact)
        if webhook_events is not None:
            webhook_events.emit(
                conn,
                cause_key=cause_key,
                user_id=lot.owner_id,
                type="credits.expiring",
                data={**fact.data(), "wallet_id": lot.wallet_id},
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
        if wallet.own_alerts:
            continue  # its owner's alerts speak for it (marked, not told)
        queued += outbox.enqueue(
            conn,
            cause_key=f"low_balance:{wallet.id}:{wallet.crossings + 1}",
            user_id=wallet.owner_id,
            fact=LowBalance(wallet.available, threshold),
        )
    return queued

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

from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, exists, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from plasmaart.clock import as_utc
from plasmaart.db.tables import balance_alerts, lots, notification_outbox, wallets
from plasmaart.notify.outbox import Outbox

# Wallets or lots one pass looks at, so one pass stays short.
BATCH = 500


def queue_expiry_notices(
    conn: Connection, outbox: Outbox, *, now: datetime, within: timedelta, limit: int = BATCH
) -> int:
    """Queue a notice for each user lot with credits left that expires
    within ``within``; how many were queued."""
    notified = exists().where(
        notification_outbox.c.cause_key == literal("credits_expiring:") + lots.c.id
    )
    rows = conn.execute(
        select(lots.c.id, lots.c.remaining, lots.c.expires_at, wallets.c.owner_id)
        .select_from(lots.join(wallets, wallets.c.id == lots.c.wallet_id))
        .where(
            wallets.c.owner_kind == "user",
            lots.c.remaining > 0,
            lots.c.closed_at.is_(None),
            lots.c.expires_at > now,
            lots.c.expires_at <= now + within,
            ~notified,
        )
        .order_by(lots.c.expires_at, lots.c.id)
        .limit(limit)
    ).all()
    queued = 0
    for row in rows:
        expires_at = as_utc(row.expires_at)
        queued += outbox.enqueue(
            conn,
            cause_key=f"credits_expiring:{row.id}",
            user_id=row.owner_id,
            kind="credits.expiring",
            title=f"{row.remaining} credits expire on {expires_at:%Y-%m-%d}",
            body=(
                f"{row.remaining} of your credits expire at {expires_at:%Y-%m-%d %H:%M} UTC. "
                "Credits are spent soonest-expiring first, so generating before then uses them."
            ),
            data={
                "lot_id": row.id,
                "credits": int(row.remaining),
                "expires_at": expires_at.isoformat(),
            },
        )
    return queued


def queue_low_balance_notices(
    conn: Connection, outbox: Outbox, *, now: datetime, threshold: int, limit: int = BATCH
) -> int:
    """Arm the wallets at or above ``threshold``, and queue a notice for each
    armed one that fell below it; how many were queued."""
    if threshold <= 0:
        return 0
    _arm(conn, now=now, threshold=threshold, limit=limit)
    rows = conn.execute(
        select(wallets.c.id, wallets.c.owner_id, wallets.c.available, balance_alerts.c.crossings)
        .select_from(wallets.join(balance_alerts, balance_alerts.c.wallet_id == wallets.c.id))
        .where(
            wallets.c.owner_kind == "user",
            wallets.c.available < threshold,
            balance_alerts.c.below.is_(False),
        )
        .order_by(wallets.c.id)
        .limit(limit)
    ).all()
    queued = 0
    for row in rows:
        fired = conn.execute(
            update(balance_alerts)
            .where(balance_alerts.c.wallet_id == row.id, balance_alerts.c.below.is_(False))
            .values(below=True, crossings=balance_alerts.c.crossings + 1, changed_at=now)
        )
        if fired.rowcount != 1:  # another worker fired it first
            continue
        queued += outbox.enqueue(
            conn,
            cause_key=f"low_balance:{row.id}:{row.crossings + 1}",
            user_id=row.owner_id,
            kind="credits.low_balance",
            title=f"Your balance is low: {row.available} credits",
            body=(
                f"You have {row.available} credits available, below {threshold}. "
                "Buy a credit pack or change your plan to keep generating."
            ),
            data={"available": int(row.available), "threshold": threshold},
        )
    return queued


def _arm(conn: Connection, *, now: datetime, threshold: int, limit: int) -> None:
    rows = conn.execute(
        select(wallets.c.id, balance_alerts.c.wallet_id.label("known"))
        .select_from(wallets.outerjoin(balance_alerts, balance_alerts.c.wallet_id == wallets.c.id))
        .where(
            wallets.c.owner_kind == "user",
            wallets.c.available >= threshold,
            or_(balance_alerts.c.wallet_id.is_(None), balance_alerts.c.below.is_(True)),
        )
        .limit(limit)
    ).all()
    new = [
        {"wallet_id": row.id, "below": False, "changed_at": now}
        for row in rows
        if row.known is None
    ]
    if new:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(balance_alerts)
            .values(new)
            .on_conflict_do_nothing(index_elements=["wallet_id"])
        )
    rearmed = [row.id for row in rows if row.known is not None]
    if rearmed:
        conn.execute(
            update(balance_alerts)
            .where(and_(balance_alerts.c.wallet_id.in_(rearmed), balance_alerts.c.below.is_(True)))
            .values(below=False, changed_at=now)
        )

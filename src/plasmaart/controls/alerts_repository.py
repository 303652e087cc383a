"""The balance alerts' SQL: ``wallet_alerts`` (a wallet's own alerts, each
armed or fired) and the wallet's ``expiry_notice_days`` (docs/credits.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from plasmaart.clock import as_utc
from plasmaart.db.tables import teams, wallet_alerts, wallets


@dataclass(frozen=True)
class AlertRow:
    id: str
    wallet_id: str
    # Exactly one of the two: a number of credits, or a percent of the
    # wallet's monthly allocation.
    credits: int | None
    percent: int | None
    armed: bool
    # How many times it fired: the cause key of each crossing's notice.
    crossings: int
    fired_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class LockedWallet:
    id: str
    available: int
    expiry_notice_days: int | None


@dataclass(frozen=True)
class WalletOwner:
    user_id: str
    # The team spending this wallet (a team spends its owner's), if any.
    team_id: str | None


_ALERT_COLUMNS = (
    wallet_alerts.c.id,
    wallet_alerts.c.wallet_id,
    wallet_alerts.c.credits,
    wallet_alerts.c.percent,
    wallet_alerts.c.armed,
    wallet_alerts.c.crossings,
    wallet_alerts.c.fired_at,
    wallet_alerts.c.created_at,
)


def alerts_of(conn: Connection, wallet_id: str) -> list[AlertRow]:
    """The wallet's alerts, oldest first."""
    rows = conn.execute(
        select(*_ALERT_COLUMNS)
        .where(wallet_alerts.c.wallet_id == wallet_id)
        .order_by(wallet_alerts.c.created_at, wallet_alerts.c.id)
    )
    return [
        AlertRow(
            row.id,
            row.wallet_id,
            None if row.credits is None else int(row.credits),
            None if row.percent is None else int(row.percent),
            bool(row.armed),
            int(row.crossings),
            None if row.fired_at is None else as_utc(row.fired_at),
            as_utc(row.created_at),
        )
        for row in rows
    ]


def lock_wallet(conn: Connection, wallet_id: str) -> LockedWallet | None:
    """The wallet, locked as the ledger locks it (``FOR UPDATE`` on
    PostgreSQL; SQLite's write transaction already holds the database), so
    saving alerts and a ledger operation of the wallet never interleave."""
    row = conn.execute(
        select(wallets.c.id, wallets.c.available, wallets.c.expiry_notice_days)
        .where(wallets.c.id == wallet_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    days = None if row.expiry_notice_days is None else int(row.expiry_notice_days)
    return LockedWallet(row.id, int(row.available), days)


def wallet_settings(conn: Connection, wallet_id: str) -> LockedWallet | None:
    """The wallet's balance and expiry notice days, unlocked (for reading)."""
    row = conn.execute(
        select(wallets.c.id, wallets.c.available, wallets.c.expiry_notice_days).where(
            wallets.c.id == wallet_id
        )
    ).one_or_none()
    if row is None:
        return None
    days = None if row.expiry_notice_days is None else int(row.expiry_notice_days)
    return LockedWallet(row.id, int(row.available), days)


def set_expiry_notice_days(conn: Connection, wallet_id: str, days: int | None) -> None:
    conn.execute(update(wallets).where(wallets.c.id == wallet_id).values(expiry_notice_days=days))


def delete_alerts(conn: Connection, alert_ids: list[str]) -> None:
    if alert_ids:
        conn.execute(delete(wallet_alerts).where(wallet_alerts.c.id.in_(alert_ids)))


def insert_alert(
    conn: Connection,
    *,
    alert_id: str,
    wallet_id: str,
    credits: int | None,
    percent: int | None,
    armed: bool,
    now: datetime,
) -> None:
    conn.execute(
        insert(wallet_alerts).values(
            id=alert_id,
            wallet_id=wallet_id,
            credits=credits,
            percent=percent,
            armed=armed,
            crossings=0,
            created_at=now,
        )
    )


def fire(conn: Connection, alert_id: str, now: datetime) -> bool:
    """Mark the armed alert fired (one more crossing); False when it was not
    armed (nothing written)."""
    fired = conn.execute(
        update(wallet_alerts)
        .where(wallet_alerts.c.id == alert_id, wallet_alerts.c.armed.is_(True))
        .values(armed=False, crossings=wallet_alerts.c.crossings + 1, fired_at=now)
    )
    return fired.rowcount == 1


def set_armed(conn: Connection, alert_ids: list[str], armed: bool) -> None:
    if alert_ids:
        conn.execute(
            update(wallet_alerts).where(wallet_alerts.c.id.in_(alert_ids)).values(armed=armed)
        )


def owner_of(conn: Connection, wallet_id: str) -> WalletOwner | None:
    """Who is told of the wallet's alerts: its owner, with the team that
    spends it (a user owns at most one team)."""
    row = conn.execute(
        select(wallets.c.owner_kind, wallets.c.owner_id).where(wallets.c.id == wallet_id)
    ).one_or_none()
    if row is None:
        return None
    if row.owner_kind == "team":
        owner = conn.execute(select(teams.c.owner_id).where(teams.c.id == row.owner_id)).scalar()
        return None if owner is None else WalletOwner(str(owner), str(row.owner_id))
    team = conn.execute(select(teams.c.id).where(teams.c.owner_id == row.owner_id)).scalar()
    return WalletOwner(str(row.owner_id), None if team is None else str(team))

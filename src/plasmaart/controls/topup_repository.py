"""The auto top-up's SQL: a wallet's settings (``auto_topups``) and its runs
(``topup_runs``). Rows come back as the frozen records below."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, func, insert, select, update

from plasmaart.clock import as_utc
from plasmaart.db.tables import auto_topups, topup_runs, users, wallets
from plasmaart.db.values import TopupStatus

# The runs that count against the monthly cap: charged, or being charged.
SPENDING = ("pending", "succeeded")


@dataclass(frozen=True)
class AutoTopup:
    wallet_id: str
    enabled: bool
    threshold: int
    pack_id: str
    monthly_cap_cents: int
    failures: int
    # The run in flight (pending, or waiting for the customer to authenticate).
    run_id: str | None
    disabled_reason: str | None
    set_by: str
    updated_at: datetime


@dataclass(frozen=True)
class TopupRun:
    id: str
    wallet_id: str
    user_id: str
    pack_id: str
    credits: int
    amount_cents: int
    currency: str
    status: TopupStatus
    payment_id: str | None
    failure_reason: str | None
    action_url: str | None
    idempotency_key: str
    created_at: datetime
    finished_at: datetime | None


def _settings(row: Row[Any]) -> AutoTopup:
    return AutoTopup(
        wallet_id=str(row.wallet_id),
        enabled=bool(row.enabled),
        threshold=int(row.threshold),
        pack_id=str(row.pack_id),
        monthly_cap_cents=int(row.monthly_cap_cents),
        failures=int(row.failures),
        run_id=None if row.run_id is None else str(row.run_id),
        disabled_reason=row.disabled_reason,
        set_by=str(row.set_by),
        updated_at=as_utc(row.updated_at),
    )


def _run(row: Row[Any]) -> TopupRun:
    return TopupRun(
        id=str(row.id),
        wallet_id=str(row.wallet_id),
        user_id=str(row.user_id),
        pack_id=str(row.pack_id),
        credits=int(row.credits),
        amount_cents=int(row.amount_cents),
        currency=str(row.currency),
        status=cast(TopupStatus, row.status),
        payment_id=row.payment_id,
        failure_reason=row.failure_reason,
        action_url=row.action_url,
        idempotency_key=str(row.idempotency_key),
        created_at=as_utc(row.created_at),
        finished_at=None if row.finished_at is None else as_utc(row.finished_at),
    )


# -- settings --------------------------------------------------------------------


def settings_of(conn: Connection, wallet_id: str) -> AutoTopup | None:
    row = conn.execute(
        select(auto_topups).where(auto_topups.c.wallet_id == wallet_id)
    ).one_or_none()
    return None if row is None else _settings(row)


def save_settings(conn: Connection, wallet_id: str, **values: Any) -> None:
    """Update the wallet's settings, or insert them (``values`` then has every
    column without a default)."""
    result = conn.execute(
        update(auto_topups).where(auto_topups.c.wallet_id == wallet_id).values(**values)
    )
    if result.rowcount == 0:
        conn.execute(insert(auto_topups).values(wallet_id=wallet_id, **values))


def claim_run(conn: Connection, wallet_id: str, run_id: str) -> bool:
    """Make ``run_id`` the wallet's run in flight, if it has none and its
    auto top-up is on: the one-in-flight guarantee (a conditional UPDATE, so
    two transactions can never both win, whatever the database)."""
    result = conn.execute(
        update(auto_topups)
        .where(
            auto_topups.c.wallet_id == wallet_id,
            auto_topups.c.run_id.is_(None),
            auto_topups.c.enabled.is_(True),
        )
        .values(run_id=run_id)
    )
    return result.rowcount == 1


def release_run(conn: Connection, wallet_id: str, run_id: str, **values: Any) -> bool:
    """The run ``run_id`` is no longer in flight (and ``values`` change with
    it: failures, enabled); False if another run is the wallet's now."""
    result = conn.execute(
        update(auto_topups)
        .where(auto_topups.c.wallet_id == wallet_id, auto_topups.c.run_id == run_id)
        .values(run_id=None, **values)
    )
    return result.rowcount == 1


def payer_of_wallet(conn: Connection, wallet_id: str) -> str | None:
    """The user who owns (and pays for) ``wallet_id``; a team spends its
    owner's wallet, so the team's owner."""
    found = conn.execute(
        select(wallets.c.owner_id).where(wallets.c.id == wallet_id, wallets.c.owner_kind == "user")
    ).scalar_one_or_none()
    return None if found is None else str(found)


def lock_wallet(conn: Connection, wallet_id: str) -> int:
    """Lock the wallet's row, as the ledger's operations do (PostgreSQL;
    SQLite's writers are serial): saving the settings waits for a hold in
    flight, and two saves of one wallet go one after the other. Its
    available balance."""
    found = conn.execute(
        select(wallets.c.available).where(wallets.c.id == wallet_id).with_for_update()
    ).scalar_one_or_none()
    return int(found or 0)


def user_is_suspended(conn: Connection, user_id: str) -> bool:
    status = conn.execute(select(users.c.status).where(users.c.id == user_id)).scalar_one()
    return bool(status == "suspended")


def user_email(conn: Connection, user_id: str) -> str:
    return str(conn.execute(select(users.c.email).where(users.c.id == user_id)).scalar_one())


# -- runs ------------------------------------------------------------------------


def insert_run(conn: Connection, **values: Any) -> None:
    conn.execute(insert(topup_runs).values(**values))


def run_by_id(conn: Connection, run_id: str) -> TopupRun | None:
    row = conn.execute(select(topup_runs).where(topup_runs.c.id == run_id)).one_or_none()
    return None if row is None else _run(row)


def last_run(conn: Connection, wallet_id: str) -> TopupRun | None:
    row = conn.execute(
        select(topup_runs)
        .where(topup_runs.c.wallet_id == wallet_id)
        .order_by(topup_runs.c.created_at.desc(), topup_runs.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _run(row)


def spent_since(conn: Connection, wallet_id: str, since: datetime) -> int:
    """What the wallet's runs since ``since`` charged or are charging."""
    total = conn.execute(
        select(func.coalesce(func.sum(topup_runs.c.amount_cents), 0)).where(
            topup_runs.c.wallet_id == wallet_id,
            topup_runs.c.created_at >= since,
            topup_runs.c.status.in_(SPENDING),
        )
    ).scalar_one()
    return int(total)


def pending_runs(conn: Connection, limit: int) -> list[TopupRun]:
    """Runs not charged yet (new, or left by a worker that died), oldest first."""
    rows = conn.execute(
        select(topup_runs)
        .where(topup_runs.c.status == "pending")
        .order_by(topup_runs.c.created_at, topup_runs.c.id)
        .limit(limit)
    ).all()
    return [_run(row) for row in rows]


def finish_run(
    conn: Connection,
    run_id: str,
    *,
    status: TopupStatus,
    now: datetime,
    failure_reason: str | None = None,
    action_url: str | None = None,
) -> bool:
    """End the pending run ``run_id`` with ``status``: True for the one
    caller that ends it (a run ends exactly once)."""
    result = conn.execute(
        update(topup_runs)
        .where(topup_runs.c.id == run_id, topup_runs.c.status == "pending")
        .values(
            status=status, finished_at=now, failure_reason=failure_reason, action_url=action_url
        )
    )
    return result.rowcount == 1


def link_payment(conn: Connection, run_id: str, payment_id: str) -> None:
    conn.execute(update(topup_runs).where(topup_runs.c.id == run_id).values(payment_id=payment_id))

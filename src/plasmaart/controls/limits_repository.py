"""Spend limits' SQL: the one spend query (what a wallet, a key or a team
member spent since a moment), the wallet's monthly limit, and an API key's
limits read under its lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, case, func, select, update

from plasmaart.db.tables import api_keys, generations, wallets

# Jobs whose credits are spent: charged (succeeded) or still held (queued,
# running). Failed and canceled jobs released theirs.
SPENDING_STATUSES = ("queued", "running", "succeeded")


@dataclass(frozen=True)
class SpendOf:
    """Whose spending to count: every filter given must match."""

    wallet_id: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None


@dataclass(frozen=True)
class LockedKey:
    """An API key's limits as its row says now, read under the row's lock."""

    daily: int | None
    monthly: int | None


# What a job spent: its charge once charged, else what it holds.
_SPENT = func.coalesce(func.nullif(generations.c.credits_charged, 0), generations.c.credits_held)


def _spend_select(of: SpendOf, since: Sequence[datetime]) -> Select[Any]:
    """The spend query: one sum per moment of ``since`` (the jobs created
    since it), over the jobs ``of`` names."""
    columns = [
        func.coalesce(func.sum(case((generations.c.created_at >= at, _SPENT), else_=0)), 0)
        for at in since
    ]
    where: list[ColumnElement[bool]] = [
        generations.c.created_at >= min(since),
        generations.c.status.in_(SPENDING_STATUSES),
    ]
    if of.wallet_id is not None:
        where.append(generations.c.wallet_id == of.wallet_id)
    if of.team_id is not None:
        where.append(generations.c.team_id == of.team_id)
    if of.user_id is not None:
        where.append(generations.c.user_id == of.user_id)
    if of.api_key_id is not None:
        where.append(generations.c.api_key_id == of.api_key_id)
    return select(*columns).where(*where)


def spent(conn: Connection, of: SpendOf, since: Sequence[datetime]) -> tuple[int, ...]:
    """Credits charged or still held by the jobs ``of`` names, created since
    each moment of ``since`` (one statement)."""
    row = conn.execute(_spend_select(of, since)).one()
    return tuple(int(value) for value in row)


def spent_by_key(
    conn: Connection, key_ids: Sequence[str], since: Sequence[datetime]
) -> dict[str, tuple[int, ...]]:
    """``spent`` for each of ``key_ids`` at once (one statement); keys that
    spent nothing are absent."""
    if not key_ids:
        return {}
    query = (
        _spend_select(SpendOf(), since)
        .add_columns(generations.c.api_key_id)
        .where(generations.c.api_key_id.in_(key_ids))
        .group_by(generations.c.api_key_id)
    )
    return {row[-1]: tuple(int(value) for value in row[:-1]) for row in conn.execute(query)}


def monthly_limit(conn: Connection, wallet_id: str) -> int | None:
    value = conn.execute(
        select(wallets.c.monthly_spend_limit).where(wallets.c.id == wallet_id)
    ).scalar_one()
    return None if value is None else int(value)


def set_monthly_limit(conn: Connection, wallet_id: str, limit: int | None) -> None:
    conn.execute(update(wallets).where(wallets.c.id == wallet_id).values(monthly_spend_limit=limit))


def lock_key(conn: Connection, key_id: str) -> LockedKey | None:
    """Lock the key's row for this transaction (PostgreSQL: FOR UPDATE; on
    SQLite the write transaction already excludes other writers) and read its
    limits now. Every submission with the key takes this lock before it
    counts the key's spending, whichever wallet it spends."""
    row = conn.execute(
        select(api_keys.c.daily_credit_limit, api_keys.c.monthly_credit_limit)
        .where(api_keys.c.id == key_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    daily, monthly = row
    return LockedKey(
        None if daily is None else int(daily), None if monthly is None else int(monthly)
    )

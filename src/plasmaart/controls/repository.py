"""The credit controls' SQL on ``wallets``: the balance watch and the
owner's monthly spend limit."""

from __future__ import annotations

from sqlalchemy import Connection, update

from plasmaart.db.tables import wallets


def set_watch(conn: Connection, wallet_id: str, below: int | None, above: int | None) -> None:
    conn.execute(
        update(wallets)
        .where(wallets.c.id == wallet_id)
        .values(watch_below=below, watch_above=above)
    )

"""The accounting equation, checked against the database.

``check_ledger`` recomputes every balance from the journal and the lots and
returns the list of violations (empty when the books balance). Tests call it
after every step; operators can run it with ``plasmaart ledger verify``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from sqlalchemy import Connection, select

from plasmaart.clock import as_utc
from plasmaart.db.tables import hold_lots, holds, journal_entries, lots, usage_daily, wallets


def check_ledger(conn: Connection) -> list[str]:
    problems: list[str] = []
    account_totals: dict[str, int] = defaultdict(int)
    wallet_sum: dict[str, int] = defaultdict(int)
    holds_sum: dict[str, int] = defaultdict(int)
    chain: dict[str, int] = defaultdict(int)
    adjusted_down: dict[str, int] = defaultdict(int)
    usage: dict[tuple[str, date, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for entry in conn.execute(select(journal_entries).order_by(journal_entries.c.id)):
        credits = int(entry.credits)
        account_totals[entry.from_account] -= credits
        account_totals[entry.to_account] += credits
        wallet_id = entry.wallet_id
        if entry.to_account == "wallet":
            wallet_sum[wallet_id] += credits
        if entry.from_account == "wallet":
            wallet_sum[wallet_id] -= credits
        if entry.to_account == "holds":
            holds_sum[wallet_id] += credits
        if entry.from_account == "holds":
            holds_sum[wallet_id] -= credits
        chain[wallet_id] += int(entry.amount)
        if chain[wallet_id] != int(entry.balance_after):
            problems.append(
                f"entry {entry.id}: balance_after {entry.balance_after} but the amounts "
                f"of wallet {wallet_id} add up to {chain[wallet_id]}"
            )
        if entry.kind == "adjustment" and entry.from_account == "wallet" and entry.lot_id:
            adjusted_down[entry.lot_id] += credits
        if entry.kind == "capture":
            day = as_utc(entry.created_at).date()
            sums = usage[(wallet_id, day, entry.model or "")]
            sums[0] += 1
            sums[1] += int(entry.outputs or 0)
            sums[2] += credits
    # Each entry moves credits between two accounts, so this holds by
    # construction; it is checked anyway, as the accounting equation.
    if sum(account_totals.values()) != 0:  # pragma: no cover
        problems.append(f"journal does not sum to zero: {dict(account_totals)}")

    lot_remaining: dict[str, int] = defaultdict(int)
    lot_rows = {row.id: row for row in conn.execute(select(lots))}
    for lot in lot_rows.values():
        lot_remaining[lot.wallet_id] += int(lot.remaining)
    lot_out: dict[str, int] = defaultdict(int)
    hold_parts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for part in conn.execute(select(hold_lots)):
        lot_out[part.lot_id] += int(part.credits) - int(part.released)
        sums = hold_parts[part.hold_id]
        sums[0] += int(part.credits)
        sums[1] += int(part.captured)
        sums[2] += int(part.released)
    for lot_id, lot in lot_rows.items():
        accounted = int(lot.remaining) + lot_out[lot_id] + int(lot.expired) + adjusted_down[lot_id]
        if accounted != int(lot.granted):
            problems.append(f"lot {lot_id}: granted {lot.granted} but {accounted} accounted for")

    pending: dict[str, int] = defaultdict(int)
    consumed = 0
    for hold in conn.execute(select(holds)):
        parts = hold_parts[hold.id]
        if parts[0] != int(hold.amount):
            problems.append(f"hold {hold.id}: amount {hold.amount} but lots give {parts[0]}")
        if (int(hold.captured), int(hold.released)) != (parts[1], parts[2]):
            problems.append(f"hold {hold.id}: captured/released disagree with its lots")
        if hold.status == "pending":
            pending[hold.wallet_id] += int(hold.amount)
        consumed += int(hold.captured)
    if account_totals["consumed"] != consumed:
        problems.append(
            f"consumed account {account_totals['consumed']} but holds captured {consumed}"
        )

    for wallet in conn.execute(select(wallets)):
        wid, available, held = wallet.id, int(wallet.available), int(wallet.held)
        if available < 0 or held < 0:  # pragma: no cover - the CHECK constraints refuse it
            problems.append(f"wallet {wid}: negative balance ({available}, {held})")
        if available != wallet_sum[wid]:
            problems.append(f"wallet {wid}: available {available}, entries {wallet_sum[wid]}")
        if available != lot_remaining[wid]:
            problems.append(f"wallet {wid}: available {available}, lots {lot_remaining[wid]}")
        if held != holds_sum[wid] or held != pending[wid]:
            problems.append(
                f"wallet {wid}: held {held}, entries {holds_sum[wid]}, pending holds {pending[wid]}"
            )
    rolled_up = {
        (row.wallet_id, row.day, row.model): [
            int(row.generations),
            int(row.outputs),
            int(row.credits),
        ]
        for row in conn.execute(select(usage_daily))
    }
    if rolled_up != dict(usage):
        problems.append("usage roll-up disagrees with the captures in the journal")
    return problems

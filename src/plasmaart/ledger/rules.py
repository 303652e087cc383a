"""Pure rules of the ledger: burn order, how a spend splits across lots, and
how a capture splits a hold. Plain data in, plain data out; no database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Within one expiry date, lots are spent in this order of source.
SOURCE_ORDER = {"promo": 0, "subscription": 1, "rollover": 2, "adjustment": 3, "purchase": 4}


@dataclass(frozen=True, slots=True)
class LotView:
    id: str
    source: str
    remaining: int
    expires_at: datetime | None
    created_at: datetime


def burn_key(lot: LotView) -> tuple[bool, datetime | None, int, datetime, str]:
    """Earliest expiry first, never-expiring last; then source; then oldest; then id."""
    return (
        lot.expires_at is None,
        lot.expires_at,
        SOURCE_ORDER[lot.source],
        lot.created_at,
        lot.id,
    )


def sort_for_burn(lots: list[LotView]) -> list[LotView]:
    # ``None`` is never compared with a datetime: the first element of the key
    # already separates the never-expiring lots from the others.
    return sorted(lots, key=burn_key)


def allocate(lots: list[LotView], credits: int) -> list[tuple[str, int]]:
    """Take ``credits`` from ``lots`` in burn order: ``[(lot_id, taken), ...]``.

    Raises ``ValueError`` if the lots hold fewer credits than asked.
    """
    if credits <= 0:
        raise ValueError("credits must be positive")
    taken: list[tuple[str, int]] = []
    left = credits
    for lot in sort_for_burn(lots):
        if left == 0:
            break
        take = min(lot.remaining, left)
        if take > 0:
            taken.append((lot.id, take))
            left -= take
    if left:
        raise ValueError(f"lots hold {credits - left} credits, {credits} asked")
    return taken


@dataclass(frozen=True, slots=True)
class Allocation:
    lot_id: str
    position: int
    credits: int


def split_capture(
    allocations: list[Allocation], credits: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split a hold into what is captured and what is released, per lot.

    The captured credits come from the first lots of the hold in burn order
    (the ones that would expire first), so the released remainder goes back
    to the lots the user would have spent last.
    """
    total = sum(a.credits for a in allocations)
    if not 0 <= credits <= total:
        raise ValueError(f"cannot capture {credits} of a hold of {total}")
    captured: list[tuple[str, int]] = []
    released: list[tuple[str, int]] = []
    left = credits
    for allocation in sorted(allocations, key=lambda a: a.position):
        take = min(allocation.credits, left)
        left -= take
        if take:
            captured.append((allocation.lot_id, take))
        if allocation.credits - take:
            released.append((allocation.lot_id, allocation.credits - take))
    return captured, released


def rollover_credits(unused: int, rollover_cap: int) -> int:
    """What a renewal carries into the next period: never more than the cap."""
    return max(0, min(unused, rollover_cap))

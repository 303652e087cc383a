"""The billing rules as plain functions: which plan change is an upgrade, what
an upgrade costs and grants for the rest of the period, when a grace period
ends, when purchased credits expire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from plasmaart.catalog import CreditPack, PlanSpec

_MICROSECOND = timedelta(microseconds=1)


def is_upgrade(current: PlanSpec, new: PlanSpec) -> bool:
    """A pricier plan takes effect at once; a cheaper (or equally priced) one
    at the period end, when the customer has had what they paid for."""
    return new.price_cents > current.price_cents


@dataclass(frozen=True)
class Proration:
    """What an upgrade at ``at`` costs and grants for the rest of its period
    (DESIGN.md §5): the differences in monthly price and in monthly credits,
    both multiplied by the same exact fraction of the period left
    (``left``) and both rounded the same way, to the nearest unit, halves up.
    The credits an upgrade adds cover the same time as the money it
    charges: a late upgrade buys a late share of the month, never a whole
    month's difference, so no sequence of plan changes buys credits cheaper
    than the plans held, each for the time it was held."""

    at: datetime
    period_start: datetime
    period_end: datetime
    left: Fraction
    amount_cents: int
    credits: int


def period_left(period_start: datetime, period_end: datetime, at: datetime) -> Fraction:
    """The share of the period still ahead at ``at``, exactly: microseconds
    left over microseconds in the period, between 0 and 1."""
    total = (period_end - period_start) // _MICROSECOND
    if total <= 0:
        raise ValueError("a period must end after it starts")
    left = min(max((period_end - at) // _MICROSECOND, 0), total)
    return Fraction(left, total)


def prorate(amount: int, left: Fraction) -> int:
    """``amount * left`` to the nearest unit, halves up (amounts are never
    negative: a difference that would be is 0)."""
    if amount <= 0:
        return 0
    return (2 * amount * left.numerator + left.denominator) // (2 * left.denominator)


def prorate_upgrade(
    current: PlanSpec, new: PlanSpec, period_start: datetime, period_end: datetime, at: datetime
) -> Proration:
    """The one rule of an upgrade's price and credits (see ``Proration``)."""
    left = period_left(period_start, period_end, at)
    return Proration(
        at=at,
        period_start=period_start,
        period_end=period_end,
        left=left,
        amount_cents=prorate(new.price_cents - current.price_cents, left),
        credits=prorate(new.monthly_credits - current.monthly_credits, left),
    )


def prorated_cents(
    amount_cents: int, period_start: datetime, period_end: datetime, now: datetime
) -> int:
    """``amount_cents`` for the part of the period still ahead at ``now``,
    rounded to the nearest cent (halves up)."""
    return prorate(amount_cents, period_left(period_start, period_end, now))


def grace_ends_at(period_end: datetime, grace_days: int, next_period_end: datetime) -> datetime:
    """When a subscription whose renewal failed at ``period_end`` falls to
    Free: ``grace_days`` later, but never past the period it did not pay for."""
    return min(period_end + timedelta(days=grace_days), next_period_end)


def pack_expires_at(
    pack: CreditPack, default_days: int | None, granted_at: datetime
) -> datetime | None:
    """Purchased credits never expire, unless the pack or the operator
    (``PLASMAART_PURCHASED_CREDITS_EXPIRE_DAYS``) gives them a lifetime; the
    pack's own lifetime wins."""
    days = pack.expires_after_days or default_days
    return None if days is None else granted_at + timedelta(days=days)

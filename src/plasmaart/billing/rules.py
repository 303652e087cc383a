"""The billing rules as plain functions: which plan change is an upgrade, what
an upgrade costs for the rest of the period, when a grace period ends, when
purchased credits expire."""

from __future__ import annotations

from datetime import datetime, timedelta

from plasmaart.catalog import CreditPack, PlanSpec

_MICROSECOND = timedelta(microseconds=1)


def is_upgrade(current: PlanSpec, new: PlanSpec) -> bool:
    """A pricier plan takes effect at once; a cheaper (or equally priced) one
    at the period end, when the customer has had what they paid for."""
    return new.price_cents > current.price_cents


def upgrade_credits(current: PlanSpec, new: PlanSpec) -> int:
    """The monthly credits an upgrade adds for the rest of the period: the
    whole difference, as the policy sells credits per month, not per day."""
    return max(new.monthly_credits - current.monthly_credits, 0)


def prorated_cents(
    amount_cents: int, period_start: datetime, period_end: datetime, now: datetime
) -> int:
    """``amount_cents`` for the part of the period still ahead at ``now``,
    rounded to the nearest cent (halves up)."""
    total = (period_end - period_start) // _MICROSECOND
    if total <= 0:
        raise ValueError("a period must end after it starts")
    left = min(max((period_end - now) // _MICROSECOND, 0), total)
    return (2 * amount_cents * left + total) // (2 * total)


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

"""Billing periods: one calendar month, like Stripe's monthly interval."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(start: datetime, months: int = 1) -> datetime:
    """The same day-of-month ``months`` later, clamped to the month's last day
    (Jan 31 + 1 month = Feb 28 or 29)."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def period_end_after(anchor: datetime, start: datetime) -> datetime:
    """The end of the monthly period that begins at ``start``, for a
    subscription whose periods count from ``anchor``: the first monthly
    anniversary of the anchor after ``start``. Counting from the anchor rather
    than from the last end keeps the day of the month (Jan 31, Feb 28, Mar 31),
    as Stripe's billing cycle anchor does."""
    months = (start.year - anchor.year) * 12 + start.month - anchor.month
    end = add_months(anchor, months)
    while end <= start:
        months += 1
        end = add_months(anchor, months)
    return end

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

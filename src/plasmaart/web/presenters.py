"""What the API and the dashboard both say about a record, in one place:
the words that describe it, shared so that a page and a JSON answer never
tell the same thing two ways."""

from __future__ import annotations

from datetime import datetime

from plasmaart.billing.repository import Payment
from plasmaart.catalog import Catalog


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def describe_payment(catalog: Catalog, payment: Payment) -> str:
    """What the payment was for, in words."""
    if payment.kind == "pack":
        return f"{payment.credits:,} credits ({payment.pack_id})"
    try:
        name = catalog.plan(payment.plan_id or "").name
    except KeyError:
        name = payment.plan_id or "a plan"
    period = ""
    if payment.period_start is not None and payment.period_end is not None:
        period = f", {_day(payment.period_start)} to {_day(payment.period_end)}"
    what = {
        "subscription": f"{name} plan",
        "renewal": f"{name} plan renewal",
        "upgrade": f"upgrade to {name}, prorated",
    }[payment.kind]
    return what + period

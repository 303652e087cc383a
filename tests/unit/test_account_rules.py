"""The accounts' pure rules: the login throttle's wait, the cheapest plan
that allows something, and the refusal that names it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plasmaart.accounts.credentials import LOGIN_WINDOW, retry_after
from plasmaart.accounts.entitlements import NotInPlan, cheapest_plan, watermark_removable
from plasmaart.catalog import load_catalog

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()


def test_no_wait_while_fewer_than_the_limit_failed() -> None:
    assert retry_after([], 3, NOW) is None
    assert retry_after([NOW, NOW - timedelta(minutes=1)], 3, NOW) is None


def test_the_wait_lasts_until_the_oldest_counted_failure_leaves_the_window() -> None:
    failures = [NOW - timedelta(minutes=m) for m in (1, 4, 10)]  # newest first
    assert retry_after(failures, 3, NOW) == (LOGIN_WINDOW - timedelta(minutes=10)).seconds
    # Only the ``limit`` newest count: an older fourth one changes nothing.
    assert retry_after([*failures, NOW - timedelta(minutes=14)], 3, NOW) == 300


def test_the_wait_is_a_whole_second_at_least() -> None:
    edge = NOW - LOGIN_WINDOW + timedelta(milliseconds=10)
    assert retry_after([edge], 1, NOW) == 1
    assert retry_after([NOW - LOGIN_WINDOW + timedelta(seconds=2.5)], 1, NOW) == 3


def test_the_cheapest_plan_that_allows_it() -> None:
    studio = cheapest_plan(CATALOG, watermark_removable)
    assert studio is not None
    assert studio.id == "studio"
    assert all(
        not plan.watermark_removable
        for plan in CATALOG.plans_by_price()
        if plan.price_cents < studio.price_cents
    )
    assert cheapest_plan(CATALOG, lambda plan: plan.price_cents == 0) == CATALOG.plan("free")
    assert cheapest_plan(CATALOG, lambda _: False) is None


def test_the_refusal_names_the_plan_and_the_cheapest_that_would_do() -> None:
    free, studio = CATALOG.plan("free"), CATALOG.plan("studio")
    refused = NotInPlan("watermark removal is", free, studio, it="it")
    assert (refused.code, refused.status) == ("forbidden", 403)
    assert refused.detail == "watermark removal is not part of the Free plan; Studio includes it"
    assert refused.extra == {"required_plan": "studio"}
    alone = NotInPlan("teams are", free, None, it="them")
    assert (alone.detail, alone.extra) == ("teams are not part of the Free plan", {})

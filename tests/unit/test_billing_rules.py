"""The upgrade rule (DESIGN.md §5) as plain arithmetic: the differences in
price and in monthly credits prorated by one exact fraction of the period
left, rounded alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasmaart.billing.rules import period_left, prorate, prorate_upgrade
from plasmaart.catalog import load_catalog

CATALOG = load_catalog()
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
PERIOD_S = 31 * 86400


def test_the_issue_scenario_one_day_of_studio() -> None:
    """Starter to Studio with one of January's 31 days left."""
    upgrade = prorate_upgrade(
        CATALOG.plan("starter"), CATALOG.plan("studio"), JAN_1, FEB_1, FEB_1 - timedelta(days=1)
    )
    assert upgrade.left == Fraction(1, 31)
    # $80 / 31 = 258.06 cents, 9000 / 31 = 290.32 credits.
    assert (upgrade.amount_cents, upgrade.credits) == (258, 290)


@pytest.mark.parametrize(
    ("at", "left"),
    [
        (JAN_1 - timedelta(days=1), Fraction(1)),  # before the start: the whole period
        (JAN_1, Fraction(1)),
        (JAN_1 + timedelta(microseconds=1), Fraction(PERIOD_S * 10**6 - 1, PERIOD_S * 10**6)),
        (JAN_1 + timedelta(days=15, hours=12), Fraction(1, 2)),
        (FEB_1, Fraction(0)),
        (FEB_1 + timedelta(days=3), Fraction(0)),  # past the end: nothing left
    ],
)
def test_the_fraction_left_is_exact(at: datetime, left: Fraction) -> None:
    assert period_left(JAN_1, FEB_1, at) == left


def test_a_period_must_have_a_length() -> None:
    with pytest.raises(ValueError, match="must end after it starts"):
        period_left(FEB_1, FEB_1, FEB_1)


def test_rounding_is_to_the_nearest_unit_halves_up() -> None:
    assert prorate(3, Fraction(1, 2)) == 2  # 1.5
    assert prorate(5, Fraction(1, 10)) == 1  # 0.5
    assert prorate(4, Fraction(1, 10)) == 0  # 0.4
    assert prorate(-100, Fraction(1, 2)) == 0  # a cheaper plan adds nothing


@given(
    seconds_left=st.integers(0, PERIOD_S),
    plans=st.permutations([plan.id for plan in CATALOG.plans]).map(lambda ids: ids[:2]),
)
def test_money_and_credits_follow_one_fraction(seconds_left: int, plans: list[str]) -> None:
    """Both amounts are within half a unit of the exact difference times the
    same fraction, and never exceed the whole month's difference."""
    current, new = CATALOG.plan(plans[0]), CATALOG.plan(plans[1])
    at = FEB_1 - timedelta(seconds=seconds_left)
    upgrade = prorate_upgrade(current, new, JAN_1, FEB_1, at)
    left = Fraction(seconds_left, PERIOD_S)
    assert upgrade.left == left
    for got, difference in (
        (upgrade.amount_cents, new.price_cents - current.price_cents),
        (upgrade.credits, new.monthly_credits - current.monthly_credits),
    ):
        exact = max(difference, 0) * left
        assert exact - Fraction(1, 2) < got <= exact + Fraction(1, 2)
        assert 0 <= got <= max(difference, 0)

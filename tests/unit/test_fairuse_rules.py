"""The abuse-scoring rules, as plain functions: worked examples and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasmaart.db.tables import ABUSE_FLAG_STATUSES, ABUSE_SIGNAL_KINDS
from plasmaart.fairuse.repository import FlagStatus
from plasmaart.fairuse.rules import (
    DEFAULT_RULES,
    SIGNAL_KINDS,
    PlanPayment,
    Score,
    Signal,
    SignalKind,
    SignalRule,
    budget_per_minute,
    decide,
    identical_prompt_flood,
    is_churn,
    longest_window,
    plan_cycles,
    prompt_fingerprint,
    retry_after_seconds,
    score,
    verdict,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
RULES: dict[SignalKind, SignalRule] = {
    "rate_limited": SignalRule(weight=2, window=timedelta(hours=1), allowance=5),
    "submit_cancel": SignalRule(weight=3, window=timedelta(hours=1), allowance=10),
    "identical_prompt": SignalRule(weight=4, window=timedelta(hours=1)),
    "invalid_input": SignalRule(weight=1, window=timedelta(minutes=10), allowance=20),
    "clawback": SignalRule(weight=40, window=timedelta(days=180), exploit=True),
    "payment_declined": SignalRule(weight=34, window=timedelta(hours=1), allowance=3, exploit=True),
    "plan_cycling": SignalRule(weight=50, window=timedelta(days=180), exploit=True),
}


def signals(kind: SignalKind, count: int, *, ago: timedelta = timedelta(0)) -> list[Signal]:
    return [Signal(kind, NOW - ago) for _ in range(count)]


def test_signals_within_the_allowance_cost_nothing() -> None:
    assert score(signals("rate_limited", 5), NOW, RULES).total == 0
    assert score(signals("invalid_input", 20), NOW, RULES).total == 0


def test_each_signal_beyond_the_allowance_adds_its_weight() -> None:
    found = score(
        signals("rate_limited", 8) + signals("identical_prompt", 2) + signals("clawback", 1),
        NOW,
        RULES,
    )
    assert found.total == 3 * 2 + 2 * 4 + 40
    assert found.by_kind["rate_limited"].count == 8
    assert found.by_kind["rate_limited"].points == 6
    assert found.by_kind["submit_cancel"].count == 0
    assert found.summary() == (
        "clawback x1 (40 points), identical_prompt x2 (8 points), rate_limited x8 (6 points)"
    )


def test_signals_leave_their_window() -> None:
    old = signals("invalid_input", 30, ago=timedelta(minutes=10))
    recent = signals("invalid_input", 30, ago=timedelta(minutes=9, seconds=59))
    assert score(old, NOW, RULES).total == 0
    assert score(recent, NOW, RULES).total == 10
    # The clawback's window is long: half a year later it still counts.
    assert score(signals("clawback", 1, ago=timedelta(days=179)), NOW, RULES).total == 40


def test_future_and_unknown_signals_do_not_count() -> None:
    future = [Signal("clawback", NOW + timedelta(seconds=1))]
    assert score(future, NOW, RULES).total == 0
    assert score(signals("clawback", 1), NOW, {"rate_limited": RULES["rate_limited"]}).total == 0


def test_a_reinstatement_wipes_the_slate() -> None:
    before = signals("clawback", 2, ago=timedelta(hours=2))
    after = signals("clawback", 1, ago=timedelta(hours=1))
    assert score(before + after, NOW, RULES).total == 120
    assert score(before + after, NOW, RULES, since=NOW - timedelta(hours=2)).total == 40
    assert score(before + after, NOW, RULES, since=NOW).total == 0


@pytest.mark.parametrize(
    ("total", "expected"),
    [(0, "clear"), (29, "clear"), (30, "flag"), (99, "flag"), (100, "suspend"), (500, "suspend")],
)
def test_verdict(total: int, expected: str) -> None:
    assert verdict(total, flag_at=30, suspend_at=100) == expected


def test_exploitation_points_are_counted_apart() -> None:
    found = score(
        signals("rate_limited", 60) + signals("payment_declined", 5) + signals("clawback", 1),
        NOW,
        RULES,
    )
    assert found.total == 55 * 2 + 2 * 34 + 40
    assert found.exploit == 2 * 34 + 40


def points(total: int, exploit: int) -> Score:
    return Score(total, {}, exploit)


@pytest.mark.parametrize(
    ("current", "paid", "expected"),
    [
        # Never paid: the whole score decides, as before.
        (points(29, 0), False, "clear"),
        (points(30, 0), False, "flag"),
        (points(500, 0), False, "suspend"),
        # Paid: volume alone, however much, only flags for review ...
        (points(29, 0), True, "clear"),
        (points(30, 0), True, "flag"),
        (points(500, 99), True, "flag"),
        # ... exploitation suspends.
        (points(100, 100), True, "suspend"),
        (points(500, 140), True, "suspend"),
    ],
)
def test_a_paying_account_is_suspended_only_for_exploitation(
    current: Score, paid: bool, expected: str
) -> None:
    assert decide(current, paid=paid, flag_at=30, suspend_at=100) == expected


def day(n: int) -> datetime:
    return NOW + timedelta(days=n)


def test_plan_cycles_count_upgrades_followed_by_a_cheaper_plan() -> None:
    starter, pro, studio = 1900, 4900, 9900
    # Upgrading and staying is no cycle; nor is an upgrade still in force.
    stays = [
        PlanPayment("subscription", starter, day(0)),
        PlanPayment("upgrade", pro, day(10)),
        PlanPayment("renewal", pro, day(30)),
        PlanPayment("upgrade", studio, day(40)),
    ]
    assert plan_cycles(stays) == 0
    # Up late in each period and back down at its end: one cycle a period,
    # however many upgrades the period had.
    cycling = [PlanPayment("subscription", starter, day(0))]
    for period in range(3):
        cycling += [
            PlanPayment("upgrade", pro, day(30 * period + 26)),
            PlanPayment("upgrade", studio, day(30 * period + 27)),
            PlanPayment("renewal", starter, day(30 * period + 30)),
        ]
    assert plan_cycles(cycling) == 3
    # Back to a plan cheaper than the peak but dearer than the start counts;
    # a new subscription after cancelling counts like a renewal; order is by time.
    assert (
        plan_cycles(
            [
                PlanPayment("renewal", pro, day(30)),
                PlanPayment("upgrade", studio, day(20)),
                PlanPayment("subscription", starter, day(0)),
            ]
        )
        == 1
    )
    assert plan_cycles([]) == 0


def test_churn_is_a_cancel_soon_after_the_submission() -> None:
    within = timedelta(seconds=60)
    assert is_churn(NOW, NOW + timedelta(seconds=60), within)
    assert not is_churn(NOW, NOW + timedelta(seconds=61), within)
    assert not is_churn(NOW, NOW - timedelta(seconds=1), within)


def test_identical_prompts_and_fingerprints() -> None:
    assert not identical_prompt_flood(20, 20)
    assert identical_prompt_flood(21, 20)
    assert prompt_fingerprint("a fox") == prompt_fingerprint("a fox")
    assert prompt_fingerprint("a fox") != prompt_fingerprint("a dog")
    assert len(prompt_fingerprint("x" * 20_000)) == 16


def test_retry_after_is_at_least_a_second() -> None:
    assert retry_after_seconds(100.0, 100.0) == 1
    assert retry_after_seconds(100.2, 90.0) == 11
    assert retry_after_seconds(50.0, 100.0) == 1


def test_quotes_have_a_larger_budget() -> None:
    assert budget_per_minute(10, "generation") == 10
    assert budget_per_minute(10, "quote") == 40


def test_the_defaults_cover_every_kind() -> None:
    assert set(DEFAULT_RULES) == set(SIGNAL_KINDS)
    assert longest_window() == timedelta(days=180)
    assert all(rule.weight > 0 and rule.allowance >= 0 for rule in DEFAULT_RULES.values())


def test_the_schema_allows_exactly_the_kinds_and_flag_statuses_of_the_rules() -> None:
    """The database's CHECK lists (db/tables.py, below fair use) and fair
    use's types name the same kinds and statuses: neither can drift."""
    assert ABUSE_SIGNAL_KINDS == SIGNAL_KINDS
    assert get_args(FlagStatus) == ABUSE_FLAG_STATUSES


kinds = st.sampled_from(SIGNAL_KINDS)
ages = st.integers(min_value=-60, max_value=200 * 24 * 3600).map(lambda s: timedelta(seconds=s))
signal_lists = st.lists(st.tuples(kinds, ages), max_size=80).map(
    lambda drawn: [Signal(kind, NOW - age) for kind, age in drawn]
)


@given(signal_lists, kinds, ages)
def test_score_is_monotone_in_signals(
    existing: list[Signal], kind: SignalKind, age: timedelta
) -> None:
    """One more signal never lowers the score (nor the verdict, paid or not)."""
    before = score(existing, NOW)
    after = score([*existing, Signal(kind, NOW - age)], NOW)
    assert after.total >= before.total
    assert after.exploit >= before.exploit
    order = ["clear", "flag", "suspend"]
    assert order.index(verdict(after.total, flag_at=30, suspend_at=100)) >= order.index(
        verdict(before.total, flag_at=30, suspend_at=100)
    )
    for paid in (False, True):
        assert order.index(decide(after, paid=paid, flag_at=30, suspend_at=100)) >= order.index(
            decide(before, paid=paid, flag_at=30, suspend_at=100)
        )


@given(signal_lists, st.integers(min_value=0, max_value=400 * 24 * 3600))
def test_windows_expire(existing: list[Signal], later_s: int) -> None:
    """Time passing without new signals never raises the score, and once the
    longest window has passed it is zero."""
    now_score = score(existing, NOW).total
    later = NOW + timedelta(seconds=later_s)
    assert score(existing, later).total <= now_score or any(s.at > NOW for s in existing)
    assert score(existing, NOW + longest_window() + timedelta(minutes=2)).total == 0


@given(signal_lists)
def test_score_is_the_sum_of_its_parts(existing: list[Signal]) -> None:
    found = score(existing, NOW)
    assert found.total == sum(part.points for part in found.by_kind.values())
    assert all(part.points >= 0 for part in found.by_kind.values())
    exploit = {kind for kind, rule in DEFAULT_RULES.items() if rule.exploit}
    assert exploit == {"clawback", "payment_declined", "plan_cycling"}
    assert found.exploit == sum(found.by_kind[kind].points for kind in exploit)

"""The ledger's pure rules, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasmaart.ledger.rules import (
    Allocation,
    LotView,
    allocate,
    rollover_credits,
    sort_for_burn,
    split_capture,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def lot(lot_id: str, source: str, remaining: int, expires_in: int | None, age: int = 0) -> LotView:
    expires = None if expires_in is None else T0 + timedelta(days=expires_in)
    return LotView(lot_id, source, remaining, expires, T0 - timedelta(days=age))


def test_burn_order() -> None:
    lots = [
        lot("purchase-old", "purchase", 5, None, age=9),
        lot("purchase-new", "purchase", 5, None, age=1),
        lot("sub", "subscription", 5, 10),
        lot("promo", "promo", 5, 10),
        lot("rollover", "rollover", 5, 10),
        lot("adjust-soon", "adjustment", 5, 3),
        lot("promo-late", "promo", 5, 20),
    ]
    assert [x.id for x in sort_for_burn(lots)] == [
        "adjust-soon",
        "promo",
        "sub",
        "rollover",
        "promo-late",
        "purchase-old",
        "purchase-new",
    ]


def test_allocate_spans_lots_and_refuses_overdraft() -> None:
    lots = [lot("a", "purchase", 3, None), lot("b", "subscription", 2, 5), lot("c", "promo", 0, 1)]
    assert allocate(lots, 4) == [("b", 2), ("a", 2)]
    with pytest.raises(ValueError, match="5 credits, 6 asked"):
        allocate(lots, 6)
    with pytest.raises(ValueError, match="positive"):
        allocate(lots, 0)


def test_split_capture_consumes_first_positions() -> None:
    allocations = [Allocation("late", 1, 5), Allocation("soon", 0, 2)]
    assert split_capture(allocations, 3) == ([("soon", 2), ("late", 1)], [("late", 4)])
    assert split_capture(allocations, 0) == ([], [("soon", 2), ("late", 5)])
    assert split_capture(allocations, 7) == ([("soon", 2), ("late", 5)], [])
    with pytest.raises(ValueError, match="cannot capture 8"):
        split_capture(allocations, 8)


@pytest.mark.parametrize(
    ("unused", "cap", "carried"), [(500, 0, 0), (500, 300, 300), (100, 300, 100), (0, 50, 0)]
)
def test_rollover_is_capped(unused: int, cap: int, carried: int) -> None:
    assert rollover_credits(unused, cap) == carried


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["promo", "subscription", "rollover", "adjustment", "purchase"]),
            st.integers(1, 50),
            st.one_of(st.none(), st.integers(1, 60)),
        ),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_allocate_conserves_credits(
    specs: list[tuple[str, int, int | None]], data: st.DataObject
) -> None:
    lots = [lot(f"l{i}", source, n, exp) for i, (source, n, exp) in enumerate(specs)]
    total = sum(x.remaining for x in lots)
    credits = data.draw(st.integers(1, total))
    taken = allocate(lots, credits)
    assert sum(n for _, n in taken) == credits
    by_id = {x.id: x for x in lots}
    assert all(0 < n <= by_id[i].remaining for i, n in taken)
    # Only the last lot touched may be left partly used: burn order is greedy.
    order = [x.id for x in sort_for_burn(lots)]
    positions = [order.index(i) for i, _ in taken]
    assert positions == sorted(positions)
    assert all(n == by_id[i].remaining for i, n in taken[:-1])

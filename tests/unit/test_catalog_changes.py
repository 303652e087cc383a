"""The pure rules of announced catalog changes: which catalog is in force
when, and which changes may be scheduled at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plasmaart.catalog import load_catalog
from plasmaart.catalog.changes import (
    CatalogChange,
    ChangeTarget,
    apply_changes,
    change_problems,
    current_value,
    in_force,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CATALOG = load_catalog()


def change(
    target: ChangeTarget, target_id: str, field: str, value: Any, days: int, ident: str = "c"
) -> CatalogChange:
    return CatalogChange(ident, target, target_id, field, value, T0 + timedelta(days=days))


def test_the_catalog_in_force_applies_due_changes_in_order() -> None:
    first = change("model", "flux-dev", "credits", 6, 0, "a")
    second = change("model", "flux-dev", "credits", 7, 10, "b")
    plan = change("plan", "pro", "monthly_credits", 6000, 5, "c")
    changes = [second, plan, first]
    assert apply_changes(CATALOG, changes, T0 - timedelta(seconds=1)) is CATALOG
    assert apply_changes(CATALOG, changes, T0).model("flux-dev").credits == 6
    at_5 = apply_changes(CATALOG, changes, T0 + timedelta(days=5))
    assert (at_5.model("flux-dev").credits, at_5.plan("pro").monthly_credits) == (6, 6000)
    assert apply_changes(CATALOG, changes, T0 + timedelta(days=10)).model("flux-dev").credits == 7
    assert [c.id for c in in_force(changes, T0 + timedelta(days=6))] == ["a", "c"]
    # The base catalog is never modified.
    assert CATALOG.model("flux-dev").credits == 5


def test_values_as_json_carries_them() -> None:
    assert current_value(CATALOG, "plan", "starter", "model_tiers") == ["image", "video-medium"]
    assert current_value(CATALOG, "plan", "pro", "concurrency") == {"jobs": 4, "video_jobs": 2}
    with pytest.raises(KeyError):
        current_value(CATALOG, "model", "nope", "credits")


@pytest.mark.parametrize(
    ("proposed", "field", "fragment"),
    [
        (change("model", "nope", "credits", 3, 0), "id", "no model"),
        (change("plan", "platinum", "price_cents", 3, 0), "id", "no plan"),
        (change("model", "flux-dev", "tier", "video-medium", 0), "field", "cannot be changed"),
        (change("plan", "pro", "features", [], 0), "field", "cannot be changed"),
        (change("model", "flux-dev", "credits", "8", 0), "value", "valid integer"),
        (change("model", "flux-dev", "credits", 2.5, 0), "value", "valid integer"),
        (change("model", "flux-dev", "credits", 0, 0), "value", "greater than 0"),
        (change("model", "flux-dev", "available", 1, 0), "value", "boolean"),
        (change("plan", "pro", "price_cents", -1, 0), "value", "plan pro: price_cents"),
        (change("plan", "pro", "price_cents", 0, 0), "value", "exactly one plan must cost 0"),
        (change("plan", "free", "price_cents", 100, 0), "value", "exactly one plan must cost 0"),
        (change("plan", "pro", "model_tiers", ["gif"], 0), "value", "model_tiers"),
        (
            change("plan", "pro", "concurrency", {"jobs": 1, "video_jobs": 2}, 0),
            "value",
            "video_jobs 2 is more than jobs 1",
        ),
        (change("model", "flux-dev", "credits", 5, 0), "value", "already 5"),
    ],
)
def test_bad_changes_are_refused(proposed: CatalogChange, field: str, fragment: str) -> None:
    problems = change_problems(CATALOG, [], proposed)
    assert problems, proposed
    assert problems[0][0] == field
    assert fragment in problems[0][1]


def test_good_changes_pass() -> None:
    for proposed in (
        change("model", "veo3", "credits", 900, 0),
        change("model", "veo3", "available", False, 0),
        change("plan", "starter", "model_tiers", ["image"], 0),
        change("plan", "studio", "rollover_cap", 1000, 0),
        change("plan", "pro", "price_cents", 5900, 0),
    ):
        assert change_problems(CATALOG, [], proposed) == [], proposed


def test_a_change_must_keep_later_changes_valid() -> None:
    # Starter drops its video tier on day 30, then its video slot on day 31.
    tiers = change("plan", "starter", "model_tiers", ["image"], 30, "tiers")
    slots = change("plan", "starter", "concurrency", {"jobs": 2, "video_jobs": 0}, 31, "slots")
    assert change_problems(CATALOG, [tiers], slots) == []
    # Bringing video back in between is valid on its own day, but would leave
    # Starter selling video with no video slot from day 31: refused.
    between = CatalogChange(
        "between",
        "plan",
        "starter",
        "model_tiers",
        ["image", "video-medium"],
        T0 + timedelta(days=30, hours=12),
    )
    [(field, message)] = change_problems(CATALOG, [tiers, slots], between)
    assert field == "value"
    assert message.endswith("a plan with video tiers needs concurrency.video_jobs >= 1")
    # What a change is compared with is the value in force at its time.
    again = change("plan", "starter", "model_tiers", ["image"], 35, "again")
    assert "already" in change_problems(CATALOG, [tiers, slots], again)[0][1]

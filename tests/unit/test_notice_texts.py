"""notify.texts, the words of every notice, for the branches the services'
own tests (tests/integration/test_notice_texts.py) do not reach: a model made
available again, a plan benefit given as a table, and a fact nobody wrote
words for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from plasmaart.catalog.changes import CatalogChange
from plasmaart.changes.notices import CatalogChangeNotice, Stage
from plasmaart.notify.texts import render
from plasmaart.outbox import Text, short_title

WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def change(stage: Stage = "announced", **fields: Any) -> CatalogChangeNotice:
    """A notice of Wan Pro made available again, or of ``fields`` changed."""
    values: dict[str, Any] = {
        "target": "model",
        "target_id": "wan-pro",
        "field": "available",
        "value": True,
        "name": "Wan Pro",
        "previous": False,
    }
    values.update(fields)
    return CatalogChangeNotice(
        CatalogChange(
            "chg_1", values["target"], values["target_id"], values["field"], values["value"], WHEN
        ),
        stage,
        name=values["name"],
        previous=values["previous"],
        currency="eur",
    )


def test_a_model_available_again() -> None:
    assert render(change()) == Text(
        "Wan Pro becomes available again",
        "From 2026-03-01 09:30 UTC, Wan Pro can be used again on the plans that include it.",
    )
    assert render(change("reminder")).title == "Tomorrow: wan Pro becomes available again"


def test_a_plan_benefit_given_as_a_table() -> None:
    text = render(
        change(
            target="plan",
            target_id="pro",
            name="Pro",
            field="concurrency",
            previous={"jobs": 4, "video_jobs": 2},
            value={"jobs": 6, "video_jobs": 2},
        )
    )
    assert text.title == "The Pro plan changes: concurrency"
    assert text.body.startswith(
        "The Pro plan's concurrency changes from jobs 4, video_jobs 2 to jobs 6, "
        "video_jobs 2 on 2026-03-01 09:30 UTC."
    )


def test_prices_are_shown_in_the_catalog_currency() -> None:
    text = render(
        change(
            target="plan",
            target_id="pro",
            name="Pro",
            field="price_cents",
            previous=4900,
            value=5450,
        )
    )
    assert "from 49.00 EUR a month to 54.50 EUR a month" in text.body


def test_a_withdrawal_says_nothing_changes() -> None:
    text = render(change("withdrawn"))
    assert text == Text(
        "Withdrawn: wan Pro becomes available again",
        "The change announced for 2026-03-01 09:30 UTC will not happen; nothing changes.",
    )
    assert change("withdrawn").data() == {"change_id": "chg_1", "stage": "withdrawn"}


@dataclass(frozen=True)
class Unknown:
    kind: ClassVar[str] = "test.unknown"

    def data(self) -> dict[str, Any]:
        return {}


def test_a_fact_without_words_is_refused() -> None:
    with pytest.raises(TypeError, match=r"no text for a Unknown \(test.unknown\) notice"):
        render(Unknown())


def test_short_title() -> None:
    assert short_title("x" * 200) == "x" * 200
    assert short_title("x" * 201) == "x" * 199 + "…"

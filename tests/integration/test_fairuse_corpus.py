"""The fair-use corpora (tests/support/fairuse_corpus.py) replayed over HTTP
with a manual clock, on SQLite and PostgreSQL: normal creator work is never
flagged nor suspended, and never refused by a rate limit or a queue cap;
every abuse scenario is caught (suspended for exploitation or for volume
from an account that never paid; flagged for review for volume from one
that paid). docs/fair-use.md has the confusion table
(``python -m tests.support.fairuse_replay``)."""

from __future__ import annotations

import pytest

from plasmaart.clock import ManualClock
from plasmaart.platform import Platform
from tests.support.fairuse_corpus import Scenario, abuse_corpus, normal_corpus
from tests.support.fairuse_replay import replay

# What normal work may be answered: accepted, a declined card (the expired
# card scenario), a typo.
NORMAL_ANSWERS = {200, 201, 402, 422}


@pytest.mark.parametrize("scenario", normal_corpus(), ids=lambda s: s.name)
def test_normal_work_is_never_flagged_nor_suspended(
    platform: Platform, clock: ManualClock, scenario: Scenario
) -> None:
    result = replay(platform, clock, scenario)
    for name, actor in result.actors.items():
        assert actor.outcome == "clear", (name, actor)
        assert set(actor.answers) <= NORMAL_ANSWERS, (name, actor.answers)
        assert actor.answers.get(201, 0) + actor.answers.get(200, 0) > 0, (name, actor.answers)
    assert result.outcome == scenario.expect == "clear"


@pytest.mark.parametrize("scenario", abuse_corpus(), ids=lambda s: s.name)
def test_abuse_is_caught(platform: Platform, clock: ManualClock, scenario: Scenario) -> None:
    result = replay(platform, clock, scenario)
    assert result.outcome == scenario.expect, (result.outcome, result.signals)
    if scenario.family == "exploitation":
        exploit = {"clawback", "payment_declined", "plan_cycling"}
        assert exploit & set(result.signals), result.signals

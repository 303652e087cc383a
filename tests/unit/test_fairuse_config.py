"""Fair use's settings: bad values stop start-up with the variable's name."""

from __future__ import annotations

import pytest

from plasmaart.config import ConfigError, load_settings
from plasmaart.fairuse.rules import DEFAULT_RULES
from plasmaart.fairuse.service import FairUsePolicy


def test_the_policy_comes_from_the_settings() -> None:
    policy = FairUsePolicy.from_settings(
        load_settings(
            fairuse_flag_score=5,
            fairuse_suspend_score=9,
            fairuse_rate_limit_signal_interval_s=0,
            fairuse_churn_cancel_within_s=30,
            fairuse_identical_prompts_allowed=3,
        )
    )
    assert (policy.flag_at, policy.suspend_at) == (5, 9)
    assert policy.rate_limit_signal_interval_s == 0
    assert policy.churn_within.total_seconds() == 30
    assert policy.identical_prompts_allowed == 3
    assert policy.rules == DEFAULT_RULES


def test_the_defaults() -> None:
    policy = FairUsePolicy.from_settings(load_settings())
    assert (policy.flag_at, policy.suspend_at) == (30, 100)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLASMAART_FAIRUSE_FLAG_SCORE", "12")
    monkeypatch.setenv("PLASMAART_FAIRUSE_SUSPEND_SCORE", "40")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/1")
    settings = load_settings()
    assert (settings.fairuse_flag_score, settings.fairuse_suspend_score) == (12, 40)
    assert settings.redis_url == "redis://127.0.0.1:6390/1"


def test_suspending_below_the_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="PLASMAART_FAIRUSE_SUSPEND_SCORE"):
        load_settings(fairuse_flag_score=50, fairuse_suspend_score=40)


def test_a_redis_url_must_be_one() -> None:
    with pytest.raises(ConfigError, match=r"(?i)redis_url: .*redis://"):
        load_settings(redis_url="memcached://127.0.0.1:11211")

"""The checks of ``plasmaart doctor`` that read only the settings."""

from __future__ import annotations

import pytest

from plasmaart.config import Settings
from plasmaart.doctor import (
    DEFAULT_SUPPORT_EMAIL,
    check_billing,
    check_provider,
    support_address_warning,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("PLASMAART_", "STRIPE_")) or name in ("DATABASE_URL", "FAL_KEY"):
            monkeypatch.delenv(name)


def _settings(**values: object) -> Settings:
    return Settings(database_url="sqlite:///var/x.db", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"billing": "stripe"}, "billing is stripe"),
        ({"host": "0.0.0.0"}, "it listens on 0.0.0.0"),  # noqa: S104
        ({"host": "203.0.113.7"}, "it listens on 203.0.113.7"),
        (
            {"stripe_return_url": "https://art.example.com/"},
            "customers come back to https://art.example.com/",
        ),
    ],
)
def test_a_production_setup_with_the_default_address_is_warned(
    values: dict[str, object], reason: str
) -> None:
    warning = support_address_warning(_settings(**values))
    assert warning is not None
    assert DEFAULT_SUPPORT_EMAIL in warning
    assert reason in warning
    assert support_address_warning(_settings(support_email="help@example.com", **values)) is None


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"host": "localhost"},
        {"host": "::1"},
        {"host": "127.0.0.2", "stripe_return_url": "http://127.0.0.1:8000/"},
    ],
)
def test_a_local_trial_is_not_warned(values: dict[str, object]) -> None:
    assert support_address_warning(_settings(**values)) is None


def test_the_serve_host_option_counts_over_the_setting() -> None:
    assert support_address_warning(_settings(), host="0.0.0.0") is not None  # noqa: S104
    assert support_address_warning(_settings(host="0.0.0.0"), host="127.0.0.1") is None  # noqa: S104


def test_billing_and_provider_keys() -> None:
    assert [f.level for f in check_billing(_settings())] == ["ok"]
    missing = check_billing(_settings(billing="stripe"))
    assert [(f.level, f.message.split()[0]) for f in missing] == [
        ("error", "STRIPE_SECRET_KEY"),
        ("error", "STRIPE_WEBHOOK_SECRET"),
    ]
    test_mode = check_billing(
        _settings(billing="stripe", stripe_secret_key="sk_test_1", stripe_webhook_secret="whsec_1")
    )
    assert [f.level for f in test_mode] == ["warning"]
    live = check_billing(
        _settings(billing="stripe", stripe_secret_key="sk_live_1", stripe_webhook_secret="whsec_1")
    )
    assert [f.level for f in live] == ["ok"]
    assert [f.level for f in check_provider(_settings(provider="fal"))] == ["error"]
    assert [f.level for f in check_provider(_settings(provider="fal", fal_key="k"))] == ["ok"]

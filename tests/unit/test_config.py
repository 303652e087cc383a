"""Settings: defaults give the embedded setup; bad values name their variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaart.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PLASMAART_") or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///var/plasmaart.db"
    assert (settings.provider, settings.billing, settings.embedded_worker) == (
        "sandbox",
        "sandbox",
        True,
    )
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.support_email == "neonstudioscontact@gmail.com"
    assert settings.purchased_credits_expire_days is None
    assert (settings.payment_grace_days, settings.notice_days) == (7, 14)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@localhost/pa")
    monkeypatch.setenv("PLASMAART_PORT", "9000")
    monkeypatch.setenv("PLASMAART_BILLING", "stripe")
    settings = load_settings()
    assert (settings.database_url, settings.port, settings.billing) == (
        "postgresql://u@localhost/pa",
        9000,
        "stripe",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PLASMAART_PORT", "eighty"),
        ("PLASMAART_PORT", "70000"),
        ("DATABASE_URL", "mysql://x"),
        ("PLASMAART_PROVIDER", "openai"),
        ("PLASMAART_NOTICE_DAYS", "-1"),
        ("PLASMAART_EMBEDDED_WORKER", "perhaps"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert f"{variable}:" in str(error.value)
    assert repr(value) in str(error.value)


def test_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "plasmaart.toml"
    config.write_text('port = 8123\nsupport_email = "help@example.com"\n')
    monkeypatch.setenv("PLASMAART_CONFIG_FILE", str(config))
    settings = load_settings()
    assert (settings.port, settings.support_email) == (8123, "help@example.com")
    # The environment wins over the file.
    monkeypatch.setenv("PLASMAART_PORT", "8124")
    assert load_settings().port == 8124
    monkeypatch.setenv("PLASMAART_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="PLASMAART_CONFIG_FILE"):
        load_settings()

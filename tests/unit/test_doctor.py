"""The checks of ``plasmaart doctor`` that read only the settings, and its table."""

from __future__ import annotations

import json

import pytest

from plasmaart.config import Settings
from plasmaart.doctor import (
    DEFAULT_SUPPORT_EMAIL,
    Finding,
    check_billing,
    check_provider,
    check_trusted_proxies,
    mask_url,
    render_json,
    render_table,
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


def _levels(findings: list[Finding]) -> list[str]:
    return [finding.level for finding in findings]


LIVE_READY = {
    "billing": "stripe",
    "provider": "fal",
    "fal_key": "id:secret",
    "public_url": "https://art.example.com",
    "stripe_webhook_secret": "whsec_1",
}


def test_stripe_keys_must_be_there_and_of_the_right_kind() -> None:
    assert _levels(check_billing(_settings())) == ["ok"]
    missing = check_billing(_settings(billing="stripe"))
    assert [(f.level, f.message.split()[0]) for f in missing] == [
        ("error", "STRIPE_SECRET_KEY"),
        ("error", "STRIPE_WEBHOOK_SECRET"),
    ]
    assert all(f.fix for f in missing)
    publishable = check_billing(
        _settings(
            billing="stripe", stripe_secret_key="pk_live_abc", stripe_webhook_secret="whsec_1"
        )
    )
    assert _levels(publishable) == ["error", "ok"]
    assert "a publishable key" in publishable[0].message
    not_a_secret = check_billing(
        _settings(
            billing="stripe", stripe_secret_key="sk_test_1", stripe_webhook_secret="sk_test_1"
        )
    )
    assert _levels(not_a_secret) == ["ok", "error"]
    assert "whsec_" in not_a_secret[1].message


@pytest.mark.parametrize("key", ["sk_test_Abc123", "rk_test_Abc123"])
def test_a_test_key_is_fine_locally_and_warned_where_customers_reach(key: str) -> None:
    local = check_billing(
        _settings(billing="stripe", stripe_secret_key=key, stripe_webhook_secret="whsec_1")
    )
    assert _levels(local) == ["ok", "ok"]
    assert "test-mode" in local[0].message
    public = check_billing(_settings(**{**LIVE_READY, "stripe_secret_key": key}))
    assert _levels(public) == ["warning", "ok"]
    assert "its public URL is https://art.example.com" in public[0].message
    assert "Abc123" not in " ".join(f.message + f.fix for f in local + public)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"provider": "sandbox"}, "the provider is the sandbox"),
        ({"stripe_api_base": "http://127.0.0.1:12111"}, "not Stripe's API"),
        ({"public_url": None}, "customers are sent back to http://127.0.0.1:8000"),
    ],
)
def test_a_live_key_with_sandbox_settings_is_warned(values: dict[str, object], reason: str) -> None:
    key = {"stripe_secret_key": "sk_live_Xyz789"}
    assert _levels(check_billing(_settings(**LIVE_READY, **key))) == ["ok", "ok"]
    warned = check_billing(_settings(**{**LIVE_READY, **key, **values}))
    assert _levels(warned) == ["warning", "ok"]
    assert reason in warned[0].message
    assert "Xyz789" not in warned[0].message + warned[0].fix


def test_fal_key_and_webhook_url() -> None:
    assert _levels(check_provider(_settings())) == ["ok"]
    assert _levels(check_provider(_settings(provider="fal"))) == ["error"]
    fal = {"provider": "fal", "fal_key": "id:TopSecret", "public_url": "https://art.example.com"}
    polled = check_provider(_settings(**fal))
    assert _levels(polled) == ["ok", "ok"]
    assert "https://art.example.com/v1/webhooks/fal" in polled[1].message
    cases = {
        "https://art.example.com/v1/webhooks/fal": "ok",
        "https://art.example.com/hooks": "error",
        "ftp://art.example.com/v1/webhooks/fal": "error",
        "http://127.0.0.1:8000/v1/webhooks/fal": "warning",
        "https://10.1.2.3/v1/webhooks/fal": "warning",
        "http://art.example.com/v1/webhooks/fal": "warning",
    }
    for url, level in cases.items():
        found = check_provider(_settings(**fal, fal_webhook_url=url))
        assert _levels(found) == ["ok", level], url
        assert "TopSecret" not in found[1].message + found[1].fix


@pytest.mark.parametrize(
    ("value", "level", "said"),
    [
        ("127.0.0.1", "ok", "127.0.0.1"),
        ("10.0.0.0/8, ::1, 192.168.1.7", "ok", "10.0.0.0/8, ::1, 192.168.1.7"),
        ("", "ok", "127.0.0.1"),
        ("*", "ok", "* (it listens on this machine only)"),
    ],
)
def test_trusted_proxies_parse(value: str, level: str, said: str) -> None:
    [finding] = check_trusted_proxies(_settings(trusted_proxies=value))
    assert finding.level == level
    assert said in finding.message


def test_trusting_any_proxy_while_listening_to_the_network_is_warned() -> None:
    [finding] = check_trusted_proxies(_settings(trusted_proxies="*", host="0.0.0.0"))  # noqa: S104
    assert finding.level == "warning"
    assert "X-Forwarded-For" in finding.message


def test_passwords_in_urls_are_masked() -> None:
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("redis://user:pw@[::1]:6379") == "redis://user:***@[::1]:6379"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_table_wraps_within_its_columns() -> None:
    findings = [
        Finding("ok", "catalog", "short"),
        Finding("error", "support address", "word " * 40, "fix " * 30),
        Finding("warning", "db", "x" * 150),
    ]
    for width in (60, 100, 160):
        table = render_table(findings, width)
        lines = table.splitlines()
        assert lines[0].split() == ["CHECK", "STATUS", "FINDING", "FIX"]
        assert max(len(line) for line in lines) <= max(width, 80)
        finding_at = lines[0].index("FINDING")
        fix_at = lines[0].index("FIX")
        # Each line's finding and fix stay in their columns.
        for line in lines[1:]:
            assert line[finding_at - 1] == " "
            assert len(line) <= fix_at or line[fix_at - 1] == " "
        said = [line[finding_at:fix_at].strip() for line in lines[1:]]
        assert "".join(said).replace(" ", "") == "short" + "word" * 40 + "x" * 150
        assert [line[: len("support address")] for line in lines if "error" in line] == [
            "support address"
        ]


def test_json_for_scripts() -> None:
    findings = [Finding("ok", "catalog", "fine"), Finding("warning", "redis", "unset", "set it")]
    data = json.loads(render_json(findings))
    assert data == {
        "checks": [
            {"check": "catalog", "status": "ok", "finding": "fine", "fix": ""},
            {"check": "redis", "status": "warning", "finding": "unset", "fix": "set it"},
        ],
        "errors": 0,
        "warnings": 1,
        "summary": "0 errors, 1 warning",
    }

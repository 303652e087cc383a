"""Signed download URLs: valid until expiry, for that path, under that secret only."""

from __future__ import annotations

import hashlib
import hmac
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from plasmaart.config import ConfigError, Settings
from plasmaart.media.signing import sign_url, signing_secret, verify

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
PATH = "/v1/outputs/out_01J9ZX/content"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
EXPIRES_AT = NOW + timedelta(minutes=15)


def signed(path: str = PATH, expires_at: datetime = EXPIRES_AT) -> tuple[str, str, str]:
    """(path, expires, signature) as the server reads them back from the URL."""
    url = urlsplit(sign_url(path, expires_at, SECRET))
    query = parse_qs(url.query, strict_parsing=True)
    assert set(query) == {"expires", "signature"}
    return url.path, query["expires"][0], query["signature"][0]


def test_a_signed_url_carries_the_expiry_and_an_hmac_of_path_and_expiry() -> None:
    path, expires, signature = signed()
    assert path == PATH
    assert int(expires) == int(EXPIRES_AT.timestamp())
    # Pinned: changing the signed message would void every link in circulation.
    message = b"plasmaart-signed-url-v1\n" + PATH.encode() + b"\n" + expires.encode()
    assert signature == hmac.new(SECRET, message, hashlib.sha256).hexdigest()


def test_a_valid_url_verifies_until_its_expiry() -> None:
    path, expires, signature = signed()
    assert verify(path, expires, signature, SECRET, NOW)
    assert verify(path, int(expires), signature, SECRET, EXPIRES_AT - timedelta(seconds=1))


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=365)])
def test_an_expired_url_is_refused(after: timedelta) -> None:
    path, expires, signature = signed()
    assert not verify(path, expires, signature, SECRET, EXPIRES_AT + after)


@pytest.mark.parametrize(
    "other_path",
    [
        "/v1/outputs/out_01J9ZY/content",
        "/v1/outputs/out_01J9ZX/content/",
        "/v1/outputs/out_01J9ZX",
        PATH.upper(),
    ],
)
def test_a_url_signed_for_one_path_does_not_open_another(other_path: str) -> None:
    _, expires, signature = signed()
    assert not verify(other_path, expires, signature, SECRET, NOW)


def test_a_pushed_back_expiry_is_refused() -> None:
    path, expires, signature = signed()
    for later in (int(expires) + 1, int(expires) + 86_400):
        assert not verify(path, later, signature, SECRET, NOW)
        assert not verify(path, str(later), signature, SECRET, NOW)


def test_a_tampered_signature_is_refused() -> None:
    path, expires, signature = signed()
    flipped = ("1" if signature[0] == "0" else "0") + signature[1:]
    for bad in (flipped, signature.upper(), signature[:-1], signature + "0", "", "é" * 64):
        assert not verify(path, expires, bad, SECRET, NOW)


def test_another_secret_does_not_verify() -> None:
    path, expires, signature = signed()
    assert not verify(path, expires, signature, OTHER_SECRET, NOW)


@pytest.mark.parametrize("expires", ["", "abc", "-1", "+1795", " 1795", "0012", "1e9", "9" * 5000])
def test_a_malformed_expiry_is_refused_not_an_error(expires: str) -> None:
    _, _, signature = signed()
    assert not verify(PATH, expires, signature, SECRET, NOW)


@pytest.mark.parametrize(
    "path", ["v1/outputs/x", "/v1/outputs/x?download=1", "/v1/o#x", "/v1/o x", "/v1/é", "/a\nb"]
)
def test_only_absolute_ascii_paths_without_query_are_signed(path: str) -> None:
    with pytest.raises(ValueError, match="signable path"):
        sign_url(path, EXPIRES_AT, SECRET)
    assert not verify(path, int(EXPIRES_AT.timestamp()), "0" * 64, SECRET, NOW)


def test_naive_datetimes_and_short_secrets_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_url(PATH, EXPIRES_AT.replace(tzinfo=None), SECRET)
    path, expires, signature = signed()
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(path, expires, signature, SECRET, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        sign_url(PATH, EXPIRES_AT, b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        verify(path, expires, signature, b"", NOW)


# The secret


def settings_in(var_dir: Path, secret_key: str | None = None) -> Settings:
    return Settings(var_dir=var_dir, secret_key=SecretStr(secret_key) if secret_key else None)


def test_the_operators_secret_key_is_used_as_is(tmp_path: Path) -> None:
    assert signing_secret(settings_in(tmp_path, "k" * 40)) == b"k" * 40
    assert not (tmp_path / "secret_key").exists()


def test_a_short_secret_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLASMAART_SECRET_KEY") as refused:
        signing_secret(settings_in(tmp_path, "hunter2"))
    assert "hunter2" not in str(refused.value)


def test_without_a_secret_key_one_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    first = signing_secret(settings_in(var_dir))
    secret_file = var_dir / "secret_key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(first) >= 32
    # A restart reads the same secret back, so links already sent keep working.
    assert signing_secret(settings_in(var_dir)) == first
    assert secret_file.read_text().strip().encode() == first
    assert [p.name for p in var_dir.iterdir()] == ["secret_key"]
    # Another installation gets its own.
    assert signing_secret(settings_in(tmp_path / "elsewhere")) != first


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def start() -> None:
        barrier.wait()
        results.append(signing_secret(settings))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]


def test_a_damaged_secret_file_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("\n")
    with pytest.raises(ConfigError, match="secret_key"):
        signing_secret(settings_in(tmp_path))

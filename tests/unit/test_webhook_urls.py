"""The address rule for outbound webhooks (webhook_urls.py): only http(s)
URLs whose every address is public, unless the operator allows private ones."""

from __future__ import annotations

import ipaddress

import pytest

from plasmaart.webhook_urls import UnsafeUrl, check_destination, is_public, parse


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "https://10.0.0.5/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://localhost/",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="private, loopback or link-local"):
        check_destination(url, allow_private=False)


def test_the_operator_may_allow_private_addresses() -> None:
    found = check_destination("http://127.0.0.1:9000/hook", allow_private=True)
    assert found == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "https://"),
        ("file:///etc/passwd", "https://"),
        ("https:///path-only", "names a host"),
        ("https://user:pw@example.com/", "user name"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://" + "a" * 2001 + ".com/", "at most"),
        ("https://name.invalid/", "does not resolve"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        check_destination(url, allow_private=True)


def test_public_addresses_pass_and_ports_default_by_scheme() -> None:
    assert check_destination("https://93.184.215.14/x", allow_private=False) == [
        ipaddress.ip_address("93.184.215.14")
    ]
    assert parse("https://example.com/x") == ("https", "example.com", 443)
    assert parse("http://example.com/x") == ("http", "example.com", 80)
    assert is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))

"""Behind a reverse proxy (docs/deployment.md#behind-a-reverse-proxy): a real
``plasmaart serve`` process believes ``X-Forwarded-For`` and
``X-Forwarded-Proto`` only from ``PLASMAART_TRUSTED_PROXIES``, its links start
with ``PLASMAART_PUBLIC_URL`` whatever the request's host, and its event
streams tell proxies not to buffer them.

The trusted proxy is 127.0.0.2 (another loopback address of the same
machine); requests from 127.0.0.1 come from a peer that is not trusted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from plasmaart.billing import create_backends
from plasmaart.billing.stripe import StripeBackend
from plasmaart.bootstrap import bootstrap
from plasmaart.clock import ManualClock
from plasmaart.config import ConfigError, Settings, load_settings
from plasmaart.db.tables import notification_outbox
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.processes import ServerProcess, child_env

PUBLIC_URL = "https://art.example.test"
CLIENT = "203.0.113.7"  # the address the proxy says the request came from
FORWARDED = {"X-Forwarded-For": CLIENT, "X-Forwarded-Proto": "https"}
# Not uvicorn's default (127.0.0.1): the setting decides, both ways.
TRUSTED, UNTRUSTED = "127.0.0.2", "127.0.0.1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, ServerProcess]]:
    root = tmp_path_factory.mktemp("proxy")
    var_dir = root / "var"
    database_url = f"sqlite:///{var_dir / 'plasmaart.db'}"
    platform = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=True)
    env = child_env(database_url, var_dir)
    env.update(PLASMAART_TRUSTED_PROXIES=TRUSTED, PLASMAART_PUBLIC_URL=PUBLIC_URL)
    server = ServerProcess("api", env, root)
    try:
        server.start()
        yield platform, server
    finally:
        server.close()
        platform.close()


def client_from(address: str, server: ServerProcess) -> httpx.Client:
    """A client whose connections come from ``address``."""
    return httpx.Client(
        base_url=server.url,
        transport=httpx.HTTPTransport(local_address=address),
        timeout=10,
    )


def log_in(
    served: tuple[Platform, ServerProcess], email: str, source: str
) -> tuple[TestUser, httpx.Response]:
    platform, server = served
    user = make_user(platform, email)
    with client_from(source, server) as http:
        answer = http.post(
            "/v1/auth/login", json={"email": user.email, "password": PASSWORD}, headers=FORWARDED
        )
    assert answer.status_code == 200, answer.text
    return user, answer


def session_address(server: ServerProcess, user: TestUser) -> str:
    sessions = httpx.get(f"{server.url}/v1/sessions", headers=user.auth, timeout=10)
    assert sessions.status_code == 200, sessions.text
    (session,) = sessions.json()["data"]
    address: str = session["address"]
    return address


def test_a_trusted_proxy_names_the_client_and_the_scheme(
    served: tuple[Platform, ServerProcess],
) -> None:
    user, answer = log_in(served, "trusted@example.com", TRUSTED)
    # The client's address (rate limits, fair use, audit) is the proxy's word.
    assert session_address(served[1], user) == CLIENT
    # The browser reached the proxy over HTTPS: the cookies are Secure.
    cookies = answer.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert all("; secure" in cookie.lower() for cookie in cookies), cookies


def test_an_untrusted_peer_cannot_forge_the_client_or_the_scheme(
    served: tuple[Platform, ServerProcess],
) -> None:
    user, answer = log_in(served, "untrusted@example.com", UNTRUSTED)
    assert session_address(served[1], user) == UNTRUSTED
    cookies = answer.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert not any("; secure" in cookie.lower() for cookie in cookies), cookies


def test_links_start_with_the_public_address_whatever_the_request_says(
    served: tuple[Platform, ServerProcess],
) -> None:
    platform, server = served
    user = make_user(platform, "links@example.com")
    with client_from(TRUSTED, server) as http:
        answer = http.post(
            "/v1/auth/password-reset",
            json={"email": user.email},
            headers={**FORWARDED, "Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
    assert answer.status_code == 202, answer.text
    with platform.db.read() as conn:
        bodies = conn.execute(
            select(notification_outbox.c.body).where(
                notification_outbox.c.kind == "account.password_reset"
            )
        ).scalars()
        [link] = [word for body in bodies for word in body.split() if "token=" in word]
    assert link.startswith(f"{PUBLIC_URL}/reset-password?token="), link


def test_event_streams_are_not_buffered_by_proxies(
    served: tuple[Platform, ServerProcess],
) -> None:
    platform, server = served
    user = make_user(platform, "stream@example.com")
    with (
        client_from(TRUSTED, server) as http,
        http.stream("GET", "/v1/events", headers={**user.auth, **FORWARDED}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"


def test_stripe_sends_customers_back_to_the_public_address(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        billing="stripe",
        stripe_secret_key="sk_test_x",
        stripe_webhook_secret="whsec_x",
        public_url=PUBLIC_URL,
    )
    backend = create_backends(settings, ManualClock())["stripe"]
    assert isinstance(backend, StripeBackend)
    assert backend.return_url == f"{PUBLIC_URL}/"


@pytest.mark.parametrize(
    ("value", "kept"),
    [("10.0.0.0/8, 127.0.0.1", "10.0.0.0/8,127.0.0.1"), ("*", "*"), ("", "127.0.0.1")],
)
def test_the_trusted_proxies_are_addresses_or_networks(value: str, kept: str) -> None:
    assert load_settings(trusted_proxies=value).trusted_proxies == kept


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("127.0.0.1,proxy.local", r"'proxy\.local' is not an IP address or network"),
        # uvicorn reads a network strictly: this one would match no peer.
        ("10.0.0.1/8", r"'10\.0\.0\.1/8' has host bits set \(did you mean 10\.0\.0\.0/8\?\)"),
        ("*,10.0.0.1", r"mixes \* with addresses"),
    ],
)
def test_a_mistyped_proxy_address_is_refused(value: str, said: str) -> None:
    with pytest.raises(ConfigError, match=f"PLASMAART_TRUSTED_PROXIES: .*{said}"):
        load_settings(trusted_proxies=value)

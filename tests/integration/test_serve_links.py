"""``plasmaart serve --port P`` mails links to the address it listens on
when ``PLASMAART_PUBLIC_URL`` is unset, and to the public address when set:
a real server process, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from plasmaart.db.tables import notification_outbox
from plasmaart.platform import Platform
from tests.support.accounts import make_user
from tests.support.processes import ServerProcess, child_env


@pytest.fixture
def server_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return child_env(database_url, tmp_path / "server-var")


def reset_link_queued(platform: Platform) -> str:
    with platform.db.read() as conn:
        [body] = conn.execute(
            select(notification_outbox.c.body).where(
                notification_outbox.c.kind == "account.password_reset"
            )
        ).scalars()
    [line] = [word for word in body.split() if "/reset-password?token=" in word]
    return str(line)


def served(env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess("api", env, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("public_url", [None, "https://art.example.com"])
def test_mailed_links_start_with_the_public_address(
    platform: Platform, server_env: dict[str, str], tmp_path: Path, public_url: str | None
) -> None:
    if public_url:
        server_env["PLASMAART_PUBLIC_URL"] = public_url
    ada = make_user(platform, "ada@example.com")
    for server in served(server_env, tmp_path):
        answer = httpx.post(
            f"{server.url}/v1/auth/password-reset", json={"email": ada.email}, timeout=10
        )
        assert answer.status_code == 202, answer.text
        expected = public_url or server.url  # --port, not PLASMAART_PORT's 8000
        assert reset_link_queued(platform).startswith(f"{expected}/reset-password?token=")

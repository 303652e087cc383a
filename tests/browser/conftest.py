"""Browser tests: the dashboard served for real (uvicorn, a worker thread, the
sandbox provider, SQLite) and driven by Debian's headless Chromium through
Playwright's sync API. Nothing is downloaded.

One server and one browser serve the whole module; each test gets its own
browser context (cookies) and its own users. Screenshots land in
``screenshots/`` at the repository root (ignored by git).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.live_server import live_server
from tests.support.mail import Inbox, SmtpServer, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"
# The longest the page may take to show what the server did (a job of the
# sandbox at no delay takes well under a second).
LIVE_TIMEOUT_MS = 15_000
expect.set_options(timeout=LIVE_TIMEOUT_MS)


@contextmanager
def sqlite_platform(folder: Path, **overrides: Any) -> Iterator[Platform]:
    """A platform on a new SQLite database in ``folder``, with ``overrides``."""
    settings = Settings(
        database_url=f"sqlite:///{folder / 'plasmaart.db'}", var_dir=folder / "var", **overrides
    )
    platform = bootstrap(settings, migrate=True)
    try:
        yield platform
    finally:
        platform.close()


@contextmanager
def served(platform: Platform, *, concurrency: int, port: int | None = None) -> Iterator[str]:
    """``platform`` served on ``port``, with a worker running its jobs and mail."""
    worker = Worker(platform, concurrency=concurrency)
    thread: threading.Thread = worker.start_thread()
    try:
        with live_server(platform, port=port) as url:
            yield url
    finally:
        worker.stop()
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def dashboard_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with sqlite_platform(tmp_path_factory.mktemp("dashboard"), clock_interval_s=0.5) as platform:
        yield platform


@pytest.fixture(scope="module")
def base_url(dashboard_platform: Platform) -> Iterator[str]:
    with served(dashboard_platform, concurrency=4) as url:
        yield url


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd, loopback) the mail platform sends to."""
    with SmtpServer() as received:
        yield received


@pytest.fixture(scope="module")
def mail_platform(tmp_path_factory: pytest.TempPathFactory, inbox: Inbox) -> Iterator[Platform]:
    """A platform that mails through ``inbox``'s server, so address
    verification is required, with its links naming the port its server
    (``mail_base_url``) listens on."""
    port = free_port()
    with sqlite_platform(
        tmp_path_factory.mktemp("mail-dashboard"),
        clock_interval_s=0.3,
        smtp_host="127.0.0.1",
        smtp_port=inbox.port,
        smtp_starttls=False,
        smtp_from="noreply@plasmaart.test",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
    ) as platform:
        yield platform


@pytest.fixture(scope="module")
def mail_base_url(mail_platform: Platform) -> Iterator[str]:
    """``mail_platform`` served, with a worker delivering its mail."""
    with served(mail_platform, concurrency=2, port=mail_platform.settings.port) as url:
        yield url


@pytest.fixture
def mail_context(browser: Browser, mail_base_url: str) -> Iterator[BrowserContext]:
    with browsing(browser, mail_base_url) as made:
        yield made


@pytest.fixture
def mail_page(mail_context: BrowserContext) -> Page:
    return mail_context.new_page()


# One Chromium for the browser tests (each test has a context of its own:
# cookies and storage), closed when the package's last test ends.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def browsing(browser: Browser, base_url: str) -> Iterator[BrowserContext]:
    """A browser context of its own (cookies) on ``base_url``, laptop-sized."""
    made = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    made.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def context(browser: Browser, base_url: str) -> Iterator[BrowserContext]:
    with browsing(browser, base_url) as made:
        yield made


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

"""Every dashboard page at a phone's width (390x844) and a laptop's
(1280x800), for a user with a history (generations, payments, a team, API
keys, notifications) and for an admin: nothing runs off the side of the page,
the Usage history's credits and balance are on screen, tables turn into
labelled cards on the phone, and the chart's labels stay readable."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from tests.browser.conftest import LIVE_TIMEOUT_MS, screenshot
from tests.support.accounts import PASSWORD, TestUser, make_user

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 800}
PAGES = (
    "/",
    "/create",
    "/generations",
    "/usage",
    "/billing",
    "/team",
    "/settings",
    "/notifications",
)
ADMIN_PAGES = ("/admin", "/admin/audit")
# A long address, as real ones can be: it must wrap, not push the page wider.
PACK = "pack-1000"
EMAIL = "margarethe.vandersteenhoven-longname@photography-studio.example.com"


def log_in(page: Page, email: str) -> None:
    page.goto("/login?next=/")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/")


def with_history(platform: Platform) -> TestUser:
    """A Studio owner with finished, failed and canceled jobs, a credit pack,
    a team, API keys and notifications."""
    user = make_user(platform, EMAIL, plan="studio")
    member = make_user(platform, "member-of-a-rather-long-team@example.com")
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, user.id)
        customer = platform.billing.customer(conn, user.id)
        platform.billing.packs.buy(conn, customer, PACK, idempotency_key=None)
        team = platform.teams.create_team(conn, account, "The Night Shift Photography Collective")
        invitation = platform.teams.invite(conn, team.id, user.id, member.email)
    with platform.db.write() as conn:
        platform.teams.accept_invitation(
            conn, invitation.token, platform.accounts.get(conn, member.id)
        )
    jobs = [
        ("flux-schnell", {"sandbox": {"delay_s": 0}}),
        ("flux-dev", {"sandbox": {"delay_s": 0, "fail": True}}),
        ("flux-schnell", {"sandbox": {"delay_s": 60}}),
    ]
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, user.id)
        submitted = [
            platform.generations.submit(
                conn, account, GenerationRequest(model, "a heron at dawn " * 8, params=params)
            )
            for model, params in jobs
        ]
        platform.credentials.create_api_key(conn, user.id, "a key with a rather long name")
        for n in range(3):
            platform.notifications.notify(
                conn, user.id, "catalog.change", f"Notice {n}", "Wan Pro is here. " * 6
            )
    with platform.db.write() as conn:
        platform.generations.cancel(conn, platform.accounts.get(conn, user.id), submitted[2].id)
    return user


def overflow(page: Page) -> int:
    """How far the page reaches past the window's right edge, in px."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def off_screen(page: Page, selector: str) -> list[str]:
    """The elements matching ``selector`` that reach past the window's edges."""
    return list(
        page.evaluate(
            """(selector) => Array.from(document.querySelectorAll(selector))
                // Not what is hidden for screen readers, nor the chart, which
                // scrolls sideways inside its own box.
                .filter((el) => !el.closest("thead, .visually-hidden, .chart-scroll"))
                .filter((el) => {
                  const box = el.getBoundingClientRect();
                  return box.width > 0 && (box.left < 0 || box.right > window.innerWidth);
                })
                .map((el) => el.outerHTML.slice(0, 120))""",
            selector,
        )
    )


def visit_all(page: Page, paths: tuple[str, ...], label: str) -> None:
    for path in paths:
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        name = label + (path.strip("/").replace("/", "-") or "home")
        screenshot(page, name)
        assert overflow(page) <= 0, f"{path} is {overflow(page)} px wider than the window"
        assert off_screen(page, "main *") == [], path


@pytest.fixture(scope="module")
def user(dashboard_platform: Platform) -> TestUser:
    return with_history(dashboard_platform)


@pytest.mark.parametrize("viewport", [PHONE, LAPTOP], ids=["phone", "laptop"])
def test_no_dashboard_page_runs_off_the_side(
    browser: Browser,
    base_url: str,
    dashboard_platform: Platform,
    user: TestUser,
    viewport: dict[str, int],
) -> None:
    label = "phone-" if viewport is PHONE else "laptop-"
    context = browser.new_context(base_url=base_url, viewport=viewport)
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, user.email)
        page.goto("/usage")
        # The canceled job is not shown as a failure: its own badge and colour.
        rows = page.locator("[data-history] tbody tr")
        expect(rows).to_have_count(3)
        canceled = page.locator("[data-history] .status-canceled")
        failed = page.locator("[data-history] .status-failed")
        expect(canceled).to_have_text("canceled")
        expect(failed).to_have_text("failed")
        colour = "(el) => getComputedStyle(el).backgroundColor"
        assert canceled.evaluate(colour) != failed.evaluate(colour)
        visit_all(page, PAGES, label)
    finally:
        context.close()
    admin = make_user(
        dashboard_platform, f"{label}admin-with-a-long-address@example.com", admin=True
    )
    context = browser.new_context(base_url=base_url, viewport=viewport)
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, admin.email)
        visit_all(page, ADMIN_PAGES, label)
    finally:
        context.close()


def test_usage_on_a_phone_shows_credits_and_balance_as_labelled_cards(
    browser: Browser, base_url: str, user: TestUser
) -> None:
    context = browser.new_context(base_url=base_url, viewport=PHONE)
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, user.email)
        page.goto("/usage")
        row = page.locator("[data-history] tbody tr").first
        for label in ("Credits consumed", "Remaining balance", "Status"):
            cell = row.locator(f'td[data-label="{label}"]')
            cell.scroll_into_view_if_needed()  # below the chart: down, never sideways
            expect(cell).to_be_in_viewport(ratio=1)
            box = cell.bounding_box()
            assert box is not None
            assert box["x"] >= 0, label
            assert box["x"] + box["width"] <= PHONE["width"], label
            # Each value carries its column's name beside it.
            shown = cell.evaluate("(el) => getComputedStyle(el, '::before').content")
            assert shown == f'"{label}"', (label, shown)
        # The e-mail on Settings wraps inside its own cell.
        page.goto("/settings")
        email = page.locator(".facts dd").first
        since = page.locator(".facts dd").nth(1)
        expect(email).to_have_text(EMAIL)
        email_box, since_box = email.bounding_box(), since.bounding_box()
        assert email_box is not None
        assert since_box is not None
        overlap_x = min(
            email_box["x"] + email_box["width"], since_box["x"] + since_box["width"]
        ) - max(email_box["x"], since_box["x"])
        overlap_y = min(
            email_box["y"] + email_box["height"], since_box["y"] + since_box["height"]
        ) - max(email_box["y"], since_box["y"])
        assert overlap_x <= 0 or overlap_y <= 0, "the e-mail runs into Member since"
        assert email.evaluate("(el) => el.scrollWidth <= el.clientWidth")
    finally:
        context.close()


@pytest.mark.parametrize("viewport", [PHONE, LAPTOP], ids=["phone", "laptop"])
def test_the_usage_chart_labels_are_readable(
    browser: Browser, base_url: str, user: TestUser, viewport: dict[str, int]
) -> None:
    context = browser.new_context(base_url=base_url, viewport=viewport)
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, user.email)
        page.goto("/usage")
        labels = page.locator(".chart svg text")
        expect(labels.first).to_be_attached()
        heights = labels.evaluate_all("(els) => els.map((el) => el.getBoundingClientRect().height)")
        assert len(heights) >= 4
        assert min(heights) >= 10, heights
        assert overflow(page) <= 0
    finally:
        context.close()

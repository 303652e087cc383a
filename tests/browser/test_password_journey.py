"""Forgot password → mail → new password → logged in, in a real browser with
mail through a real SMTP server; then the Security section of the settings
page: this device marked, another session revoked, the password changed."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, expect

from plasmaart.platform import Platform
from tests.browser.conftest import LIVE_TIMEOUT_MS, screenshot
from tests.support.accounts import PASSWORD, make_user
from tests.support.mail import Inbox, link_to, text_of, token_of

RESET_PASSWORD = "a fresh browser passphrase"
CHANGED_PASSWORD = "an even fresher passphrase"


def log_in(page: Page, email: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/")


def full_shot(page: Page, name: str) -> None:
    """A full-page screenshot from the top (scrolled, the sticky header
    would be drawn over the middle of the page)."""
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, name)


def other_browser(browser: Browser, base_url: str) -> BrowserContext:
    made = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    made.set_default_timeout(LIVE_TIMEOUT_MS)
    return made


def test_forgot_password_by_mail_to_logged_in(
    mail_page: Page,
    mail_platform: Platform,
    mail_base_url: str,
    inbox: Inbox,
    browser: Browser,
) -> None:
    page = mail_page
    user = make_user(mail_platform, "forgetful@example.com")
    # Another browser logged in before: the reset logs it out.
    elsewhere = other_browser(browser, mail_base_url)
    try:
        stale = elsewhere.new_page()
        log_in(stale, user.email, PASSWORD)

        page.goto("/login")
        page.get_by_role("link", name="Forgot your password?").click()
        page.wait_for_url(lambda url: urlsplit(url).path == "/forgot-password")
        expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
        screenshot(page, "password-01-forgot")
        page.get_by_label("E-mail").fill(user.email)
        page.get_by_role("button", name="Send the link").click()
        expect(page.get_by_role("heading", name="Check your mail")).to_be_visible()
        expect(page.locator("[data-forgot-answer]")).to_contain_text("If an account uses")
        screenshot(page, "password-02-sent")

        message = inbox.wait_for(user.email, subject="Reset your PlasmaArt password")
        link = link_to(message, "/reset-password")
        assert link.startswith(mail_base_url)
        assert "30 minutes" in text_of(message)
        page.goto(link)
        expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
        # The token left the address bar (and the history) once the page read it.
        page.wait_for_function("() => window.location.search === ''")
        assert token_of(link) not in page.url
        page.get_by_label("New password", exact=True).fill(RESET_PASSWORD)
        page.get_by_label("New password again").fill(RESET_PASSWORD + "x")
        page.get_by_role("button", name="Set the new password").click()
        expect(page.locator('[data-error-for="password_again"]')).to_have_text(
            "The two passwords are not the same."
        )
        screenshot(page, "password-03-reset-mismatch")
        page.get_by_label("New password again").fill(RESET_PASSWORD)
        page.get_by_role("button", name="Set the new password").click()
        page.wait_for_url(lambda url: urlsplit(url).path == "/")
        expect(page.locator(".account-email")).to_have_text(user.email)
        expect(page.locator(".toast.success")).to_contain_text("Your password is changed")
        screenshot(page, "password-04-logged-in")

        notice = inbox.wait_for(user.email, subject="Your PlasmaArt password was changed")
        assert "If it was not you" in text_of(notice)

        # The link works once.
        page.goto(link)
        expect(page.get_by_role("heading", name="This link does not work")).to_be_visible()
        screenshot(page, "password-05-link-used")

        # The browser logged in before the reset is logged out.
        stale.goto("/settings")
        stale.wait_for_url(lambda url: urlsplit(url).path == "/login")

        # Log in there again, then revoke that session from the settings page.
        log_in(stale, user.email, RESET_PASSWORD)
        page.goto("/settings")
        security = page.locator("#security")
        rows = security.locator("[data-sessions] tbody tr")
        expect(rows).to_have_count(2)
        expect(security.locator("tr.current")).to_contain_text("This device")
        expect(security.locator("tr.current")).to_contain_text("Chrome")
        full_shot(page, "password-06-security")
        page.once("dialog", lambda dialog: dialog.accept())
        security.locator("tr:not(.current)").get_by_role("button", name="Revoke").click()
        expect(page.locator(".toast.success")).to_contain_text("Session logged out.")
        expect(rows).to_have_count(1)
        stale.goto("/")
        stale.wait_for_url(lambda url: urlsplit(url).path == "/login")

        # Change the password: a wrong current one first.
        security.get_by_label("Current password").fill("not the password at all")
        security.get_by_label("New password", exact=True).fill(CHANGED_PASSWORD)
        security.get_by_label("New password again").fill(CHANGED_PASSWORD)
        page.get_by_role("button", name="Change password").click()
        expect(page.locator('[data-error-for="current_password"]')).to_have_text(
            "This is not your password."
        )
        full_shot(page, "password-07-wrong-current")
        security.get_by_label("Current password").fill(RESET_PASSWORD)
        page.get_by_role("button", name="Change password").click()
        expect(page.locator(".toast.success")).to_contain_text("Password changed.")
        expect(page.locator(".account-email")).to_have_text(user.email)  # still logged in
        full_shot(page, "password-08-changed")
        log_in(stale, user.email, CHANGED_PASSWORD)
    finally:
        elsewhere.close()

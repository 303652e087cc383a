"""Sign up, prove the address, subscribe: in a real browser against a server
that mails through a real SMTP server (so verification is required).

The sign-up form gives way to "Check your inbox"; until the address is proven
every page carries a banner with a Resend button and subscribing is refused;
a superseded link explains itself; the newest link confirms the address and
logs the browser in; then the plan is bought on Plan & billing."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Dialog, Page, expect

from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user
from tests.support.mail import Inbox, link_to, text_of

EMAIL = "journey@example.com"


def accept_next_dialog(page: Page) -> list[str]:
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    return asked


def test_sign_up_verify_and_subscribe(
    mail_page: Page, mail_platform: Platform, inbox: Inbox
) -> None:
    page = mail_page
    # Sign up: no session yet, the link is in the mail.
    page.goto("/signup")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    sent = page.locator("[data-signup-sent]")
    expect(sent).to_be_visible()
    expect(sent).to_contain_text(f"We sent a link to {EMAIL}")
    expect(page.locator("form[data-auth]")).to_be_hidden()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    screenshot(page, "verify-1-check-inbox")
    assert "pa_session" not in {c["name"] for c in page.context.cookies()}

    first = link_to(inbox.wait_for(EMAIL, subject="Confirm your e-mail address"), "/verify-email")
    welcome = text_of(inbox.wait_for(EMAIL, subject="Welcome to PlasmaArt"))
    assert "/billing" in welcome
    assert mail_platform.settings.support_email in welcome

    # Logged in but unproven: the banner on every page, and no paying.
    page.get_by_role("link", name="Log in").click()
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    banner = page.locator("#verify-note")
    expect(banner).to_contain_text(f"We sent a link to {EMAIL}")
    page.goto("/billing")
    expect(banner).to_be_visible()
    asked = accept_next_dialog(page)
    page.get_by_role("button", name="Subscribe to Starter").click()
    expect(page.get_by_text("verify your address first", exact=False).first).to_be_visible()
    assert len(asked) == 1
    screenshot(page, "verify-2-banner-and-refusal")

    # A new link: the first one stops working.
    banner.get_by_role("button", name="Resend the link").click()
    expect(page.locator("[data-toasts]")).to_contain_text("A new link is on its way")
    newest = link_to(
        inbox.wait_for(EMAIL, subject="Confirm your e-mail address", count=2), "/verify-email"
    )
    assert newest != first
    page.goto(first)
    invalid = page.locator('[data-verify-state="invalid"]')
    expect(invalid).to_be_visible()
    expect(invalid).to_contain_text("This link does not work")
    expect(invalid.get_by_role("button", name="Send me a new link")).to_be_visible()
    screenshot(page, "verify-3-superseded-link")

    # Opened in a browser without a session: the link logs it in.
    page.context.clear_cookies()
    page.goto(newest)
    done = page.locator('[data-verify-state="done"]')
    expect(done).to_be_visible()
    expect(done).to_contain_text(f"{EMAIL} is confirmed")
    screenshot(page, "verify-4-confirmed")

    # Subscribe through Plan & billing, now that the address is proven.
    done.get_by_role("link", name="Choose a plan").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/billing")
    expect(page.locator("#verify-note")).to_have_count(0)
    asked = accept_next_dialog(page)
    page.get_by_role("button", name="Subscribe to Starter").click()
    expect(page.locator("[data-toasts]")).to_contain_text("Subscribed to Starter")
    expect(page.locator(".plan.current")).to_contain_text("Starter")
    assert len(asked) == 1
    assert asked[0].startswith("Subscribe to Starter?")
    me = page.request.get("/v1/me").json()
    assert (me["email_verified"], me["plan"]) == (True, "starter")
    screenshot(page, "verify-5-subscribed")


def test_change_the_address_from_settings(
    mail_page: Page, mail_platform: Platform, inbox: Inbox
) -> None:
    page = mail_page
    user = make_user(mail_platform, "mover@example.com")
    page.goto("/login?next=/settings")
    page.get_by_label("E-mail").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/settings")
    expect(page.locator("#verify-note")).to_have_count(0)  # made verified, like users create
    form = page.locator("form[data-method='PATCH'][data-url='/v1/me']")
    form.get_by_label("New e-mail address").fill("mover@new.example")
    form.get_by_label("Current password").fill("not the password")
    form.get_by_role("button", name="Send the confirmation link").click()
    expect(form.locator("[data-error-for=body]")).to_contain_text("password is wrong")
    form.get_by_label("Current password").fill(PASSWORD)
    form.get_by_role("button", name="Send the confirmation link").click()
    expect(page.locator("[data-toasts]")).to_contain_text("Check the new inbox")
    expect(page.locator("[data-pending-email]")).to_contain_text("mover@new.example")
    screenshot(page, "verify-6-change-pending")

    told = text_of(inbox.wait_for("mover@example.com", subject="A change of your e-mail"))
    assert "mover@new.example" in told
    link = link_to(
        inbox.wait_for("mover@new.example", subject="Confirm your new e-mail address"),
        "/verify-email",
    )
    page.goto(link)
    expect(page.locator('[data-verify-state="done"]')).to_contain_text(
        "mover@new.example is confirmed"
    )
    page.goto("/settings")
    expect(page.locator(".account-email")).to_have_text("mover@new.example")
    expect(page.locator("[data-pending-email]")).to_have_count(0)
    expect(page.locator("[data-email-state]")).to_have_text("Confirmed")
    inbox.wait_for("mover@example.com", subject="Your e-mail address was changed")
    screenshot(page, "verify-7-changed")

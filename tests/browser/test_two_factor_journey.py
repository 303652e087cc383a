"""Two-factor in a real browser: turn it on from Settings (QR code and key, a
wrong code, then the right one, the recovery codes shown once and
downloaded), log out, log in with a code from the app, log out, log in with
a recovery code; screenshots of each step.

The codes are computed here with pyotp from the key the page shows, as the
phone would. The server uses wall time (the browser platform's system
clock), and a code is accepted once: the login uses the code of the next
30-second step (which the server accepts, as it accepts a phone running a
little ahead) rather than waiting for the step to change."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
from playwright.sync_api import Page, expect

from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user

EMAIL = "two-factor@example.com"


def fill_credentials(page: Page) -> None:
    page.goto("/login?next=/settings")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def log_out(page: Page) -> None:
    page.locator(".account [data-logout]").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/login")


def test_turn_on_log_in_with_a_code_then_a_recovery_code(
    page: Page, dashboard_platform: Platform, tmp_path: Path
) -> None:
    make_user(dashboard_platform, EMAIL)
    fill_credentials(page)
    page.wait_for_url(lambda url: urlsplit(url).path == "/settings")
    section = page.locator("[data-twofa]")
    expect(section.get_by_role("heading", name="Two-factor authentication")).to_be_visible()
    expect(section).to_contain_text("Off.")
    section.get_by_role("button", name="Turn on two-factor").click()

    # Step 1: the QR code and the key to type by hand.
    qr = section.get_by_role("img", name=re.compile("QR code"))
    expect(qr).to_be_visible()
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    assert qr.evaluate("img => img.naturalWidth") > 0, "the QR code did not load (CSP?)"
    secret = section.locator("[data-twofa-secret]").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    screenshot(page, "two-factor-scan")

    # Step 2: a mistyped code is refused beside the field; the right one works.
    code_field = section.get_by_label("Enter the 6-digit code the app shows")
    right = pyotp.TOTP(secret).now()
    code_field.fill("000000" if right != "000000" else "111111")
    section.get_by_role("button", name="Confirm and turn on").click()
    expect(section.locator("#err-twofa-confirm")).to_contain_text("wrong or was used already")
    screenshot(page, "two-factor-wrong-code")
    code_field.fill(pyotp.TOTP(secret).now())
    section.get_by_role("button", name="Confirm and turn on").click()

    # Step 3: the recovery codes, shown once, with a clear instruction.
    codes_box = section.locator("[data-twofa-codes]")
    expect(codes_box).to_be_visible()
    expect(codes_box).to_contain_text("Store these recovery codes now.")
    expect(codes_box).to_contain_text("shown only this once")
    expect(codes_box.locator("li")).to_have_count(10)
    codes = [c.strip() for c in codes_box.locator("li").all_inner_texts()]
    assert all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", c) for c in codes)
    expect(section.locator("[data-twofa-enrol]")).to_be_hidden()
    expect(section.locator("[data-twofa-off]")).to_be_hidden()
    expect(section.locator("[data-twofa-now-on]")).to_be_visible()
    screenshot(page, "two-factor-recovery-codes")
    with page.expect_download() as download_info:
        codes_box.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == "plasmaart-recovery-codes.txt"
    saved = tmp_path / "codes.txt"
    download.save_as(saved)
    assert saved.read_text().split("\n\n", 1)[1].split() == codes
    codes_box.get_by_role("button", name="I have stored them").click()
    expect(section).to_contain_text("On")
    expect(section.locator("[data-twofa-left]")).to_contain_text("10 unused recovery codes")
    expect(section.locator("[data-twofa-codes]")).to_be_hidden()
    screenshot(page, "two-factor-on")

    # Log out, log in: the password, then the code, on the same page.
    log_out(page)
    fill_credentials(page)
    otp = page.get_by_label("Code from your authenticator app")
    expect(otp).to_be_visible()
    expect(otp).to_be_focused()
    expect(page.get_by_label("E-mail")).to_have_value(EMAIL)
    expect(page.locator("form[data-auth]")).to_contain_text("Use a recovery code")
    screenshot(page, "two-factor-login-code")
    # The confirmation spent this step's code: the next step's, as a phone
    # a little ahead shows it.
    otp.fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Verify and log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/settings")
    expect(page.locator("[data-twofa]")).to_contain_text("10 unused recovery codes")

    # Log out, log in with a recovery code (a wrong one first).
    log_out(page)
    fill_credentials(page)
    expect(page.get_by_label("Code from your authenticator app")).to_be_visible()
    page.get_by_role("button", name="Lost your phone? Use a recovery code").click()
    recovery = page.get_by_label("Recovery code")
    expect(recovery).to_be_focused()
    recovery.fill("wrong-codes")
    page.get_by_role("button", name="Verify and log in").click()
    expect(page.locator("#err-otp")).to_contain_text("That recovery code is wrong")
    screenshot(page, "two-factor-login-recovery")
    recovery.fill(codes[0])
    page.get_by_role("button", name="Verify and log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/settings")
    expect(page.locator("[data-twofa-left]")).to_contain_text("9 unused recovery codes")
    screenshot(page, "two-factor-after-recovery")

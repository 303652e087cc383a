"""Buy a pack, get its receipt: a verified customer buys a credit pack from
the Plan & billing page (sandbox billing), the receipt arrives by mail
through a real SMTP server, its link opens the receipt page (logging in
first, as a link opened from a mail client does), which shows the number,
the pack and the amount, on screen and as printed; the payments list links
the same receipt. Under Stripe billing (the local fake), the Plan & billing
page's "Manage billing on Stripe" opens the customer's Stripe portal."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Dialog, Page, expect

from plasmaart.billing.backends import Customer
from plasmaart.billing.stripe import StripeBackend
from plasmaart.bootstrap import bootstrap
from plasmaart.clock import SystemClock
from plasmaart.config import Settings
from plasmaart.platform import Platform
from tests.browser.conftest import LIVE_TIMEOUT_MS, screenshot
from tests.support.accounts import PASSWORD, make_user
from tests.support.fake_stripe import FakeStripe
from tests.support.live_server import live_server
from tests.support.mail import Inbox, html_of, link_to, text_of

BUYER = "receipt-buyer@example.com"


def log_in(page: Page, email: str) -> None:
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_buy_a_pack_then_open_its_receipt_from_the_mail(
    mail_page: Page, mail_platform: Platform, inbox: Inbox
) -> None:
    page = mail_page
    buyer = make_user(mail_platform, BUYER)
    page.goto("/login?next=/billing")
    log_in(page, BUYER)
    page.wait_for_url(lambda url: urlsplit(url).path == "/billing")
    questions: list[str] = []

    def accept(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    # The page reloads itself once the purchase is made: wait for that load,
    # or it would interrupt the navigation to the receipt below.
    purchases = page.expect_response(lambda r: urlsplit(r.url).path == "/v1/credit-purchases")
    with page.expect_navigation(), purchases as paid:
        page.get_by_role("button", name="Buy 1,000 credits").click()
    assert paid.value.status == 201, paid.value.text()
    assert len(questions) == 1
    assert "You pay $12 now" in questions[0]

    mail = inbox.wait_for(BUYER, subject="Your PlasmaArt receipt", timeout=15)
    text = text_of(mail)
    with mail_platform.db.read() as conn:
        [payment] = mail_platform.billing.payments.history(conn, buyer.id, limit=10)
    assert payment.receipt_number is not None
    number = f"PA-{payment.receipt_number:06d}"
    assert str(mail["Subject"]) == f"Your PlasmaArt receipt {number}"
    for line in (
        f"Receipt number: {number}",
        "For: Credit pack: 1,000 credits",
        "Amount paid: 12.00 USD",
        "Credits granted: 1,000",
    ):
        assert line in text, line
    link = link_to(mail, f"/v1/payments/{payment.id}/receipt")
    assert link in html_of(mail)
    assert mail_platform.settings.support_email in text

    # Opened from the mail client: a fresh browser session logs in, then
    # lands on the receipt.
    page.context.clear_cookies()
    page.goto(link)
    page.wait_for_url(lambda url: urlsplit(url).path == "/login")
    log_in(page, BUYER)
    page.wait_for_url(link)
    expect(page.get_by_role("heading", name="Receipt")).to_be_visible()
    expect(page.locator("[data-receipt-number]")).to_have_text(number)
    expect(page.locator("[data-purchase]")).to_contain_text("Credit pack: 1,000 credits")
    expect(page.locator("[data-amount]")).to_have_text("12.00 USD")
    expect(page.locator("[data-credits]")).to_have_text("1,000")
    expect(page.get_by_text(BUYER)).to_be_visible()
    expect(page.get_by_role("button", name="Print or save as PDF")).to_be_visible()
    screenshot(page, "receipt-page")

    # Printed: the receipt alone (no buttons), on white.
    page.emulate_media(media="print")
    expect(page.get_by_role("button", name="Print or save as PDF")).to_be_hidden()
    expect(page.locator("[data-receipt-number]")).to_be_visible()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(255, 255, 255)"
    screenshot(page, "receipt-print")
    page.emulate_media(media="screen")

    # The payments list of Plan & billing links the same receipt.
    page.get_by_role("link", name="Back to Plan & billing").click()
    page.wait_for_url(re.compile(r"/billing$"))
    row_link = page.locator(f'[data-receipt="{payment.id}"]')
    expect(row_link).to_have_text(number)
    screenshot(page, "receipt-billing-payments")
    row_link.click()
    page.wait_for_url(link)
    expect(page.locator("[data-receipt-number]")).to_have_text(number)


def test_manage_billing_on_stripe_opens_the_customer_portal(
    browser: Browser, tmp_path: Path
) -> None:
    clock = SystemClock()
    with FakeStripe(clock) as fake:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'stripe.db'}",
            var_dir=tmp_path / "var",
            **fake.platform_settings(),
        )
        platform = bootstrap(settings, clock=clock, migrate=True)
        try:
            kai = make_user(platform, "portal-customer@example.com")
            backend = platform.billing.backends.get("stripe")
            assert isinstance(backend, StripeBackend)
            with platform.db.write() as conn:  # a customer of Stripe's, as a checkout makes
                customer_id = backend.customer_id(conn, Customer(kai.id, kai.wallet_id, kai.email))
            with live_server(platform) as url:
                context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
                context.set_default_timeout(LIVE_TIMEOUT_MS)
                try:
                    page = context.new_page()
                    page.goto("/login?next=/billing")
                    log_in(page, kai.email)
                    page.wait_for_url(lambda url: urlsplit(url).path == "/billing")
                    button = page.get_by_role("button", name="Manage billing on Stripe")
                    expect(button).to_be_visible()
                    expect(page.get_by_text("Sandbox billing")).to_have_count(0)
                    screenshot(page, "billing-stripe-portal-button")
                    button.click()
                    page.wait_for_url(re.compile(re.escape(fake.url) + r"/portal/bps_"))
                finally:
                    context.close()
            [asked] = fake.calls_to("POST", "/v1/billing_portal/sessions")
            assert asked.params["customer"] == customer_id
            assert asked.params["return_url"] == fake.platform_settings()["stripe_return_url"]
        finally:
            platform.close()

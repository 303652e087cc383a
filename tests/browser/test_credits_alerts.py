"""Credits → Balance alerts in a real browser: add alerts in credits and in
percent, set the expiry notice's days, see a refusal beside the alert it is
about, reach the limit of five, remove one, then watch an alert fire when a
hold takes the balance below it; screenshots of each step."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, expect
from sqlalchemy import select

from plasmaart.db.tables import notification_outbox
from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user

EMAIL = "alerts@example.com"


def test_set_alerts_and_see_one_fire(page: Page, dashboard_platform: Platform) -> None:
    user = make_user(dashboard_platform, EMAIL, plan="starter")  # 2,000 credits a month
    page.goto("/login?next=/credits")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/credits")
    section = page.locator("[data-alerts]")
    expect(section.get_by_role("heading", name="Balance alerts")).to_be_visible()
    expect(section).to_contain_text("No alerts yet.")
    expect(section).to_contain_text("2,000 credits on Starter")
    screenshot(page, "credits-alerts-empty")

    # Two alerts: 500 credits, and 10% of the monthly credits (200).
    section.get_by_role("button", name="Add an alert").click()
    section.get_by_label("Threshold of alert 1").fill("500")
    section.get_by_role("button", name="Add an alert").click()
    section.get_by_label("Threshold of alert 2").fill("10")
    section.get_by_label("Unit of alert 2").select_option("percent")
    section.get_by_label("Tell me this many days before credits expire").fill("7")
    section.get_by_role("button", name="Save alerts").click()
    expect(page.locator(".toast")).to_contain_text("Balance alerts saved.")
    states = section.locator("[data-alert-states] tbody tr")
    expect(states).to_have_count(2)
    expect(states.nth(0)).to_contain_text("500 credits")
    expect(states.nth(0)).to_contain_text("Armed")
    expect(states.nth(1)).to_contain_text("200 credits")
    expect(states.nth(1)).to_contain_text("10% of monthly credits")
    expect(section.get_by_label("Tell me this many days before credits expire")).to_have_value("7")
    expect(section).to_contain_text("Now: 7 days before.")
    screenshot(page, "credits-alerts-saved")

    # A duplicate is refused beside its own row, and nothing is saved.
    section.get_by_role("button", name="Add an alert").click()
    section.get_by_label("Threshold of alert 3").fill("500")
    section.get_by_role("button", name="Save alerts").click()
    error = section.locator('[data-error-for="alerts.2"]')
    expect(error).to_contain_text("the same as alert 1 (alerts.0)")
    expect(section.get_by_label("Threshold of alert 3")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "credits-alerts-duplicate")

    # Five at most: the button to add one more is disabled at five.
    section.get_by_label("Threshold of alert 3").fill("100")
    section.get_by_role("button", name="Add an alert").click()
    section.get_by_label("Threshold of alert 4").fill("50")
    section.get_by_role("button", name="Add an alert").click()
    section.get_by_label("Threshold of alert 5").fill("1000")
    expect(section.get_by_role("button", name="Add an alert")).to_be_disabled()
    # Remove the 50 (the fourth): the fifth becomes the fourth.
    section.locator("[data-alert-row]").nth(3).get_by_role("button", name="Remove").click()
    expect(section.get_by_role("button", name="Add an alert")).to_be_enabled()
    expect(section.get_by_label("Threshold of alert 4")).to_have_value("1000")
    section.get_by_role("button", name="Save alerts").click()
    expect(page.locator(".toast")).to_contain_text("Balance alerts saved.")
    expect(states).to_have_count(4)
    expect(states.nth(0)).to_contain_text("1,000 credits")

    # A hold takes the balance from 2,000 to 800: the 1,000 fires, the others stay armed.
    with dashboard_platform.db.write() as conn:
        dashboard_platform.ledger.hold(
            conn, user.wallet_id, 1200, idempotency_key="browser-alerts-hold"
        )
    page.reload()
    expect(states.nth(0)).to_contain_text("Fired")
    expect(states.nth(0)).to_contain_text("armed again at 1,000 credits")
    expect(states.nth(0)).not_to_contain_text("Never")
    expect(states.nth(1)).to_contain_text("Armed")
    # The notice of that crossing is queued, once, for the app and the mail.
    with dashboard_platform.db.read() as conn:
        titles = (
            conn.execute(
                select(notification_outbox.c.title).where(
                    notification_outbox.c.user_id == user.id,
                    notification_outbox.c.kind == "credits.low",
                )
            )
            .scalars()
            .all()
        )
    assert titles == ["Your balance fell below 1,000 credits"]
    screenshot(page, "credits-alerts-fired")

    # At a phone's width the section still fits.
    page.set_viewport_size({"width": 390, "height": 900})
    page.reload()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide at 390px"
    screenshot(page, "credits-alerts-phone")

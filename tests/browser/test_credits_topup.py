"""The Credits page's auto top-up section in a real browser: turning it on
(the cap typed in money, saved in cents), a refusal shown at its field, the
worker buying a pack once a spend takes the balance below the threshold (the
last run and what was spent shown), and a charge the bank wants confirmed:
the page says so and buys the pack on the spot, which ends the wait."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, TestUser, make_user

# The worker charges a run within a tick of its clock (0.5 s here), or at
# once when woken; this bounds the wait.
CHARGED_WITHIN_S = 15.0


def log_in(page: Page, email: str) -> None:
    page.goto("/login?next=/credits")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/credits")


def topup(page: Page) -> dict[str, Any]:
    answer = page.request.get("/v1/auto-topup")
    assert answer.ok, answer.text()
    found: dict[str, Any] = answer.json()
    return found


def wait_for_run(page: Page, status: str) -> dict[str, Any]:
    """The last run once it is ``status`` (the worker charged it)."""
    deadline = time.monotonic() + CHARGED_WITHIN_S
    while time.monotonic() < deadline:
        state = topup(page)
        if state["last_run"] is not None and state["last_run"]["status"] == status:
            return state
        time.sleep(0.1)
    raise AssertionError(f"no {status} run within {CHARGED_WITHIN_S}s: {topup(page)}")


def spend(platform: Platform, who: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        hold = platform.ledger.hold(conn, who.wallet_id, credits, idempotency_key=f"{key}:h")
        platform.ledger.capture(conn, hold.hold_id, credits, idempotency_key=f"{key}:c")


def test_turning_auto_top_up_on_and_watching_it_buy(
    page: Page, dashboard_platform: Platform
) -> None:
    platform = dashboard_platform
    ana = make_user(platform, "ana.topup@example.com", credits=1050)
    log_in(page, ana.email)
    section = page.locator("[data-topup]")
    expect(section.get_by_role("heading", name="Auto top-up")).to_be_visible()
    expect(section.locator("[data-topup-state]")).to_have_text("Off")
    expect(section.locator("[data-topup-last]")).to_have_text("None yet")
    screenshot(page, "credits-topup-off")

    # A cap below the pack's price is refused at its field; nothing is saved.
    section.get_by_label("Buy credits automatically").check()
    section.get_by_label("When my available balance drops below").fill("1000")
    section.get_by_label("Buy this pack").select_option("pack-1000")
    section.get_by_label("Spend at most this much a month").fill("5")
    section.get_by_role("button", name="Save auto top-up").click()
    error = section.locator("[data-error-for=monthly_cap_cents]")
    expect(error).to_be_visible()
    expect(error).to_contain_text("below the price of the pack (12.00 USD)")
    screenshot(page, "credits-topup-refused")
    assert topup(page)["pack"] is None

    section.get_by_label("Spend at most this much a month").fill("36.00")
    section.get_by_role("button", name="Save auto top-up").click()
    page.wait_for_load_state()
    expect(section.locator("[data-topup-state]")).to_have_text("On")
    saved = topup(page)
    assert saved["enabled"] is True
    assert (saved["threshold"], saved["pack"]) == (1000, "pack-1000")
    assert saved["monthly_cap_cents"] == 3600  # typed in dollars, saved in cents
    expect(section.locator("[data-topup-spent]")).to_have_text("$0 of $36")

    spend(platform, ana, 100, "ana-1")  # 950: below the threshold
    wait_for_run(page, "succeeded")
    page.reload()
    expect(section.locator("[data-topup-run-status]")).to_have_attribute(
        "data-topup-run-status", "succeeded"
    )
    expect(section.locator("[data-topup-last]")).to_contain_text("Bought")
    expect(section.locator("[data-topup-spent]")).to_have_text("$12 of $36")
    expect(section.locator("[data-topup-failures]")).to_have_text("0 of 3")
    screenshot(page, "credits-topup-bought")

    # The bank wants the next charge confirmed: the page offers to buy the
    # pack now, and doing so ends the wait.
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, ana.id, declines=False, requires_action=True)
    spend(platform, ana, 1000, "ana-2")  # 950 again
    wait_for_run(page, "action_required")
    page.reload()
    action = section.locator("[data-topup-action]")
    expect(action).to_contain_text("Your bank asks you to confirm this top-up")
    expect(section.locator("[data-topup-last]")).to_contain_text("Needs confirming")
    screenshot(page, "credits-topup-action-required")
    with platform.db.write() as conn:
        sandbox.set_card(conn, ana.id, declines=False, requires_action=False)
    action.get_by_role("button", name="Buy 1,000 credits for $12").click()
    page.wait_for_load_state()
    expect(section.locator("[data-topup-action]")).to_have_count(0)
    expect(section.locator("[data-topup-last]")).to_contain_text("Not charged")
    state = topup(page)
    assert state["in_flight"] is False
    answer = page.request.get("/v1/balance")
    assert answer.json()["available"] == 1950
    screenshot(page, "credits-topup-confirmed")

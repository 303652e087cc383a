"""Spend limits on the dashboard, in a real browser: a key created on Settings
with its limits, the wallet's monthly limit set on Credits and shown with
what was spent, a key's limits changed from its row, and a team member's cap
shown read-only beside them."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import APIRequestContext, Page, expect

from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.browser.test_dashboard import log_in
from tests.support.accounts import make_user


def api(
    request: APIRequestContext, method: str, path: str, user_auth: dict[str, str], **body: Any
) -> Any:
    answer = request.fetch(path, method=method, headers=user_auth, data=body or None)
    assert answer.ok, answer.text()
    return answer.json()


def generate(request: APIRequestContext, auth: dict[str, str], **body: Any) -> Any:
    return api(
        request,
        "POST",
        "/v1/generations",
        auth,
        model="flux-dev",
        prompt="a harbour in fog",
        params={"sandbox": {"delay_s": 600}},
        **body,
    )


def test_limits_on_the_credits_page(page: Page, dashboard_platform: Platform) -> None:
    ada = make_user(dashboard_platform, "ada-limits@example.com", plan="starter")
    log_in(page, ada.email, next_path="/settings")
    # A key with its limits, made where keys are made.
    page.get_by_label("Key name").fill("render farm")
    page.get_by_label("Credits per day").fill("50")
    page.get_by_label("Credits per month").fill("200")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("[data-secret-value]")
    expect(secret).to_contain_text("pa_live_")
    robot = {"Authorization": f"Bearer {secret.inner_text().strip()}"}
    screenshot(page, "settings-key-with-limits")
    generate(page.request, robot)

    page.goto("/credits")
    section = page.locator("#spend-limits")
    expect(section.get_by_role("heading", name="Spend limits")).to_be_visible()
    expect(section.get_by_test_id("wallet-limit")).to_contain_text("No monthly limit")
    expect(section.get_by_test_id("wallet-limit")).to_contain_text("5 credits")
    row = section.locator("tr", has_text="render farm")
    expect(row.get_by_label("Per day")).to_have_value("50")
    expect(row.get_by_label("Per month")).to_have_value("200")
    expect(row.locator('[data-label="Spent today"]')).to_have_text("5 of 50")
    # The wallet's monthly limit.
    section.get_by_label("Monthly limit (credits)").fill("30")
    section.get_by_role("button", name="Save monthly limit").click()
    expect(page.locator(".toast")).to_contain_text("Monthly limit saved.")
    expect(section.get_by_test_id("wallet-limit")).to_contain_text("5 of 30 credits")
    limit = api(page.request, "GET", "/v1/spend-limit", ada.auth)
    assert (limit["monthly_credits"], limit["spent"]) == (30, 5)
    # A key's limits, changed on its row: a daily limit removed.
    row.get_by_label("Per day").fill("")
    row.get_by_label("Per month").fill("120")
    row.get_by_role("button", name="Save limits of render farm").click()
    expect(page.locator(".toast")).to_contain_text("Limits of render farm saved.")
    expect(row.get_by_label("Per month")).to_have_value("120")
    expect(row.get_by_label("Per day")).to_have_value("")
    keys = api(page.request, "GET", "/v1/api-keys", ada.auth)["data"]
    (farm,) = [k for k in keys if k["name"] == "render farm"]
    assert (farm["daily_credit_limit"], farm["monthly_credit_limit"]) == (None, 120)
    # A wrong value is refused beside its field, and nothing changes.
    section.get_by_label("Monthly limit (credits)").fill("0")
    section.get_by_role("button", name="Save monthly limit").click()
    expect(section.locator('[data-error-for="monthly_credits"]')).to_be_visible()
    assert api(page.request, "GET", "/v1/spend-limit", ada.auth)["monthly_credits"] == 30
    screenshot(page, "credits-limits")


def test_a_members_cap_is_shown_beside_the_limits(page: Page, dashboard_platform: Platform) -> None:
    owner = make_user(dashboard_platform, "owner-limits@example.com", plan="studio")
    bob = make_user(dashboard_platform, "bob-limits@example.com")
    request = page.request
    team = api(request, "POST", "/v1/teams", owner.auth, name="Harbour Crew")
    invitation = api(
        request, "POST", f"/v1/teams/{team['id']}/invitations", owner.auth, email=bob.email
    )
    api(request, "POST", f"/v1/invitations/{invitation['token']}/accept", bob.auth)
    api(
        request,
        "PATCH",
        f"/v1/teams/{team['id']}/members/{bob.id}",
        owner.auth,
        monthly_credit_cap=40,
    )
    generate(request, bob.auth, team_id=team["id"])
    log_in(page, bob.email, next_path="/credits")
    mine = page.get_by_test_id(f"my-cap-{team['id']}")
    expect(mine).to_contain_text("Harbour Crew")
    expect(mine).to_contain_text("your cap is 40 credits a month; you spent 5 this month")
    expect(page.get_by_role("link", name="Team page")).to_have_attribute("href", "/team")
    # Read-only here: no field for it.
    expect(page.locator('input[name="monthly_credit_cap"]')).to_have_count(0)
    screenshot(page, "credits-limits-member")
    _log_out(page)
    log_in(page, owner.email, next_path="/credits")
    crew = page.get_by_role("table", name="Members' caps in Harbour Crew")
    expect(crew.locator("tr", has_text=bob.email)).to_contain_text("40")
    expect(
        crew.locator("tr", has_text=bob.email).locator('[data-label="Spent this month"]')
    ).to_have_text("5")
    page.get_by_role("link", name="Change the caps in Harbour Crew").click()
    expect(page).to_have_url(f"{_origin(page)}/team#team-{team['id']}")
    screenshot(page, "credits-limits-owner-team")


def _origin(page: Page) -> str:
    url: str = page.evaluate("location.origin")
    return url


def _log_out(page: Page) -> None:
    page.context.clear_cookies()

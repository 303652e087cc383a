"""Paying from the dashboard in a real browser: subscribing, upgrading and
buying a credit pack each ask first, saying what is charged now, the credits
granted now and (for a plan) what renews when. Saying no charges nothing;
saying yes charges exactly the amount shown and grants the credits shown."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Dialog, Page, Request, expect

from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user

TERMS = re.compile(r"You pay \$([\d,]+(?:\.\d\d)?) now and get ([\d,]+) credits now")
PAID = ("/v1/subscription", "/v1/credit-purchases")


def log_in(page: Page, email: str) -> None:
    page.goto("/login?next=/billing")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/billing")


def payments(page: Page) -> list[dict[str, Any]]:
    answer = page.request.get("/v1/payments")
    assert answer.ok, answer.text()
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def balance(page: Page) -> int:
    answer = page.request.get("/v1/balance")
    assert answer.ok, answer.text()
    return int(answer.json()["available"])


def ask(page: Page, button: str, *, accept: bool) -> str:
    """Click ``button``, answer its question, and return the question."""
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", answer)
    page.get_by_role("button", name=button).click()
    if accept:
        # The action runs and the page reloads: its message shows after.
        page.wait_for_load_state()
    else:
        page.evaluate("0")  # a round trip: the click's handler has run
    assert len(asked) == 1, f"{button} did not ask before charging"
    return asked[0]


def terms(question: str) -> tuple[int, int]:
    """The amount (cents) and credits a question states."""
    found = TERMS.search(question)
    assert found is not None, question
    dollars = found.group(1).replace(",", "")
    cents = round(float(dollars) * 100)
    return cents, int(found.group(2).replace(",", ""))


def declined_then_paid(page: Page, button: str, toast: str) -> tuple[str, dict[str, Any]]:
    """Decline ``button``'s question (nothing sent, nothing charged), then
    accept it; the new payment is returned with the question."""
    before = payments(page)
    sent: list[str] = []

    def record(request: Request) -> None:
        if request.method != "GET" and urlsplit(request.url).path in PAID:
            sent.append(request.url)

    page.on("request", record)
    question = ask(page, button, accept=False)
    assert sent == [], f"declining {button} still sent {sent}"
    assert payments(page) == before
    again = ask(page, button, accept=True)
    assert again == question
    expect(page.locator("[data-toasts]")).to_contain_text(toast)
    page.remove_listener("request", record)
    after = payments(page)
    assert len(after) == len(before) + 1
    new = next(p for p in after if p["id"] not in {q["id"] for q in before})
    return question, new


def test_every_paid_action_asks_with_the_amount_and_charges_exactly_that(
    page: Page, dashboard_platform: Platform
) -> None:
    user = make_user(dashboard_platform, "payer@example.com")
    log_in(page, user.email)
    with dashboard_platform.db.read() as conn:
        customer = dashboard_platform.billing.customer(conn, user.id)
        quote = dashboard_platform.billing.subscriptions.preview(conn, customer, "starter")
    screenshot(page, "paying-plans")

    # Subscribing: the preview's numbers, and the renewal.
    question, payment = declined_then_paid(page, "Subscribe to Starter", "Subscribed to Starter")
    assert question.startswith("Subscribe to Starter?")
    assert terms(question) == (quote.amount_cents, quote.credits_now)
    assert f"Then ${quote.renews_amount_cents // 100} a month, renewing on" in question
    assert quote.renews_at.strftime("%b %d, %Y") in question
    assert (payment["amount_cents"], payment["credits"]) == terms(question)
    assert balance(page) == quote.credits_now
    expect(page.locator(".plan.current")).to_contain_text("Starter")

    # Upgrading: prorated, shown on the card and asked again.
    card = page.locator(".plan", has=page.get_by_role("heading", name="Pro"))
    shown = card.locator("[data-quote]").inner_text()
    before = balance(page)
    question, payment = declined_then_paid(page, "Upgrade to Pro", "Upgraded to Pro")
    assert question.startswith("Upgrade to Pro now?")
    assert terms(question) == terms(shown)
    assert (payment["amount_cents"], payment["credits"]) == terms(question)
    assert payment["amount_cents"] > 0
    assert balance(page) - before == terms(question)[1]
    assert "a month from" in question

    # A credit pack: the catalog's price and credits, nothing renews.
    before = balance(page)
    question, payment = declined_then_paid(page, "Buy 1,000 credits", "1,000 credits added.")
    assert terms(question) == (1200, 1000)
    assert "nothing renews" in question
    assert (payment["amount_cents"], payment["credits"]) == (1200, 1000)
    assert balance(page) - before == 1000

    # Downgrading charges nothing now, and says from when.
    count = len(payments(page))
    question = ask(page, "Downgrade to Starter", accept=True)
    assert question.startswith("Move to Starter? Nothing is charged now.")
    assert "takes effect on" in question
    expect(page.locator(".plan-status")).to_contain_text("Changes to Starter on")
    assert len(payments(page)) == count
    screenshot(page, "paying-after")

"""The Webhooks page in a real browser: add an endpoint and see its secret
once, a refusal shown beside its field, edit the events, disable and enable,
rotate the secret, read the delivery log (a delivery written here as the
dispatcher writes it) and replay a delivery, reveal the account's secret,
delete the endpoint. The operator allows private addresses here, so the
endpoint is a loopback port where nothing listens."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect
from sqlalchemy import insert, select, update

from plasmaart.db.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
)
from plasmaart.platform import Platform
from tests.browser.conftest import browsing, screenshot, served, sqlite_platform
from tests.support.accounts import PASSWORD, TestUser, make_user

RECEIVER = "http://127.0.0.1:9/hooks/plasmaart"  # the discard port: nothing answers


@pytest.fixture(scope="module")
def hooks_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with sqlite_platform(
        tmp_path_factory.mktemp("webhooks"), clock_interval_s=0.5, webhooks_allow_private=True
    ) as platform:
        yield platform


@pytest.fixture(scope="module")
def hooks_url(hooks_platform: Platform) -> Iterator[str]:
    with served(hooks_platform, concurrency=2) as url:
        yield url


@pytest.fixture
def hooks_page(browser: Browser, hooks_url: str) -> Iterator[Page]:
    made: BrowserContext
    with browsing(browser, hooks_url) as made:
        yield made.new_page()


def log_in(page: Page, email: str) -> None:
    page.goto("/login?next=/webhooks")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/webhooks")


def failed_delivery(platform: Platform, user: TestUser, endpoint_id: str) -> tuple[str, str]:
    """An event the endpoint got twice without success, written as the
    dispatcher writes it (already fanned out, so no dispatcher adds to it)."""
    with platform.db.write() as conn:
        event = platform.webhook_events.emit(
            conn,
            cause_key=f"browser:{user.id}",
            user_id=user.id,
            type="payment.failed",
            data={"payment_id": "pay_browser"},
        )
        assert event is not None
        now = platform.clock.now()
        conn.execute(
            update(webhook_events).where(webhook_events.c.id == event).values(fanned_out_at=now)
        )
        delivery = f"wd_{user.id[-20:]}"
        conn.execute(
            insert(webhook_deliveries).values(
                id=delivery,
                event_id=event,
                endpoint_id=endpoint_id,
                url=RECEIVER,
                status="failed",
                attempts=2,
                next_attempt_at=now,
                last_status_code=500,
                last_error="the receiver answered 500",
                created_at=now - timedelta(hours=1),
            )
        )
        for minutes in (60, 55):
            conn.execute(
                insert(webhook_attempts).values(
                    delivery_id=delivery,
                    attempted_at=now - timedelta(minutes=minutes),
                    status_code=500,
                    error="the receiver answered 500",
                    duration_ms=12,
                )
            )
    return event, delivery


def test_endpoints_are_added_rotated_replayed_and_deleted(
    hooks_page: Page, hooks_platform: Platform
) -> None:
    page = hooks_page
    user = make_user(hooks_platform, "hooks@example.com")
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    log_in(page, user.email)
    expect(page.get_by_role("link", name="Webhooks", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.locator("[data-no-endpoints]")).to_be_visible()

    # A refusal goes beside its field, and nothing is added.
    create = page.locator("form[data-webhook-create]")
    create.get_by_label("URL").fill(RECEIVER)
    for box in create.locator('input[name="events"]').all():
        box.uncheck()
    create.get_by_role("button", name="Add endpoint").click()
    expect(create.locator('[data-error-for="events"]')).to_have_text("choose at least one event")
    screenshot(page, "webhooks-refused")

    create.get_by_label("Description").fill("Render farm")
    create.get_by_label(re.compile("^generation.succeeded")).check()
    create.get_by_label(re.compile("^payment.failed")).check()
    create.get_by_role("button", name="Add endpoint").click()
    secret_box = create.locator("[data-secret]")
    expect(secret_box).to_be_visible()
    first_secret = secret_box.locator("[data-secret-value]").inner_text()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", first_secret)
    screenshot(page, "webhooks-secret-once")
    secret_box.get_by_role("button", name="Done").click()

    card = page.locator("[data-endpoint]")
    expect(card).to_have_count(1)
    expect(card.locator("h2")).to_have_text(RECEIVER)
    expect(card.locator("[data-endpoint-state]")).to_have_text("Enabled")
    expect(card).to_contain_text("generation.succeeded, payment.failed")
    expect(card.locator("[data-secret-hint]")).to_have_text("whsec_…" + first_secret[-4:])
    assert first_secret not in page.content()  # shown once, never again
    with hooks_platform.db.read() as conn:
        endpoint_id = conn.execute(select(webhook_endpoints.c.id)).scalar_one()

    # Edit the events.
    card.locator("summary", has_text="Edit").click()
    edit = card.locator("form[data-webhook-edit]")
    edit.get_by_label(re.compile("^credits.low")).check()
    edit.get_by_label(re.compile("^payment.failed")).uncheck()
    edit.get_by_role("button", name="Save changes").click()
    expect(card).to_contain_text("generation.succeeded, credits.low")

    # Disable, then enable again.
    card.get_by_role("button", name=re.compile("^Disable")).click()
    expect(card.locator("[data-endpoint-state]")).to_have_text("Disabled")
    expect(card.locator("[data-disabled-reason]")).to_contain_text("disabled by you")
    screenshot(page, "webhooks-disabled")
    card.get_by_role("button", name=re.compile("^Enable")).click()
    expect(card.locator("[data-endpoint-state]")).to_have_text("Enabled")
    expect(card.locator("[data-disabled-reason]")).to_have_count(0)

    # Rotate: a new secret, shown once; the old one keeps signing for a day.
    card.get_by_role("button", name=re.compile("^Rotate secret")).click()
    rotated = card.locator("form[data-webhook-rotate] [data-secret]")
    expect(rotated).to_be_visible()
    second_secret = rotated.locator("[data-secret-value]").inner_text()
    assert second_secret.startswith("whsec_")
    assert second_secret != first_secret
    assert "24 hours" in dialogs[-1]
    rotated.get_by_role("button", name="Done").click()
    expect(card.locator("[data-secret-hint]")).to_have_text("whsec_…" + second_secret[-4:])
    expect(card).to_contain_text("the previous secret signs too until")

    # The delivery log, and a replay.
    event, delivery = failed_delivery(hooks_platform, user, endpoint_id)
    page.reload()
    log = card.locator("[data-delivery-log] tbody tr")
    expect(log).to_have_count(1)
    row = log.first
    expect(row).to_contain_text("payment.failed")
    expect(row).to_contain_text(event)
    expect(row.locator("[data-delivery-status]")).to_have_text("failed")
    expect(row.locator("[data-delivery-code]")).to_have_text("500")
    row.locator("summary").click()
    expect(row.locator(".attempts li")).to_have_count(2)
    screenshot(page, "webhooks-log")
    row.get_by_role("button", name=re.compile("^Replay")).click()
    expect(log).to_have_count(2)
    expect(log.filter(has_text=event)).to_have_count(2)
    with hooks_platform.db.read() as conn:
        replays = conn.execute(
            select(webhook_deliveries.c.id).where(
                webhook_deliveries.c.event_id == event, webhook_deliveries.c.id != delivery
            )
        ).all()
    assert len(replays) == 1
    screenshot(page, "webhooks-replayed")

    # The account's own secret, revealed on demand.
    account = page.locator("[data-account-secret]")
    expect(account.locator("[data-secret]")).to_be_hidden()
    account.get_by_role("button", name="Reveal").click()
    expect(account.locator("[data-secret-value]")).to_have_text(re.compile(r"^whsec_"))

    # Delete, after a confirmation.
    card.get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.locator("[data-no-endpoints]")).to_be_visible()
    assert any("Delete the endpoint" in message for message in dialogs)
    with hooks_platform.db.read() as conn:
        assert conn.execute(select(webhook_endpoints.c.id)).first() is None
    screenshot(page, "webhooks-empty")


def test_the_page_needs_a_session(hooks_page: Page) -> None:
    hooks_page.goto("/webhooks")
    hooks_page.wait_for_url(re.compile(r"/login\?next=%2Fwebhooks$"))
    assert Path(urlsplit(hooks_page.url).path).name == "login"


def test_the_page_fits_a_phone(browser: Browser, hooks_url: str, hooks_platform: Platform) -> None:
    user = make_user(hooks_platform, "phone-hooks@example.com")
    long_url = RECEIVER + "/" + "a-rather-long-path-segment-" * 6 + "?token=" + "x" * 60
    endpoints = hooks_platform.webhook_endpoints
    with hooks_platform.db.write() as conn:
        endpoint = endpoints.create(
            conn, user.id, endpoints.check_url(long_url), ["payment.failed"], "Phone"
        )
    failed_delivery(hooks_platform, user, endpoint.id)
    made = browser.new_context(base_url=hooks_url, viewport={"width": 390, "height": 844})
    try:
        page = made.new_page()
        log_in(page, user.email)
        expect(page.locator("[data-delivery-log] tbody tr")).to_have_count(1)
        width = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert width <= 0, f"/webhooks is {width} px wider than a phone"
        screenshot(page, "phone-webhooks")
    finally:
        made.close()

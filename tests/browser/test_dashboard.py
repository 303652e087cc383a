"""The dashboard's journeys in a real browser: sign up, subscribe, generate
with the cost shown first, watch the job finish and the balance change without
a reload, read the usage row, cancel a queued job and see the refund, an admin
suspends a user; every page visited and saved as a screenshot."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect

from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user

NEW_PASSWORD = "a long browser password"
# How long a video job may take to show as succeeded: the sandbox draws and
# encodes it (about 12 s here, more on a loaded machine).
VIDEO_MS = 90_000


def log_in(page: Page, email: str, password: str = PASSWORD, next_path: str = "/") -> None:
    page.goto(f"/login?next={next_path}")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == next_path)


def mark_page(page: Page) -> None:
    """Set a marker that a reload would wipe out."""
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def header_balance(page: Page) -> str:
    return page.locator('.wallet [data-live-balance="available"]').inner_text()


def choose_model(page: Page, name: str) -> None:
    page.locator(".model-option", has_text=name).first.locator("input").check()


def flag_for_abuse(platform: Platform, user_id: str) -> None:
    """Clawback signals until the fair-use service flags the account."""
    for attempt in range(20):
        with platform.db.write() as conn:
            verdict = platform.fairuse.record_signal(
                conn, user_id, "clawback", {"payment": f"pay_{attempt}"}, subject=f"pay_{attempt}"
            ).verdict
        if verdict != "clear":
            return
    raise AssertionError("twenty clawbacks did not flag the account")


def test_sign_up_subscribe_generate_and_read_usage(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_role("link", name="Create an account").click()
    screenshot(page, "signup")
    # Errors come back beside the field they are about.
    page.get_by_label("E-mail").fill("creator@example.com")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator('[data-error-for="password"]')).to_contain_text("at least")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    expect(page.get_by_role("heading", name="Welcome to PlasmaArt")).to_be_visible()
    assert header_balance(page) == "0"
    screenshot(page, "home-new-user")
    # Without credits, the way to get some is offered where they are missing.
    page.goto("/create")
    expect(page.locator("[data-short]")).to_contain_text("You need 1 more credit")
    page.get_by_role("link", name="upgrade").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/billing")
    # Subscribing asks first, with what is charged now (the paying is tested
    # in test_paying.py).
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Subscribe to Starter").click()
    expect(page.locator("[data-toasts]")).to_contain_text("Subscribed to Starter")
    expect(page.locator(".plan.current")).to_contain_text("Starter")
    assert header_balance(page) == "2,000"
    screenshot(page, "billing")

    # The cost and the balance after it, before anything is submitted.
    page.get_by_role("link", name="Create").first.click()
    choose_model(page, "Flux Schnell")
    page.get_by_label("Outputs").fill("2")
    page.get_by_label("Prompt", exact=True).fill("a red fox in <b>snow</b>")
    expect(page.locator("[data-cost]")).to_contain_text("2 credits")
    expect(page.locator("[data-after]")).to_have_text("1,998")
    # Models the plan does not include are locked, naming the plan that unlocks them.
    expect(page.locator(".model-option.locked", has_text="Veo3").first).to_contain_text(
        "Unlocked by Pro"
    )
    screenshot(page, "create")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/generations$"))
    mark_page(page)
    card = page.locator(".gen-card").first
    # The job finishes and the balance changes, without a reload.
    expect(card.locator('[data-field="status"]')).to_have_text("succeeded")
    expect(card.locator('[data-field="credits"]')).to_have_text("2 charged")
    expect(card.locator(".output img")).to_have_count(2)
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("1,998")
    expect(card.locator(".gen-prompt")).to_have_text("a red fox in <b>snow</b>")
    assert_not_reloaded(page)
    screenshot(page, "generations")

    page.get_by_role("link", name="Usage").click()
    row = page.locator("[data-history] tbody tr").first
    expect(row.locator("td").nth(1)).to_have_text("Flux Schnell")
    expect(row.locator("td").nth(2)).to_have_text("2")
    expect(row.locator("td").nth(3)).to_have_text("2")
    expect(row.locator("td").nth(4)).to_have_text("1,998")
    expect(row.locator("td").nth(5)).to_have_text("succeeded")
    expect(page.locator(".chart svg rect")).not_to_have_count(0)
    expect(page.get_by_role("link", name="Export CSV")).to_have_attribute(
        "href", re.compile(r"^/v1/usage\.csv\?since=")
    )
    screenshot(page, "usage")


def test_cancel_a_queued_job_refunds_it(page: Page, dashboard_platform: Platform) -> None:
    # Free runs one job at a time: the second waits in the queue.
    make_user(dashboard_platform, "waiter@example.com", credits=20)
    log_in(page, "waiter@example.com", next_path="/create")
    for prompt in ("a slow lighthouse", "a queued harbour"):
        choose_model(page, "Flux Dev")
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.get_by_text("Sandbox options").click()
        page.get_by_label("Delay (seconds)").fill("60")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_url(re.compile(r"/generations$"))
        if prompt == "a slow lighthouse":
            page.goto("/create")
    mark_page(page)
    queued = page.locator(".gen-card", has_text="a queued harbour")
    running = page.locator(".gen-card", has_text="a slow lighthouse")
    expect(running.locator('[data-field="status"]')).to_have_text("running")
    # Running jobs show how long they have been at it.
    expect(running.locator('[data-field="elapsed"]')).to_have_text(re.compile(r"^\d+ s$"))
    expect(queued.locator('[data-field="status"]')).to_have_text("queued")
    expect(queued.locator('[data-field="queue"]')).to_contain_text("Queued")
    # Two Flux Dev jobs hold 5 credits each.
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("10")
    screenshot(page, "generations-live")
    queued.get_by_role("button", name=re.compile("^Cancel")).click()
    expect(queued.locator('[data-field="status"]')).to_have_text("canceled")
    expect(queued.locator('[data-field="canceled_note"]')).to_contain_text(
        "No credits were charged"
    )
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("15")
    running.get_by_role("button", name=re.compile("^Cancel")).click()
    expect(running.locator('[data-field="status"]')).to_have_text("canceled")
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("20")
    assert_not_reloaded(page)


def test_image_to_video_with_an_upload(
    page: Page, dashboard_platform: Platform, tmp_path: Path
) -> None:
    make_user(dashboard_platform, "director@example.com", plan="starter")
    picture = tmp_path / "still.png"
    Image.new("RGB", (64, 48), (40, 90, 200)).save(picture)
    log_in(page, "director@example.com", next_path="/create")
    choose_model(page, "Wan Pro (Image-to-Video)")
    expect(page.get_by_label("Input image (required)")).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("the sea starts to move")
    expect(page.locator("[data-cost]")).to_contain_text("80 credits")
    expect(page.locator("[data-after]")).to_have_text("1,920")
    # Without the image the API's answer lands beside the upload field.
    page.get_by_role("button", name="Generate").click()
    expect(
        page.locator('[data-error-for="upload_id"], [data-error-for="image_url"]').first
    ).to_be_visible()
    page.get_by_label("Input image (required)").set_input_files(str(picture))
    page.get_by_text("Sandbox options").click()
    page.get_by_label("Delay (seconds)").fill("0")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/generations$"))
    card = page.locator(".gen-card", has_text="the sea starts to move")
    expect(card.locator('[data-field="status"]')).to_have_text("succeeded", timeout=VIDEO_MS)
    expect(card.locator("video")).to_have_count(1)
    expect(card.get_by_role("link", name="Download")).to_have_attribute(
        "href", re.compile(r"^/v1/outputs/.+/content$")
    )
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("1,920")


def test_failed_job_shows_its_error_and_charges_nothing(
    page: Page, dashboard_platform: Platform
) -> None:
    make_user(dashboard_platform, "unlucky@example.com", credits=10)
    log_in(page, "unlucky@example.com", next_path="/create")
    choose_model(page, "Flux Schnell")
    page.get_by_label("Prompt", exact=True).fill("a storm that breaks the sandbox")
    page.get_by_text("Sandbox options").click()
    page.get_by_label("Make it fail").check()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/generations$"))
    card = page.locator(".gen-card").first
    expect(card.locator('[data-field="status"]')).to_have_text("failed")
    expect(card.locator('[data-field="error"]')).to_contain_text("No credits were charged")
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("10")


def test_admin_suspends_a_user(page: Page, dashboard_platform: Platform) -> None:
    make_user(dashboard_platform, "boss@example.com", admin=True)
    make_user(dashboard_platform, "spammer@example.com", credits=5)
    flag_for_abuse(dashboard_platform, make_user(dashboard_platform, "churner@example.com").id)
    log_in(page, "boss@example.com", next_path="/admin")
    flags = page.locator("section", has=page.get_by_role("heading", name="Abuse flags"))
    expect(flags.locator("tr", has_text="churner@example.com")).to_contain_text("clawback")
    page.get_by_label("E-mail or id").fill("spammer")
    page.get_by_role("button", name="Search").click()
    row = page.locator("tr", has_text="spammer@example.com")
    row.get_by_label("Reason for suspending spammer@example.com").fill("automated spam")
    row.get_by_role("button", name="Suspend spammer@example.com").click()
    expect(page.locator("[data-toasts]")).to_contain_text("spammer@example.com suspended")
    row = page.locator("tr", has_text="spammer@example.com")
    expect(row.locator(".status")).to_have_text("suspended")
    expect(row).to_contain_text("automated spam")
    screenshot(page, "admin")
    row.get_by_role("button", name="Reinstate spammer@example.com").click()
    row = page.locator("tr", has_text="spammer@example.com")
    expect(row.locator(".status")).to_have_text("active")
    row.get_by_label("Credits to grant spammer@example.com (negative to adjust down)").fill("7")
    row.get_by_label("Reason for the credits").fill("goodwill")
    row.get_by_role("button", name="Grant credits to spammer@example.com").click()
    expect(page.locator("tr", has_text="spammer@example.com").locator("td.num")).to_have_text("12")


def test_every_page_and_phone_width(
    context: BrowserContext, page: Page, dashboard_platform: Platform
) -> None:
    user = make_user(dashboard_platform, "studio@example.com", plan="studio", credits=100)
    member = make_user(dashboard_platform, "member@example.com")
    with dashboard_platform.db.write() as conn:
        owner = dashboard_platform.accounts.get(conn, user.id)
        team = dashboard_platform.teams.create_team(conn, owner, "Night Shift")
        dashboard_platform.teams.invite(conn, team.id, user.id, "friend@example.com")
        joining = dashboard_platform.teams.invite(conn, team.id, user.id, member.email)
        dashboard_platform.teams.accept_invitation(
            conn, joining.token, dashboard_platform.accounts.get(conn, member.id)
        )
        dashboard_platform.notifications.notify(
            conn, user.id, "catalog.change", "Price change", "Veo3 costs 900 credits from May."
        )
        dashboard_platform.catalog_changes.schedule(
            conn,
            admin_id=user.id,
            target="model",
            target_id="veo3",
            field="credits",
            value=900,
            effective_at=dashboard_platform.clock.now()
            + timedelta(days=dashboard_platform.settings.notice_days + 1),
        )
    # No script error and no Content-Security-Policy violation on any page.
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "response",
        lambda response: (
            response.status >= 400 and problems.append(f"{response.status} {response.url}")
        ),
    )
    log_in(page, "studio@example.com")
    # Scheduled changes: a banner on every page.
    expect(page.get_by_role("complementary", name="Scheduled changes")).to_contain_text(
        "Veo3: credits 800 → 900"
    )
    pages = {
        "home": ("/", "Welcome to PlasmaArt"),
        "create": ("/create", "Create"),
        "generations-empty": ("/generations", "Generations"),
        "usage-empty": ("/usage", "Usage"),
        "billing-studio": ("/billing", "Plan & billing"),
        "team": ("/team", "Team"),
        "settings": ("/settings", "Settings"),
        "notifications": ("/notifications", "Notifications"),
    }
    for name, (path, heading) in pages.items():
        response = page.goto(path)
        assert response is not None, path
        assert response.status == 200, path
        expect(page.get_by_role("heading", name=heading, exact=True).first).to_be_visible()
        screenshot(page, name)
    assert problems == []
    # Non-admins do not see the admin page at all.
    response = page.goto("/admin")
    assert response is not None
    assert response.status == 404
    # The owner caps a member's monthly credits, and invites someone.
    page.goto("/team")
    page.get_by_label("Monthly credit cap for member@example.com").fill("250")
    page.get_by_role("row", name=re.compile("member@example.com")).get_by_role(
        "button", name="Save"
    ).click()
    expect(page.locator("[data-toasts]")).to_contain_text("Cap saved.")
    expect(page.get_by_label("Monthly credit cap for member@example.com")).to_have_value("250")
    page.get_by_label("E-mail", exact=True).fill("not an address")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.locator('[data-error-for="email"]')).to_be_visible()
    page.get_by_label("E-mail", exact=True).fill("newcomer@example.com")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.locator("[data-secret-value]")).not_to_be_empty()
    # An API key is shown once, then only its prefix.
    page.goto("/settings")
    page.get_by_label("Key name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("[data-secret-value]")).to_have_text(re.compile(r"^\S{20,}$"))
    page.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" questions
    page.reload()
    page.get_by_role("button", name="Revoke key laptop").click()
    expect(page.get_by_role("row", name=re.compile("laptop"))).to_contain_text("Revoked")
    # Studio may remove the watermark.
    page.get_by_label("Remove the PlasmaArt watermark from new outputs").check()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("[data-toasts]")).to_contain_text("Watermark setting saved.")
    expect(page.get_by_label("Remove the PlasmaArt watermark from new outputs")).to_be_checked()
    # A credit pack, then a downgrade at the end of the period.
    page.goto("/billing")
    page.get_by_role("button", name="Buy 1,000 credits").click()
    expect(page.locator("[data-toasts]")).to_contain_text("1,000 credits added.")
    expect(page.locator('.wallet [data-live-balance="available"]')).to_have_text("12,100")
    page.get_by_role("button", name="Downgrade to Pro").click()
    expect(page.locator(".plan-status")).to_contain_text("Changes to Pro on")
    # A live notification arrives without a reload.
    page.goto("/notifications")
    mark_page(page)
    # Once the page's event stream is open, nothing is missed.
    expect(page.locator("body")).to_have_attribute("data-live-state", "open")
    with dashboard_platform.db.write() as conn:
        dashboard_platform.notifications.notify(
            conn, user.id, "catalog.change", "New model", "Wan Pro is here."
        )
    expect(page.locator("[data-notification-list]")).to_contain_text("Wan Pro is here.")
    assert_not_reloaded(page)

    page.set_viewport_size({"width": 375, "height": 800})
    for name, path in (
        ("home-phone", "/"),
        ("create-phone", "/create"),
        ("billing-phone", "/billing"),
    ):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} scrolls sideways at 375 px ({width} px wide)"
        screenshot(page, name)
    context.clear_cookies()
    page.goto("/login")
    screenshot(page, "login-phone")
    # The admin sees the scheduled change in the catalog section.
    page.set_viewport_size({"width": 1280, "height": 900})
    make_user(dashboard_platform, "operator@example.com", admin=True)
    log_in(page, "operator@example.com", next_path="/admin")
    changes = page.locator("section", has=page.get_by_role("heading", name="Scheduled catalog"))
    expect(changes).to_contain_text("Veo3: credits 800 → 900")
    screenshot(page, "admin-with-changes")


def test_login_form_by_keyboard_alone(page: Page, dashboard_platform: Platform) -> None:
    make_user(dashboard_platform, "keys@example.com")
    page.goto("/login")
    screenshot(page, "login")
    # The skip link comes first, then the form's fields in order.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("E-mail")).to_be_focused()
    page.keyboard.type("keys@example.com")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type("wrong password!")
    page.keyboard.press("Enter")
    expect(page.locator('[data-error-for="password"]')).to_have_text("Wrong e-mail or password.")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    expect(page.get_by_role("heading", name="Welcome to PlasmaArt")).to_be_visible()

"""The Create page in a real browser: the outputs field follows the chosen
model (limit, hint, price, the quote the server charges), too few credits
disable Generate with one message saying how many more and where to get
them, parameters carry their catalog labels and help, locked models show an
SVG lock, and a Download is saved under a name that says what it is."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def log_in(page: Page, email: str, next_path: str = "/create") -> None:
    page.goto(f"/login?next={next_path}")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == next_path)


def choose_model(page: Page, name: str) -> None:
    page.locator(".model-option", has_text=name).first.locator("input").check()


def outputs_field_is(page: Page, value: str, most: str, hint: str) -> None:
    field = page.get_by_label("Outputs")
    expect(field).to_have_value(value)
    expect(field).to_have_attribute("max", most)
    expect(page.locator("#outputs-hint")).to_have_text(hint)


def quoted(page: Page, credits: int) -> None:
    """The server's quote has answered for ``credits``."""
    expect(page.locator("[data-cost]")).to_have_attribute("data-quoted", str(credits))


def both_widths(page: Page, name: str) -> None:
    # From the top, so the sticky header sits where a visitor sees it.
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, f"{name}-1280")
    page.set_viewport_size(PHONE)
    screenshot(page, f"{name}-390")
    page.set_viewport_size(DESKTOP)


def test_the_outputs_field_follows_the_chosen_model(
    page: Page, dashboard_platform: Platform
) -> None:
    make_user(dashboard_platform, "outputs@example.com", plan="starter")
    log_in(page, "outputs@example.com")
    choose_model(page, "Flux Schnell")
    outputs_field_is(page, "1", "4", "Up to 4 with this model.")
    page.get_by_label("Outputs").fill("3")
    expect(page.locator("[data-cost]")).to_have_text("3 credits (1 \N{MULTIPLICATION SIGN} 3)")

    # A video model takes one output: the value, the limit, the hint and the price follow.
    choose_model(page, "Pixverse v4.5")
    outputs_field_is(page, "1", "1", "One output per request with this model.")
    expect(page.locator("[data-cost]")).to_have_text("80 credits")
    expect(page.locator("[data-after]")).to_have_text("1,920")
    quoted(page, 80)
    # Typing past the limit is priced at the limit, the number sent.
    page.get_by_label("Outputs").fill("2")
    expect(page.locator("[data-cost]")).to_have_text("80 credits")
    page.get_by_label("Outputs").blur()
    expect(page.get_by_label("Outputs")).to_have_value("1")
    # Its parameters are labelled and explained by the catalog.
    expect(page.get_by_label("Duration (seconds)", exact=True)).to_be_visible()
    expect(page.locator("#help-params-duration_s")).to_have_text("How long the video is.")
    expect(page.get_by_label("Duration (seconds)", exact=True)).to_have_attribute(
        "aria-describedby", "help-params-duration_s err-params-duration_s"
    )
    expect(page.get_by_text("Duration s")).to_have_count(0)
    both_widths(page, "create-video")

    # Back to an image model: four again, priced per output.
    choose_model(page, "Flux Dev")
    outputs_field_is(page, "1", "4", "Up to 4 with this model.")
    page.get_by_label("Outputs").fill("4")
    expect(page.locator("[data-cost]")).to_have_text("20 credits (5 \N{MULTIPLICATION SIGN} 4)")
    quoted(page, 20)
    expect(page.get_by_label("Steps", exact=True)).to_have_attribute("placeholder", "28")
    expect(page.locator("#help-params-num_inference_steps")).to_have_text(
        "More steps add detail and take longer."
    )
    expect(page.get_by_text("Num inference steps")).to_have_count(0)
    both_widths(page, "create-outputs")

    # What the page quoted is what the server holds.
    choose_model(page, "Pixverse v4.5")
    page.get_by_label("Prompt", exact=True).fill("waves at dusk")
    quoted(page, 80)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/generations$"))
    card = page.locator(".gen-card").first
    expect(card.locator('[data-field="credits"]')).to_have_text(re.compile(r"^80 (held|charged)$"))


def test_with_too_few_credits_generate_waits_for_credits(
    page: Page, dashboard_platform: Platform
) -> None:
    make_user(dashboard_platform, "broke@example.com")  # Free, no credits
    log_in(page, "broke@example.com")
    button = page.get_by_role("button", name="Generate")
    short = page.locator("[data-short]")
    expect(page.locator('.model-option input[value="flux-schnell"]')).to_be_checked()
    expect(button).to_be_disabled()
    expect(short).to_have_text("You need 1 more credit: buy a pack or upgrade.")
    expect(short.get_by_role("link", name="buy a pack")).to_have_attribute(
        "href", "/billing#packs-title"
    )
    expect(short.get_by_role("link", name="upgrade")).to_have_attribute(
        "href", "/billing#plans-title"
    )
    expect(button).to_have_attribute("aria-describedby", "short-hint")
    # The server's quote agrees, and its refusal is not said a second time.
    quoted(page, 1)
    expect(page.locator("[data-quote-note]")).to_be_hidden()
    expect(page.locator("[data-after-line]")).to_be_hidden()
    expect(page.locator(".quote")).not_to_contain_text("-1")
    # The locked models say so with an SVG and words, not an emoji.
    lock = page.locator("#lock-veo3")
    expect(lock.locator("svg.lock-icon")).to_be_visible()
    expect(lock.locator("svg")).to_have_attribute("aria-hidden", "true")
    expect(lock).to_have_text("Locked. Unlocked by Pro")
    expect(page.locator("#desc-google-veo3")).to_contain_text("The same model and price as Veo3.")
    expect(page.locator("#desc-veo3")).to_contain_text("as Google Veo3.")
    both_widths(page, "create-no-credits")

    page.get_by_label("Outputs").fill("3")
    expect(short).to_have_text("You need 3 more credits: buy a pack or upgrade.")
    short.get_by_role("link", name="buy a pack").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/billing")
    page.once("dialog", lambda dialog: dialog.accept())  # "You pay $12 now and get …"
    page.get_by_role("button", name="Buy 1,000 credits").click()
    expect(page.locator("[data-toasts]")).to_contain_text("1,000 credits added.")

    page.goto("/create")
    expect(button).to_be_enabled()
    expect(short).to_be_hidden()
    expect(page.locator("[data-after]")).to_have_text("999")
    expect(button).not_to_have_attribute("aria-describedby", "short-hint")


def test_lowering_the_outputs_or_a_cheaper_model_enables_generate(
    page: Page, dashboard_platform: Platform
) -> None:
    make_user(dashboard_platform, "five@example.com", credits=5)
    log_in(page, "five@example.com")
    button = page.get_by_role("button", name="Generate")
    short = page.locator("[data-short]")
    choose_model(page, "Flux Dev")
    expect(button).to_be_enabled()
    expect(page.locator("[data-after]")).to_have_text("0")
    page.get_by_label("Outputs").fill("2")
    expect(button).to_be_disabled()
    expect(short).to_have_text("You need 5 more credits: buy a pack or upgrade.")
    quoted(page, 10)
    expect(page.locator("[data-quote-note]")).to_be_hidden()
    page.get_by_label("Outputs").fill("1")
    expect(button).to_be_enabled()
    expect(short).to_be_hidden()
    choose_model(page, "Flux Pro v1.1")
    expect(button).to_be_disabled()
    expect(short).to_have_text("You need 3 more credits: buy a pack or upgrade.")
    choose_model(page, "Flux Schnell")
    expect(button).to_be_enabled()
    expect(page.locator("[data-after]")).to_have_text("4")


def test_a_download_is_named_after_its_generation(page: Page, dashboard_platform: Platform) -> None:
    make_user(dashboard_platform, "saver@example.com", plan="starter")
    log_in(page, "saver@example.com")
    choose_model(page, "Flux Schnell")
    page.get_by_label("Outputs").fill("2")
    page.get_by_label("Prompt", exact=True).fill("two lighthouses")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/generations$"))
    card = page.locator(".gen-card").first
    generation_id = card.get_attribute("data-generation-id")
    assert generation_id is not None
    assert generation_id.startswith("gen_")
    # The card filled in live, then the same card as the server renders it.
    for reload in (False, True):
        if reload:
            page.reload()
            card = page.locator(".gen-card").first
        expect(card.locator(".output img")).to_have_count(2)
        for n in (1, 2):
            with page.expect_download() as caught:
                card.get_by_role("link", name="Download").nth(n - 1).click()
            assert caught.value.suggested_filename == f"plasmaart-{generation_id}-{n}.png"


def test_credits_spent_elsewhere_disable_generate_and_say_so_once(
    page: Page, dashboard_platform: Platform
) -> None:
    user = make_user(dashboard_platform, "elsewhere@example.com", credits=5)
    log_in(page, "elsewhere@example.com")
    button = page.get_by_role("button", name="Generate")
    choose_model(page, "Flux Dev")
    quoted(page, 5)
    expect(button).to_be_enabled()
    # Another tab (or an API key) holds the five credits for a slow job.
    slow = {"sandbox": {"delay_s": 600}}
    with dashboard_platform.db.write() as conn:
        account = dashboard_platform.accounts.get(conn, user.id)
        dashboard_platform.generations.submit(
            conn, account, GenerationRequest("flux-dev", "elsewhere", params=slow)
        )
    # The live balance reaches the page: no negative balance, one message.
    expect(button).to_be_disabled()
    expect(page.locator("[data-short]")).to_have_text(
        "You need 5 more credits: buy a pack or upgrade."
    )
    expect(page.locator("[data-after-line]")).to_be_hidden()
    expect(page.locator("[data-quote-note]")).to_be_hidden()
    expect(page.locator('[data-error-for="body"]')).to_be_hidden()

"""Leaving, in a real browser: export the account's data (a zip that opens
and holds the account's files), delete the account from the settings'
danger zone (a wrong password first: refused, nothing deleted), land on the
goodbye page, get the goodbye mail; the old login then fails, and the books
still balance."""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.browser.conftest import screenshot
from tests.support.accounts import PASSWORD, make_user
from tests.support.mail import Inbox, text_of

EMAIL = "leaver@example.com"


def finished_generation(platform: Platform, user_id: str) -> str:
    """A generation the served worker runs to its end (the sandbox, at once)."""
    with platform.db.write() as conn:
        made = platform.generations.submit(
            conn,
            platform.accounts.get(conn, user_id),
            GenerationRequest(
                "flux-schnell",
                "a lighthouse in the fog",
                params={"aspect_ratio": "16:9", "sandbox": {"delay_s": 0}},
            ),
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with platform.db.read() as conn:
            user = platform.accounts.get(conn, user_id)
            if platform.generations.get(conn, user, made.id).status == "succeeded":
                return made.id
        time.sleep(0.1)
    raise AssertionError("the generation did not finish within 20 s")


def test_export_then_delete(
    mail_page: Page, mail_platform: Platform, inbox: Inbox, tmp_path: Path
) -> None:
    page = mail_page
    leaver = make_user(mail_platform, EMAIL, plan="pro", credits=40)
    generation_id = finished_generation(mail_platform, leaver.id)

    page.goto("/login?next=/settings")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/settings")
    expect(page.get_by_role("heading", name="Delete account")).to_be_visible()
    screenshot(page, "leaving-settings")

    # Export: a download that opens as a zip of this account's data and files.
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Export your data").click()
    download = downloading.value
    assert download.suggested_filename.startswith(f"plasmaart-export-{leaver.id}-")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(saved) as zipped:
        profile = json.loads(zipped.read("profile.json"))
        assert (profile["id"], profile["email"], profile["plan"]) == (leaver.id, EMAIL, "pro")
        prompts = [g["prompt"] for g in json.loads(zipped.read("generations.json"))]
        assert prompts == ["a lighthouse in the fog"]
        assert f"outputs/{generation_id}/0.png" in zipped.namelist()
        assert "README.txt" in zipped.namelist()

    form = page.locator("[data-delete-account]")
    # The typed confirmation must match before anything is sent.
    form.get_by_label("Your password").fill(PASSWORD)
    form.get_by_label("Type your e-mail address").fill("someone@else.example")
    form.get_by_role("button", name="Delete my account").click()
    expect(form.locator('[data-error-for="confirm"]')).to_have_text(
        "Type your e-mail address exactly to confirm."
    )
    # A wrong password: refused beside the field, nothing deleted.
    form.get_by_label("Your password").fill("not my password at all")
    form.get_by_label("Type your e-mail address").fill(EMAIL)
    form.get_by_role("button", name="Delete my account").click()
    expect(form.locator('[data-error-for="password"]')).to_contain_text("not your password")
    screenshot(page, "leaving-wrong-password")
    assert page.request.get("/v1/me").ok

    form.get_by_label("Your password").fill(PASSWORD)
    form.get_by_role("button", name="Delete my account").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/goodbye")
    expect(page.get_by_role("heading", name="Your account is deleted")).to_be_visible()
    screenshot(page, "leaving-goodbye")

    goodbye = inbox.wait_for(EMAIL, subject="Your PlasmaArt account was deleted", timeout=15)
    assert "credits left in your wallet" in text_of(goodbye)
    assert "tax" in text_of(goodbye)

    # The old login fails, as a wrong password does.
    page.goto("/login")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    refusal = page.locator("[data-error-for]:visible")
    expect(refusal).to_have_count(1)
    expect(refusal).to_contain_text(re.compile("wrong e-mail or password", re.IGNORECASE))
    screenshot(page, "leaving-old-login")
    assert urlsplit(page.url).path == "/login"

    with mail_platform.db.read() as conn:
        assert check_ledger(conn) == []
        assert mail_platform.ledger.balance(conn, leaver.wallet_id).available == 0

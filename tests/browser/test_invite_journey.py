"""Invite by mail, in Chromium: a Studio owner invites an address on the Team
page, the invitee opens the mailed link (read from a real SMTP server), logs
in from the invitation page and comes back to it, accepts and is a member;
another invitee declines without an account. Then an admin reads mail on the
Mail page of a server without SMTP (the mail folder)."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Page, expect

from plasmaart.platform import Platform
from tests.browser.conftest import LIVE_TIMEOUT_MS, SCREENSHOTS, screenshot
from tests.support.accounts import PASSWORD, make_user
from tests.support.mail import Inbox, link_to, text_of

SUBJECT = "invited you to the team"


def log_in(page: Page, email: str) -> None:
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_invite_by_mail_then_accept(
    browser: Browser,
    mail_page: Page,
    mail_platform: Platform,
    mail_base_url: str,
    inbox: Inbox,
) -> None:
    make_user(mail_platform, "studio-owner@example.com", plan="studio")
    invitee = make_user(mail_platform, "invitee@example.com")
    owner_page = mail_page

    # The owner starts a team and invites by mail on the Team page.
    owner_page.goto("/login?next=/team")
    log_in(owner_page, "studio-owner@example.com")
    expect(owner_page).to_have_url(re.compile(r"/team$"))
    owner_page.get_by_label("Team name").fill("Night Shift")
    owner_page.get_by_role("button", name="Create team").click()
    expect(owner_page.get_by_role("heading", name="Night Shift")).to_be_visible()
    owner_page.get_by_label("E-mail", exact=True).fill("invitee@example.com")
    owner_page.get_by_role("button", name="Send invitation").click()
    expect(owner_page.locator("[data-secret]")).to_contain_text("Invitation e-mailed.")
    expect(owner_page.locator("[data-secret-value]")).to_have_text(
        re.compile(r"^http://127\.0\.0\.1:\d+/invitations\?token=pa_inv_")
    )
    screenshot(owner_page, "invite-01-team-page-sent")
    owner_page.get_by_role("link", name="Done").click()
    row = owner_page.locator("[data-invitations] tr", has_text="invitee@example.com")
    expect(row).to_contain_text("Sent")
    expect(row.get_by_role("button", name=re.compile("Resend"))).to_be_visible()
    screenshot(owner_page, "invite-02-team-page-pending")

    # The mail arrives with its link.
    mail = inbox.wait_for("invitee@example.com", subject=SUBJECT, timeout=LIVE_TIMEOUT_MS / 1000)
    assert "studio-owner@example.com invited invitee@example.com" in text_of(mail)
    link = link_to(mail, "/invitations")
    assert link.startswith(mail_base_url + "/invitations?token=pa_inv_")

    # The invitee opens it in a browser of their own, not signed in.
    invitee_context = browser.new_context(viewport={"width": 1280, "height": 900})
    invitee_context.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        page = invitee_context.new_page()
        page.goto(link)
        expect(page.get_by_role("heading", name="Join Night Shift")).to_be_visible()
        expect(page.locator("main")).to_contain_text(
            "studio-owner@example.com invited invitee@example.com"
        )
        expect(page.locator("main")).to_contain_text("spend the team owner's credits")
        expect(page.locator("[data-sign-in-note]")).to_be_visible()
        screenshot(page, "invite-03-link-signed-out")
        # Log in from there, and come back to the invitation.
        page.get_by_role("link", name="Log in to accept").click()
        expect(page).to_have_url(re.compile(r"/login\?next="))
        log_in(page, invitee.email)
        expect(page).to_have_url(link)
        accept = page.get_by_role("button", name="Accept and join Night Shift")
        expect(accept).to_be_visible()
        screenshot(page, "invite-04-link-signed-in")
        accept.click()
        expect(page.get_by_role("heading", name="You're a member of Night Shift")).to_be_visible()
        expect(page.locator("[data-toasts]")).to_contain_text("You joined Night Shift.")
        screenshot(page, "invite-05-accepted")
        page.get_by_role("link", name="Go to the Team page").click()
        expect(page.get_by_role("heading", name="Night Shift")).to_be_visible()
        expect(page.locator("main")).to_contain_text("Member")
        screenshot(page, "invite-06-member-team-page")
    finally:
        invitee_context.close()

    # The owner sees it accepted, and is told.
    owner_page.reload()
    expect(
        owner_page.locator("[data-invitations] tr", has_text="invitee@example.com")
    ).to_contain_text("Accepted")
    expect(
        owner_page.get_by_role("row", name=re.compile("invitee@example.com")).first
    ).to_be_visible()
    screenshot(owner_page, "invite-07-owner-sees-accepted")
    owner_page.goto("/notifications")
    expect(owner_page.locator("main")).to_contain_text("invitee@example.com joined Night Shift")


def test_decline_without_an_account(
    browser: Browser, mail_platform: Platform, mail_base_url: str, inbox: Inbox
) -> None:
    owner = make_user(mail_platform, "decline-owner@example.com", plan="studio")
    with mail_platform.db.write() as conn:
        user = mail_platform.accounts.get(conn, owner.id)
        team = mail_platform.teams.create_team(conn, user, "Day Shift")
        mail_platform.teams.invite(conn, team.id, owner.id, "stranger@example.com")
    mail = inbox.wait_for("stranger@example.com", subject=SUBJECT, timeout=LIVE_TIMEOUT_MS / 1000)
    link = link_to(mail, "/invitations")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(link)
        expect(page.get_by_role("heading", name="Join Day Shift")).to_be_visible()
        screenshot(page, "invite-08-phone-signed-out")
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Decline").click()
        expect(page.get_by_role("heading", name="Invitation declined")).to_be_visible()
        screenshot(page, "invite-09-declined")
    finally:
        context.close()
    with mail_platform.db.read() as conn:
        listed = mail_platform.teams.recent_invitations(conn, team.id, owner.id)
    assert [i.declined_at is not None for i in listed] == [True]


def test_a_pasted_link_joins_from_the_team_page(
    mail_page: Page, mail_platform: Platform, inbox: Inbox
) -> None:
    owner = make_user(mail_platform, "paste-owner@example.com", plan="studio")
    make_user(mail_platform, "paste-invitee@example.com")
    with mail_platform.db.write() as conn:
        user = mail_platform.accounts.get(conn, owner.id)
        team = mail_platform.teams.create_team(conn, user, "Paste Crew")
        mail_platform.teams.invite(conn, team.id, owner.id, "paste-invitee@example.com")
    mail = inbox.wait_for(
        "paste-invitee@example.com", subject=SUBJECT, timeout=LIVE_TIMEOUT_MS / 1000
    )
    mail_page.goto("/login?next=/team")
    log_in(mail_page, "paste-invitee@example.com")
    mail_page.get_by_label("Invitation token or link").fill(link_to(mail, "/invitations"))
    mail_page.get_by_role("button", name="Accept invitation").click()
    expect(mail_page.locator("[data-toasts]")).to_contain_text("You joined the team.")
    expect(mail_page.get_by_role("heading", name="Paste Crew")).to_be_visible()


def test_an_admin_reads_the_mail_folder(
    page: Page, dashboard_platform: Platform, base_url: str
) -> None:
    make_user(dashboard_platform, "mail-admin@example.com", admin=True)
    owner = make_user(dashboard_platform, "folder-owner@example.com", plan="studio")
    with dashboard_platform.db.write() as conn:
        user = dashboard_platform.accounts.get(conn, owner.id)
        team = dashboard_platform.teams.create_team(conn, user, "Folder Crew")
        dashboard_platform.teams.invite(conn, team.id, owner.id, "folder-invitee@example.com")
    page.goto("/login?next=/admin")
    log_in(page, "mail-admin@example.com")
    page.get_by_role("link", name="Mail", exact=True).click()
    expect(page.get_by_role("heading", name="Mail", exact=True)).to_be_visible()
    expect(page.locator("[data-mail-mode]")).to_contain_text("No SMTP server is configured")
    # The worker writes the invitation to the folder within a tick or two.
    subject = page.get_by_role("link", name=re.compile("invited you to the team Folder Crew"))
    for _ in range(40):
        if subject.count():
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(subject).to_be_visible()
    screenshot(page, "mail-01-folder-list")
    subject.click()
    expect(page.locator("[data-mail-to]")).to_have_text("folder-invitee@example.com")
    expect(page.locator("[data-mail-text]")).to_contain_text("What joining means")
    frame = page.frame_locator("iframe.mail-frame")
    expect(frame.locator("h1")).to_contain_text("invited you to the team Folder Crew")
    screenshot(page, "mail-02-one-message")
    # A full-page capture leaves the sandboxed frame (its own process) blank:
    # the frame itself, as the admin sees it.
    page.locator("iframe.mail-frame").screenshot(path=str(SCREENSHOTS / "mail-03-html-part.png"))

"""Team invitations by e-mail, on both databases, with mail read from a real
local SMTP server (aiosmtpd): the letter and its link, accepting through the
link, declining without an account, another account's refusal, expired,
used, revoked and forged tokens (``invalid_token``, nothing written), the
owner's notices, resending, and at most one mail per invitation link."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import invitations, notification_outbox
from plasmaart.logs import JsonFormatter
from plasmaart.platform import Platform
from plasmaart.teams.service import MAIL_PER_ADDRESS, MAIL_PER_TEAM
from plasmaart.worker import outbox_delivery
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.mail import Inbox, SmtpServer, html_of, link_to, smtp_settings, text_of
from tests.support.matrix import changes, snapshot
from tests.support.platforms import running_platform, settings_for

PUBLIC = "https://art.example.test"
SUBJECT = "invited you to the team"


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    with SmtpServer() as received:
        yield received


@pytest.fixture
def platform(
    database_url: str, clock: ManualClock, tmp_path: Path, inbox: Inbox
) -> Iterator[Platform]:
    """Mail goes out over SMTP (so address verification is required), and
    links are built from PLASMAART_PUBLIC_URL."""
    inbox.messages.clear()
    settings = settings_for(
        database_url, tmp_path / "var", public_url=PUBLIC, **smtp_settings(inbox.port)
    )
    with running_platform(settings, clock) as built:
        yield built


def deliver(platform: Platform) -> int:
    return outbox_delivery(platform).run("tests").delivered


def studio_team(platform: Platform, client: TestClient) -> tuple[TestUser, str]:
    owner = make_user(platform, "owner@example.com", plan="studio")
    created = client.post("/v1/teams", json={"name": "Night Shift"}, headers=owner.auth)
    assert created.status_code == 201, created.text
    deliver(platform)  # the subscription's receipt: the tests count invitation mail
    return owner, str(created.json()["id"])


def invite(client: TestClient, owner: TestUser, team_id: str, email: str) -> dict[str, Any]:
    answer = client.post(
        f"/v1/teams/{team_id}/invitations", json={"email": email}, headers=owner.auth
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def token_in(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def refused(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


def owner_notices(client: TestClient, owner: TestUser) -> list[dict[str, Any]]:
    answer = client.get("/v1/notifications", headers=owner.auth)
    assert answer.status_code == 200, answer.text
    return [n for n in answer.json()["data"] if n["kind"] == "team.invitation_answered"]


def outbox_rows(platform: Platform, kind: str) -> list[Any]:
    with platform.db.read() as conn:
        return list(
            conn.execute(
                select(notification_outbox).where(notification_outbox.c.kind == kind)
            ).all()
        )


def test_the_invitation_is_mailed_with_its_link(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    owner, team_id = studio_team(platform, client)
    bob = make_user(platform, "bob@example.com")
    created = invite(client, owner, team_id, "Bob@Example.com")
    # The API still answers with the token (to pass by hand) and the link.
    assert created["token"].startswith("pa_inv_")
    assert created["url"] == f"{PUBLIC}/invitations?token={created['token']}"
    assert created["status"] == "pending"

    assert deliver(platform) == 1
    mail = inbox.wait_for("bob@example.com", subject=SUBJECT)
    assert (
        str(mail["Subject"]) == "owner@example.com invited you to the team Night Shift on PlasmaArt"
    )
    text = text_of(mail)
    link = link_to(mail, "/invitations")
    assert link.startswith(PUBLIC + "/invitations?token=")
    assert token_in(link) == created["token"]
    for words in (
        "owner@example.com invited bob@example.com",
        "Night Shift",
        "spend the team owner's credits",
        "monthly cap",
        "accept or decline",
        "sign in (or sign up) with bob@example.com",
    ):
        assert words in text, words
    expires = created["expires_at"][:16].replace("T", " ")
    assert f"valid until {expires} UTC" in text
    assert f'href="{link}"' in html_of(mail)
    # The letter was addressed to Bob's account, mail only, and its body
    # (the secret link) is blanked once it is out.
    [row] = outbox_rows(platform, "team.invitation")
    assert (row.user_id, row.to_address, row.in_app, row.sensitive) == (
        bob.id,
        "bob@example.com",
        False,
        True,
    )
    assert created["token"] not in row.body
    assert row.cause_key == f"invitation:{created['id']}"
    # No in-app notification for a letter.
    answer = client.get("/v1/notifications", headers=bob.auth)
    assert answer.json()["data"] == []


def test_an_address_without_an_account_is_invited_too(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    owner, team_id = studio_team(platform, client)
    created = invite(client, owner, team_id, "newcomer@example.com")
    [row] = outbox_rows(platform, "team.invitation")
    assert (row.user_id, row.to_address) == (None, "newcomer@example.com")
    deliver(platform)
    mail = inbox.wait_for("newcomer@example.com", subject=SUBJECT)
    assert token_in(link_to(mail, "/invitations")) == created["token"]


def test_accepting_through_the_mailed_link(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    owner, team_id = studio_team(platform, client)
    bob = make_user(platform, "bob@example.com")
    invite(client, owner, team_id, "bob@example.com")
    deliver(platform)
    token = token_in(link_to(inbox.wait_for("bob@example.com", subject=SUBJECT), "/invitations"))

    shown = client.get(f"/v1/invitations/{token}", headers=bob.auth)
    assert shown.status_code == 200, shown.text
    assert {k: shown.json()[k] for k in ("team_name", "inviter_email", "email", "status")} == {
        "team_name": "Night Shift",
        "inviter_email": "owner@example.com",
        "email": "bob@example.com",
        "status": "pending",
    }
    assert shown.json()["viewer_is_member"] is False

    joined = client.post(f"/v1/invitations/{token}/accept", headers=bob.auth)
    assert joined.status_code == 200, joined.text
    assert joined.json()["seats"] == {"used": 2, "pending": 0, "total": 5}
    members = client.get(f"/v1/teams/{team_id}/members", headers=bob.auth).json()["data"]
    assert [m["email"] for m in members] == ["owner@example.com", "bob@example.com"]
    after = client.get(f"/v1/invitations/{token}", headers=bob.auth).json()
    assert (after["status"], after["viewer_is_member"]) == ("accepted", True)

    # The owner is told, in the app (and by mail, as notices are).
    deliver(platform)
    [notice] = owner_notices(client, owner)
    assert notice["title"] == "bob@example.com joined Night Shift"
    assert notice["data"]["answer"] == "accepted"

    # Used: a second accept (or a decline) is an invalid link, writing nothing.
    before = snapshot(platform)
    refused(client.post(f"/v1/invitations/{token}/accept", headers=bob.auth), 400, "invalid_token")
    refused(client.post(f"/v1/invitations/{token}/decline"), 400, "invalid_token")
    assert changes(before, snapshot(platform)) == []


def test_declining_needs_no_account(client: TestClient, platform: Platform, inbox: Inbox) -> None:
    owner, team_id = studio_team(platform, client)
    invite(client, owner, team_id, "cara@example.com")
    deliver(platform)
    token = token_in(link_to(inbox.wait_for("cara@example.com", subject=SUBJECT), "/invitations"))
    seats = client.get(f"/v1/teams/{team_id}", headers=owner.auth).json()["seats"]
    assert seats["pending"] == 1

    declined = client.post(f"/v1/invitations/{token}/decline")
    assert declined.status_code == 200, declined.text
    assert (declined.json()["status"], declined.json()["team_name"]) == ("declined", "Night Shift")
    with platform.db.read() as conn:
        row = conn.execute(select(invitations)).one()
    assert row.declined_at is not None
    assert (row.accepted_at, row.revoked_at) == (None, None)
    # Its seat is free at once; the owner sees it declined and is told.
    seats = client.get(f"/v1/teams/{team_id}", headers=owner.auth).json()["seats"]
    assert seats == {"used": 1, "pending": 0, "total": 5}
    listed = client.get(f"/v1/teams/{team_id}/invitations?status=all", headers=owner.auth)
    assert [(i["email"], i["status"]) for i in listed.json()["data"]] == [
        ("cara@example.com", "declined")
    ]
    assert client.get(f"/v1/teams/{team_id}/invitations", headers=owner.auth).json()["data"] == []
    deliver(platform)
    [notice] = owner_notices(client, owner)
    assert notice["title"] == "cara@example.com declined your invitation to Night Shift"
    assert notice["data"]["answer"] == "declined"
    inbox.wait_for("owner@example.com", subject="declined your invitation")

    # Declined: the link accepts nothing now, and declines nothing twice.
    cara = make_user(platform, "cara@example.com")
    before = snapshot(platform)
    refused(client.post(f"/v1/invitations/{token}/accept", headers=cara.auth), 400, "invalid_token")
    refused(client.post(f"/v1/invitations/{token}/decline"), 400, "invalid_token")
    assert changes(before, snapshot(platform)) == []
    assert client.get(f"/v1/invitations/{token}").json()["status"] == "declined"
    # The owner may invite the address again: a new invitation, a new mail.
    again = invite(client, owner, team_id, "cara@example.com")
    deliver(platform)
    second = inbox.wait_for("cara@example.com", subject=SUBJECT, count=2)
    assert token_in(link_to(second, "/invitations")) == again["token"]


def test_only_the_invited_address_may_accept(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    owner, team_id = studio_team(platform, client)
    make_user(platform, "bob@example.com")
    mallory = make_user(platform, "mallory@example.com")
    invite(client, owner, team_id, "bob@example.com")
    deliver(platform)
    token = token_in(link_to(inbox.wait_for("bob@example.com", subject=SUBJECT), "/invitations"))
    before = snapshot(platform)
    for caller in (mallory, owner):
        body = refused(
            client.post(f"/v1/invitations/{token}/accept", headers=caller.auth),
            403,
            "invitation_for_another_address",
        )
        # It names the caller's own address, never the invited one.
        assert caller.email in body["detail"]
        assert "bob@example.com" not in body["detail"]
    assert changes(before, snapshot(platform)) == []
    deliver(platform)
    assert owner_notices(client, owner) == []


def test_bad_tokens_are_invalid_and_write_nothing(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    owner, team_id = studio_team(platform, client)
    bob = make_user(platform, "bob@example.com")
    expiring = invite(client, owner, team_id, "bob@example.com")
    revoked = invite(client, owner, team_id, "dan@example.com")
    dan = make_user(platform, "dan@example.com")
    gone = client.delete(f"/v1/teams/{team_id}/invitations/{revoked['id']}", headers=owner.auth)
    assert gone.status_code == 204
    clock.advance(timedelta(days=7, seconds=1))
    forged = "pa_inv_" + "A" * 43
    cases = [
        (expiring["token"], bob),
        (revoked["token"], dan),
        (forged, bob),
        ("not-a-token", bob),
        (expiring["token"][:-1], bob),
        ("pa_inv_" + "x" * 500, bob),
    ]
    before = snapshot(platform)
    for token, user in cases:
        refused(
            client.post(f"/v1/invitations/{token}/accept", headers=user.auth), 400, "invalid_token"
        )
        body = refused(client.post(f"/v1/invitations/{token}/decline"), 400, "invalid_token")
        assert token not in body["detail"]
    for token in (forged, "not-a-token"):
        refused(client.get(f"/v1/invitations/{token}"), 400, "invalid_token")
    assert changes(before, snapshot(platform)) == []
    # What the holder of a real but dead token sees.
    assert client.get(f"/v1/invitations/{expiring['token']}").json()["status"] == "expired"
    assert client.get(f"/v1/invitations/{revoked['token']}").json()["status"] == "revoked"


def test_an_unverified_account_cannot_accept(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    owner, team_id = studio_team(platform, client)
    signed_up = client.post(
        "/v1/auth/signup", json={"email": "new@example.com", "password": PASSWORD}
    )
    # Verification is required (SMTP is set): no session until logging in.
    assert signed_up.status_code == 202, signed_up.text
    logged_in = client.post(
        "/v1/auth/login", json={"email": "new@example.com", "password": PASSWORD}
    )
    assert logged_in.status_code == 200, logged_in.text
    csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
    created = invite(client, owner, team_id, "new@example.com")
    before = snapshot(platform)
    refused(
        client.post(f"/v1/invitations/{created['token']}/accept", headers=csrf),
        403,
        "email_not_verified",
    )
    assert changes(before, snapshot(platform)) == []
    client.cookies.clear()


def test_one_mail_per_invitation_and_resending(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    owner, team_id = studio_team(platform, client)
    bob = make_user(platform, "bob@example.com")
    first = invite(client, owner, team_id, "bob@example.com")
    # Inviting the address again while it is pending sends nothing more.
    path = f"/v1/teams/{team_id}/invitations"
    refused(
        client.post(path, json={"email": "bob@example.com"}, headers=owner.auth),
        409,
        "already_invited",
    )
    assert deliver(platform) == 1
    assert deliver(platform) == 0  # delivered once, however often the worker runs
    assert len(inbox.to("bob@example.com")) == 1

    # Resending: a new token and 7 more days, mailed; the old link is dead.
    resent = client.post(f"{path}/{first['id']}/resend", headers=owner.auth)
    assert resent.status_code == 200, resent.text
    again = resent.json()
    assert (again["id"], again["status"]) == (first["id"], "pending")
    assert again["token"] != first["token"]
    assert deliver(platform) == 1
    mail = inbox.wait_for("bob@example.com", subject=SUBJECT, count=2)
    assert "sent again" in text_of(mail)
    assert token_in(link_to(mail, "/invitations")) == again["token"]
    refused(
        client.post(f"/v1/invitations/{first['token']}/accept", headers=bob.auth),
        400,
        "invalid_token",
    )
    # Still one seat held, one invitation listed.
    listed = client.get(path, headers=owner.auth).json()["data"]
    assert [i["id"] for i in listed] == [first["id"]]
    joined = client.post(f"/v1/invitations/{again['token']}/accept", headers=bob.auth)
    assert joined.status_code == 200, joined.text
    assert len(inbox.to("bob@example.com")) == 2
    # Accepted: nothing left to resend.
    refused(client.post(f"{path}/{first['id']}/resend", headers=owner.auth), 404, "not_found")


def test_invitation_mail_is_throttled_per_address(client: TestClient, platform: Platform) -> None:
    owner, team_id = studio_team(platform, client)
    path = f"/v1/teams/{team_id}/invitations"
    created = invite(client, owner, team_id, "bob@example.com")
    for _ in range(MAIL_PER_ADDRESS - 1):  # the first invitation was one
        assert client.post(f"{path}/{created['id']}/resend", headers=owner.auth).status_code == 200
    before = snapshot(platform)
    answer = client.post(f"{path}/{created['id']}/resend", headers=owner.auth)
    refused(answer, 429, "rate_limited")
    assert int(answer.headers["Retry-After"]) > 0
    assert changes(before, snapshot(platform)) == []
    assert len(outbox_rows(platform, "team.invitation")) == MAIL_PER_ADDRESS


def test_invitation_mail_is_throttled_per_team(client: TestClient, platform: Platform) -> None:
    owner, team_id = studio_team(platform, client)
    path = f"/v1/teams/{team_id}/invitations"
    for n in range(MAIL_PER_TEAM):  # invite and revoke: seats are not what runs out
        created = invite(client, owner, team_id, f"guest{n}@example.com")
        assert client.delete(f"{path}/{created['id']}", headers=owner.auth).status_code == 204
    before = snapshot(platform)
    answer = client.post(path, json={"email": "one-more@example.com"}, headers=owner.auth)
    refused(answer, 429, "rate_limited")
    assert changes(before, snapshot(platform)) == []


def test_members_and_strangers_cannot_resend(client: TestClient, platform: Platform) -> None:
    owner, team_id = studio_team(platform, client)
    stranger = make_user(platform, "zed@example.com")
    created = invite(client, owner, team_id, "bob@example.com")
    before = snapshot(platform)
    refused(
        client.post(
            f"/v1/teams/{team_id}/invitations/{created['id']}/resend", headers=stranger.auth
        ),
        404,
        "not_found",
    )
    assert changes(before, snapshot(platform)) == []


# -- the dashboard's invitation page -------------------------------------------


def test_the_invitation_page_for_each_visitor(client: TestClient, platform: Platform) -> None:
    owner, team_id = studio_team(platform, client)
    bob = make_user(platform, "bob@example.com")
    created = invite(client, owner, team_id, "bob@example.com")
    here = f"/invitations?token={created['token']}"

    anonymous = client.get(here)
    assert anonymous.status_code == 200
    page = anonymous.text
    assert "owner@example.com</strong> invited <strong>bob@example.com" in page
    assert "Night Shift" in page
    assert "spend the team owner's credits" in page
    assert "/login?next=%2Finvitations%3Ftoken%3Dpa_inv_" in page
    assert "/signup?next=%2Finvitations%3Ftoken%3Dpa_inv_" in page
    assert f"/v1/invitations/{created['token']}/decline" in page
    assert f"/v1/invitations/{created['token']}/accept" not in page

    mallory = make_user(platform, "mallory@example.com")
    as_mallory = client.get(here, headers=mallory.auth)
    assert "data-other-account-note" in as_mallory.text
    assert "you're signed in as <strong>mallory@example.com" in as_mallory.text
    assert f"/v1/invitations/{created['token']}/accept" not in as_mallory.text
    # The owner is in the team already.
    assert "You're already a member of Night Shift" in client.get(here, headers=owner.auth).text

    as_bob = client.get(here, headers=bob.auth)
    assert f"/v1/invitations/{created['token']}/accept" in as_bob.text
    assert "Accept and join Night Shift" in as_bob.text
    joined = client.post(f"/v1/invitations/{created['token']}/accept", headers=bob.auth)
    assert joined.status_code == 200
    member = client.get(here, headers=bob.auth)
    assert "You&#39;re a member of Night Shift" in member.text

    invalid = client.get("/invitations?token=pa_inv_forged")
    assert invalid.status_code == 400
    assert "This invitation link is not valid" in invalid.text
    assert client.get("/invitations").status_code == 400


def test_the_team_page_lists_invitations_with_their_status(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    owner, team_id = studio_team(platform, client)
    bob = make_user(platform, "bob@example.com")
    to_bob = invite(client, owner, team_id, "bob@example.com")
    old = invite(client, owner, team_id, "old@example.com")
    clock.advance(timedelta(days=8))
    to_cara = invite(client, owner, team_id, "cara@example.com")
    invite(client, owner, team_id, "dan@example.com")
    assert client.post(f"/v1/invitations/{to_cara['token']}/decline").status_code == 200
    # Bob's expired; a fresh one he accepts.
    fresh = invite(client, owner, team_id, "bob@example.com")
    assert (
        client.post(f"/v1/invitations/{fresh['token']}/accept", headers=bob.auth).status_code == 200
    )
    listed = client.get(f"/v1/teams/{team_id}/invitations?status=all", headers=owner.auth)
    statuses = [(i["email"], i["status"]) for i in listed.json()["data"]]
    assert sorted(statuses) == [
        ("bob@example.com", "accepted"),
        ("bob@example.com", "expired"),
        ("cara@example.com", "declined"),
        ("dan@example.com", "pending"),
        ("old@example.com", "expired"),
    ]
    assert {to_bob["id"], old["id"]} <= {i["id"] for i in listed.json()["data"]}
    page = client.get("/team", headers=owner.auth).text
    for status in ("pending", "accepted", "declined", "expired"):
        assert f'data-status="{status}"' in page
    assert ">Resend<" in page
    assert ">Invite again<" in page
    # Members do not see the invitations.
    assert "data-invitations" not in client.get("/team", headers=bob.auth).text


def test_no_invitation_token_reaches_the_logs(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    """The link's token travels in a query (the page) and in paths (the API):
    neither is logged whole, nor is the mail's body."""
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # The test's HTTP client logs the URLs it calls, and the test's
            # SMTP server (aiosmtpd, "mail.log") what it receives: not the platform.
            if not record.name.startswith(("httpx", "mail.log")):
                records.append(self.format(record))

    handler = Capture(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        owner, team_id = studio_team(platform, client)
        bob = make_user(platform, "bob@example.com")
        first = invite(client, owner, team_id, "bob@example.com")
        deliver(platform)
        resent = client.post(
            f"/v1/teams/{team_id}/invitations/{first['id']}/resend", headers=owner.auth
        ).json()
        deliver(platform)
        token = resent["token"]
        client.get(f"/invitations?token={token}", headers=bob.auth)
        client.get(f"/v1/invitations/{token}")
        client.post(f"/v1/invitations/{first['token']}/accept", headers=bob.auth)
        client.post(f"/v1/invitations/{token}/decline")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    # The requests were logged (the invitation page and the API calls), so the
    # check can fail.
    assert sum("pa_inv_" in line for line in records) >= 3
    for secret in (first["token"], token):
        leaks = [line for line in records if secret in line or secret[16:] in line]
        assert leaks == []

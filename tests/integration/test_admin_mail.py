"""The admin's Mail page: the mail written to the mail folder when no SMTP
server is set, listed newest first, each message shown with its headers, its
text part and its HTML part (sandboxed in an iframe served under a CSP of its
own); 404 for everyone but admins, and no name may leave the folder. Also
the folder's reader (``MailFolder``) on odd files."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from fastapi.testclient import TestClient

from plasmaart.clock import ManualClock
from plasmaart.notify.email import Letter, MailFolder, compose
from plasmaart.platform import Platform
from plasmaart.web.dashboard.mail_pages import HTML_PART_POLICY
from plasmaart.worker import outbox_delivery
from tests.support.accounts import make_user
from tests.support.platforms import api_client, running_platform, settings_for


def write_mail(folder: MailFolder, to: str, subject: str, body: str, *, ident: str) -> str:
    folder.send(
        compose(
            Letter(to, subject, body),
            sender="noreply@example.com",
            support_email="help@example.com",
            message_id=f"<{ident}@plasmaart.test>",
            now=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        )
    )
    [name] = [m.name for m in folder.messages() if m.subject == subject]
    return name


def test_the_mail_page_lists_the_folder_newest_first(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    owner = make_user(platform, "owner@example.com", plan="studio")
    team = client.post("/v1/teams", json={"name": "Night Shift"}, headers=owner.auth)
    assert team.status_code == 201
    # The subscription's receipt, the first mail of the folder.
    assert outbox_delivery(platform).run("tests").delivered == 1
    clock.advance(timedelta(minutes=5))
    # Real mail, as the worker writes it without SMTP: an invitation, then
    # (later) a second one.
    path = f"/v1/teams/{team.json()['id']}/invitations"
    first = client.post(path, json={"email": "bob@example.com"}, headers=owner.auth)
    assert first.status_code == 201
    assert outbox_delivery(platform).run("tests").delivered == 1
    clock.advance(timedelta(minutes=5))
    second = client.post(path, json={"email": "cara@example.com"}, headers=owner.auth)
    assert second.status_code == 201
    assert outbox_delivery(platform).run("tests").delivered == 1

    page = client.get("/admin/mail", headers=admin.auth)
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    text = page.text
    assert 'data-mail-mode="folder"' in text
    assert str(platform.mail_folder.path) in text
    # Newest first: time, to, subject, each linking to the message.
    assert text.index("cara@example.com") < text.index("bob@example.com")
    messages = platform.mail_folder.messages()
    assert [m.to for m in messages] == [
        "cara@example.com",
        "bob@example.com",
        "owner@example.com",
    ]
    for message in messages:
        assert f'href="/admin/mail/{message.name}"' in text
    assert "owner@example.com invited you to the team Night Shift on PlasmaArt" in text
    # The admin page links to it.
    assert 'href="/admin/mail"' in client.get("/admin", headers=admin.auth).text


def test_one_message_with_its_parts(client: TestClient, platform: Platform) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    name = write_mail(
        platform.mail_folder,
        "bob@example.com",
        "Reset <your> password",
        "Open this link:\nhttps://art.example.test/reset-password?token=abc&x=1\n\n"
        "<script>alert(1)</script> stays text.",
        ident="one-message",
    )
    page = client.get(f"/admin/mail/{name}", headers=admin.auth)
    assert page.status_code == 200
    text = page.text
    assert '<h1 class="page-title">Reset &lt;your&gt; password</h1>' in text
    assert "<dd data-mail-to>bob@example.com</dd>" in text
    assert "Jan 02, 2026 03:04 UTC" in text
    # The text part, escaped, its link clickable.
    assert "&lt;script&gt;alert(1)&lt;/script&gt; stays text." in text
    assert (
        '<a href="https://art.example.test/reset-password?token=abc&amp;x=1" '
        'target="_blank" rel="noopener noreferrer">' in text
    )
    assert "<script>alert(1)</script>" not in text
    # The HTML part is never in the page: only in a sandboxed frame.
    assert f'<iframe class="mail-frame" sandbox src="/admin/mail/{name}/html"' in text
    assert "<!doctype html>\n<html><head>" not in text

    part = client.get(f"/admin/mail/{name}/html", headers=admin.auth)
    assert part.status_code == 200
    assert part.headers["content-type"].startswith("text/html")
    assert part.headers["content-security-policy"] == HTML_PART_POLICY
    policy = [p.strip() for p in HTML_PART_POLICY.split(";")]
    assert policy[:3] == ["sandbox", "default-src 'none'", "style-src 'unsafe-inline'"]
    assert part.headers["x-frame-options"] == "SAMEORIGIN"
    assert part.headers["cache-control"] == "no-store"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; stays text." in part.text
    assert 'style="' in part.text  # mail HTML styles inline; the policy lets it


def test_everyone_but_admins_gets_404(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "user@example.com")
    name = write_mail(platform.mail_folder, "x@example.com", "Hello", "Hi.", ident="not-yours")
    for url in ("/admin/mail", f"/admin/mail/{name}"):
        answer = client.get(url, headers=user.auth)
        assert answer.status_code == 404, url
        assert "Hi." not in answer.text
        anonymous = client.get(url, follow_redirects=False)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/login?next=%2Fadmin%2Fmail")
    for headers in (user.auth, {}):
        part = client.get(f"/admin/mail/{name}/html", headers=headers)
        assert part.status_code == 404
        assert part.text == "Not found"


def test_no_name_leaves_the_folder(client: TestClient, platform: Platform, tmp_path: Path) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    secret = platform.mail_folder.path.parent / "secret.eml"
    platform.mail_folder.path.mkdir(parents=True, exist_ok=True)
    secret.write_text("To: x@example.com\nSubject: outside\n\nnot mail of the folder\n")
    for name in (
        "..%2Fsecret.eml",
        "..%2F..%2Fsecret.eml",
        "%2E%2E%2Fsecret.eml",
        "..eml",
        "secret",
        "x.eml%00",
        "nope.eml",
    ):
        for suffix in ("", "/html"):
            answer = client.get(f"/admin/mail/{name}{suffix}", headers=admin.auth)
            # A NUL is refused at the edge, before any route.
            assert answer.status_code == (422 if "%00" in name else 404), (name, suffix)
            assert "not mail of the folder" not in answer.text
    folder = platform.mail_folder
    for name in ("../secret.eml", "..", "a/b.eml", "/etc/passwd", "secret.eml\n"):
        try:
            folder.read(name)
        except FileNotFoundError:
            continue
        raise AssertionError(f"{name!r} was read")


def test_with_smtp_the_page_says_the_folder_is_not_used(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "var", smtp_host="127.0.0.1", smtp_port=2525)
    with running_platform(settings, clock) as platform, api_client(platform) as client:
        admin = make_user(platform, "admin@example.com", admin=True)
        page = client.get("/admin/mail", headers=admin.auth)
        assert page.status_code == 200
        assert 'data-mail-mode="smtp"' in page.text
        assert "127.0.0.1:2525" in page.text
        assert "No mail in the folder yet." in page.text


def test_the_folder_reader_survives_odd_files(tmp_path: Path) -> None:
    folder = MailFolder(tmp_path / "mail")
    good = write_mail(folder, "bob@example.com", "Good", "Fine.", ident="good")
    # A hand-made file: no Date, no To, no HTML part.
    (folder.path / "20990101T000000000000-handmade.eml").write_text(
        "Subject: Handmade\n\nJust text.\n"
    )
    # A file with a date no parser reads.
    bad_date = EmailMessage()
    bad_date["To"] = "cara@example.com"
    bad_date["Subject"] = "Bad date"
    bad_date["Date"] = "not a date at all"
    bad_date.set_content("Hello.")
    (folder.path / "20980101T000000000000-baddate.eml").write_bytes(bytes(bad_date))
    # A naive date (-0000), read as UTC.
    naive = EmailMessage()
    naive["To"] = "dan@example.com"
    naive["Subject"] = "Naive"
    naive["Date"] = "Fri, 02 Jan 2026 03:04:05 -0000"
    naive.set_content("Hi.")
    (folder.path / "20970101T000000000000-naive.eml").write_bytes(bytes(naive))
    # Names that are not messages of the folder are not listed.
    (folder.path / "odd name.eml").write_text("Subject: odd\n\nx\n")
    (folder.path / "partial.tmp").write_text("Subject: half\n\n")
    listed = folder.messages()
    assert [m.subject for m in listed] == ["Handmade", "Bad date", "Naive", "Good"]
    handmade, bad, naive_mail, _good = listed
    assert (handmade.to, handmade.html, handmade.text.strip()) == ("", None, "Just text.")
    mtime = datetime.fromtimestamp(
        os.stat(folder.path / "20980101T000000000000-baddate.eml").st_mtime, UTC
    )
    assert bad.sent_at == mtime
    assert naive_mail.sent_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert folder.read(good).html is not None
    assert folder.messages(limit=1)[0].subject == "Handmade"
    # No folder yet: nothing to list.
    assert MailFolder(tmp_path / "absent").messages() == []

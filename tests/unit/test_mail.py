"""Mail as it leaves the server: both parts name support, links become
anchors, the mail folder keeps one file per message and lets no name out of
the folder, and links start with the public address."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from plasmaart.config import Settings
from plasmaart.links import Links
from plasmaart.notify.email import Letter, MailFolder, SmtpMailer, compose, create_mailer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SUPPORT = "help@plasmaart.test"


def letter(body: str = "Hello.\n\nOpen https://art.example/reset?token=a_b-c to go on.") -> Letter:
    return Letter(to="ada@example.com", subject="Reset <your> password", body=body)


def test_a_message_has_a_plain_and_an_html_part_naming_support() -> None:
    message = compose(
        letter(), sender="noreply@x.test", support_email=SUPPORT, message_id="<m1@p>", now=NOW
    )
    assert message["To"] == "ada@example.com"
    assert message["Message-ID"] == "<m1@p>"
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert rich is not None
    text, html = str(plain.get_content()), str(rich.get_content())
    assert SUPPORT in text
    assert f'href="mailto:{SUPPORT}"' in html
    assert "https://art.example/reset?token=a_b-c" in text
    # The link is an anchor, the subject is escaped, paragraphs stay apart.
    assert '<a href="https://art.example/reset?token=a_b-c"' in html
    assert "Reset &lt;your&gt; password" in html
    assert html.count("<p style") == 3  # two paragraphs and the footer


def test_markup_in_a_body_is_shown_not_run() -> None:
    message = compose(
        letter("Team <script>alert(1)</script> invites you."),
        sender="s@x.test",
        support_email=SUPPORT,
        message_id="<m2@p>",
        now=NOW,
    )
    rich = message.get_body(preferencelist=("html",))
    assert rich is not None
    assert "<script>" not in str(rich.get_content())
    assert "&lt;script&gt;" in str(rich.get_content())


def test_the_mail_folder_keeps_one_file_per_message(tmp_path: Path) -> None:
    folder = MailFolder(tmp_path / "mail")
    assert folder.messages() == []
    first = compose(
        letter(), sender="s@x.test", support_email=SUPPORT, message_id="<a1@p>", now=NOW
    )
    second = compose(
        Letter("bo@example.com", "Welcome", "Hi Bo."),
        sender="s@x.test",
        support_email=SUPPORT,
        message_id="<b2@p>",
        now=NOW,
    )
    folder.send(first)
    folder.send(second)
    folder.send(first)  # sent again after a crash: the same file, not a second one
    stored = folder.messages()
    assert sorted(mail.subject for mail in stored) == ["Reset <your> password", "Welcome"]
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 2
    assert not list((tmp_path / "mail").glob("*.tmp"))
    welcome = next(mail for mail in stored if mail.subject == "Welcome")
    assert welcome.to == "bo@example.com"
    assert "Hi Bo." in welcome.text
    assert welcome.html is not None
    assert "Hi Bo." in welcome.html
    assert folder.read(welcome.name) == welcome


@pytest.mark.parametrize("name", ["../secret_key", "a/b.eml", "x.txt", "", ".eml/../x.eml"])
def test_no_name_reads_outside_the_folder(tmp_path: Path, name: str) -> None:
    (tmp_path / "secret_key").write_text("s3cr3t")
    folder = MailFolder(tmp_path / "mail")
    with pytest.raises(FileNotFoundError):
        folder.read(name)


def test_without_smtp_mail_goes_to_the_folder(tmp_path: Path) -> None:
    folder = create_mailer(Settings(var_dir=tmp_path))
    assert folder == MailFolder(tmp_path / "mail")
    smtp = create_mailer(Settings(var_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=2525))
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.host, smtp.port) == ("127.0.0.1", 2525)


def test_verification_is_required_when_mail_can_be_delivered(tmp_path: Path) -> None:
    assert not Settings(var_dir=tmp_path).email_verification_required
    assert Settings(var_dir=tmp_path, smtp_host="mail.test").email_verification_required
    assert Settings(var_dir=tmp_path, require_email_verification=True).email_verification_required
    assert not Settings(
        var_dir=tmp_path, smtp_host="mail.test", require_email_verification=False
    ).email_verification_required


def test_links_start_with_the_public_address(tmp_path: Path) -> None:
    assert Settings(var_dir=tmp_path, port=9000).public_base_url == "http://127.0.0.1:9000"
    settings = Settings(var_dir=tmp_path, public_url="https://art.example.com/")
    links = Links(settings.public_base_url)
    assert links.url("/reset-password", token="a b&c") == (
        "https://art.example.com/reset-password?token=a+b%26c"
    )
    with pytest.raises(ValueError, match="slash"):
        links.url("reset-password")
    with pytest.raises(ValueError, match="http"):
        Settings(var_dir=tmp_path, public_url="art.example.com")

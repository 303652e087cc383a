"""E-mail: the ``Mailer`` protocol, its SMTP implementation (stdlib smtplib)
and the mail folder used when no SMTP server is set.

Every message has a plain-text part and an HTML part made from it (``compose``),
and both name the support address. With ``smtp_host`` set, mail goes out over
SMTP; without it, each message is written as an ``.eml`` file under
``<var_dir>/mail`` (``MailFolder``), which an admin reads on the dashboard's
Mail page, so the embedded default works offline.
"""

from __future__ import annotations

import html
import os
import re
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from plasmaart.config import Settings

SIGNATURE = "PlasmaArt"
# The name of a message of the mail folder: no path may leave the folder.
_MAIL_NAME = re.compile(r"[A-Za-z0-9_-]+\.eml")
_URL = re.compile(r"https?://[^\s<>\"']+")


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None:
        """Send one message; raise ``OSError`` or ``smtplib.SMTPException`` on failure."""


@dataclass(frozen=True)
class Letter:
    """What one e-mail says: a subject and a plain-text body of paragraphs
    (blank-line separated); links are written out as URLs."""

    to: str
    subject: str
    body: str


def text_part(body: str, support_email: str) -> str:
    return f"{body}\n\n-- \n{SIGNATURE}\nQuestions? Write to {support_email}.\n"


def html_part(subject: str, body: str, support_email: str) -> str:
    """The HTML twin of the plain-text part: its paragraphs, with every URL
    a link, in a layout that mail clients render alike (inline styles only)."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", body.strip()):
        escaped = html.escape(paragraph)
        linked = _URL.sub(
            lambda m: f'<a href="{m.group(0)}" style="color:#5b3df5">{m.group(0)}</a>', escaped
        )
        paragraphs.append(
            '<p style="margin:0 0 16px;line-height:1.5">' + linked.replace("\n", "<br>") + "</p>"
        )
    support = html.escape(support_email)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(subject)}</title></head>"
        '<body style="margin:0;padding:24px;background:#f4f3f8;'
        'font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1d1b26">'
        '<div style="max-width:560px;margin:0 auto;background:#ffffff;border-radius:8px;'
        'padding:24px">'
        f'<h1 style="font-size:18px;margin:0 0 16px">{html.escape(subject)}</h1>'
        + "".join(paragraphs)
        + '<p style="margin:24px 0 0;font-size:13px;color:#6b6880">'
        f"{SIGNATURE} · Questions? Write to "
        f'<a href="mailto:{support}" style="color:#5b3df5">{support}</a>.</p>'
        "</div></body></html>\n"
    )


def compose(
    letter: Letter, *, sender: str, support_email: str, message_id: str, now: datetime
) -> EmailMessage:
    """The message: plain text and HTML alternatives, with a stable
    Message-ID (a resend after a crash is shown once by mail systems that
    deduplicate by it)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = letter.to
    message["Subject"] = letter.subject
    message["Date"] = formatdate(now.timestamp(), usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(text_part(letter.body, support_email))
    message.add_alternative(html_part(letter.subject, letter.body, support_email), subtype="html")
    return message


@dataclass(frozen=True)
class SmtpMailer:
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    # Short: the worker's clock tick waits for it.
    timeout_s: float = 10.0

    def send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)


@dataclass(frozen=True)
class StoredMail:
    """One ``.eml`` file of the mail folder, as the admin's Mail page lists it."""

    name: str
    to: str
    subject: str
    sent_at: datetime
    text: str
    html: str | None


@dataclass(frozen=True)
class MailFolder:
    """Mail written as ``.eml`` files instead of sent (no SMTP server set).

    A file is written under a temporary name and renamed into place, so a
    reader never sees half a message; its name sorts by time and is unique
    per message (its Message-ID), so a resend after a crash overwrites it."""

    path: Path

    def send(self, message: EmailMessage) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        ident = re.sub(r"[^A-Za-z0-9_-]", "", str(message["Message-ID"]).split("@")[0])
        final = self.path / f"{stamp}-{ident}.eml"
        for existing in self.path.glob(f"*-{ident}.eml"):
            final = existing  # the same message again: overwrite, keep its place
        partial = final.with_suffix(".tmp")
        partial.write_bytes(message.as_bytes(policy=policy.SMTP))
        os.replace(partial, final)

    def messages(self, *, limit: int = 100) -> list[StoredMail]:
        """The newest ``limit`` messages, newest first (a file removed while
        the folder is read is left out)."""
        if not self.path.is_dir():
            return []
        names = sorted(
            (p.name for p in self.path.glob("*.eml") if _MAIL_NAME.fullmatch(p.name)),
            reverse=True,
        )[:limit]
        found = []
        for name in names:
            try:
                found.append(self.read(name))
            except FileNotFoundError:
                continue
        return found

    def read(self, name: str) -> StoredMail:
        """One message by file name; ``FileNotFoundError`` for a name that is
        not a message of this folder (no path may leave it)."""
        if not _MAIL_NAME.fullmatch(name):
            raise FileNotFoundError(name)
        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(name)
        raw = path.read_bytes()
        parsed = BytesParser(EmailMessage, policy=policy.default).parsebytes(raw)
        text = parsed.get_body(preferencelist=("plain",))
        rich = parsed.get_body(preferencelist=("html",))
        return StoredMail(
            name=name,
            to=str(parsed["To"] or ""),
            subject=str(parsed["Subject"] or ""),
            sent_at=_sent_at(parsed["Date"], path),
            text="" if text is None else str(text.get_content()),
            html=None if rich is None else str(rich.get_content()),
        )


def _sent_at(date: object, path: Path) -> datetime:
    """The message's Date, in UTC; the file's time when the header is
    missing or unreadable (a hand-written file must not break the list)."""
    if date:
        try:
            parsed = parsedate_to_datetime(str(date))
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def create_mailer(settings: Settings) -> Mailer:
    """The SMTP mailer the settings describe, or the mail folder without SMTP."""
    if not settings.smtp_host:
        return MailFolder(settings.mail_dir)
    return SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        user=settings.smtp_user,
        password=None
        if settings.smtp_password is None
        else settings.smtp_password.get_secret_value(),
        starttls=settings.smtp_starttls,
    )


def sender_of(settings: Settings) -> str:
    return settings.smtp_from or settings.support_email

"""E-mail: the ``Mailer`` protocol and its SMTP implementation (stdlib smtplib).

Configured by the ``smtp_*`` settings; without ``smtp_host`` there is no
mailer and notifications are in-app only.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol

from plasmaart.config import Settings


class Mailer(Protocol):
    def send(self, *, to: str, subject: str, body: str, message_id: str) -> None:
        """Send one message; raise ``OSError`` or ``smtplib.SMTPException`` on failure."""


@dataclass(frozen=True)
class SmtpMailer:
    host: str
    port: int
    sender: str
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    # Short: the worker's clock tick waits for it.
    timeout_s: float = 10.0

    def send(self, *, to: str, subject: str, body: str, message_id: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        # Stable per outbox row: if a crash makes the worker send it again,
        # mail systems that deduplicate by Message-ID show it once.
        message["Message-ID"] = message_id
        message.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)


def create_mailer(settings: Settings) -> Mailer | None:
    """The SMTP mailer the settings describe, or None when e-mail is off."""
    if not settings.smtp_host:
        return None
    return SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from or settings.support_email,
        user=settings.smtp_user,
        password=None
        if settings.smtp_password is None
        else settings.smtp_password.get_secret_value(),
        starttls=settings.smtp_starttls,
    )

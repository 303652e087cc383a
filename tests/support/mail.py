"""A real SMTP server for tests (aiosmtpd on a loopback port) and helpers to
read what it received: the plain-text and HTML parts, and the links in them.

``SmtpServer`` is a context manager yielding its ``Inbox``; ``Inbox.wait_for``
waits (bounded) until a message for an address arrives. ``smtp_settings``
gives the ``Settings`` overrides that make a platform mail through it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

_LINK = re.compile(r"https?://[^\s<>\"']+")


class Inbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self, port: int = 0) -> None:
        # The port of the server this inbox belongs to.
        self.port = port
        self.messages: list[EmailMessage] = []
        self._arrived = threading.Condition()

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,  # noqa: ARG002
        session: Session,  # noqa: ARG002
        envelope: Envelope,
    ) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        message = message_from_bytes(content, _class=EmailMessage, policy=policy.default)
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        """The messages sent to ``address``, oldest first."""
        return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    def wait_for(
        self, address: str, *, subject: str = "", count: int = 1, timeout: float = 10.0
    ) -> EmailMessage:
        """The ``count``-th message to ``address`` whose subject contains
        ``subject``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [m for m in self.to(address) if subject in str(m["Subject"])]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    subjects = [(str(m["To"]), str(m["Subject"])) for m in self.messages]
                    raise AssertionError(
                        f"no mail {subject!r} to {address} within {timeout}s; got {subjects}"
                    )
                self._arrived.wait(left)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "the message has no plain-text part"
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "the message has no HTML part"
    return str(part.get_content())


def links_in(message: EmailMessage) -> list[str]:
    """The URLs of the plain-text part, in order."""
    return _LINK.findall(text_of(message))


def link_to(message: EmailMessage, path: str) -> str:
    """The one link of the message to ``path`` (say ``/reset-password``)."""
    found = [url for url in links_in(message) if urlsplit(url).path == path]
    assert len(found) == 1, f"expected one link to {path}, got {links_in(message)}"
    return found[0]


def token_of(url: str) -> str:
    """The ``token=`` query parameter of a link."""
    return parse_qs(urlsplit(url).query)["token"][0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.inbox = Inbox(self.port)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Inbox:
        self.controller.start()
        return self.inbox

    def __exit__(self, *_exc: object) -> None:
        self.controller.stop()

    def settings(self) -> dict[str, Any]:
        """``Settings`` overrides that mail through this server (with
        verification then required, as it is whenever SMTP is set)."""
        return smtp_settings(self.port)


def smtp_settings(port: int) -> dict[str, Any]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_starttls": False,
        "smtp_from": "noreply@plasmaart.test",
    }

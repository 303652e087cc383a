"""The admin's Mail page: the mail the platform wrote to its mail folder
(``<var_dir>/mail``, ``notify.email.MailFolder``) because no SMTP server is
set, newest first, and each message with its headers, its text part and its
HTML part.

Mail HTML is never put into a dashboard page: the message page shows it in an
``<iframe sandbox>`` whose source, ``/admin/mail/{name}/html``, serves the
HTML part alone under a Content-Security-Policy that sandboxes it and lets it
load nothing (inline styles only, which mail HTML uses), so a message cannot
run scripts, submit forms, load images or reach the dashboard.

Like ``/admin``, every route here answers 404 to everyone but admins.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from markupsafe import Markup, escape
from sqlalchemy import Connection

from plasmaart.notify.email import StoredMail
from plasmaart.platform import Platform
from plasmaart.web.dashboard import views
from plasmaart.web.dashboard.pages import PageSpec, _viewer, page, render
from plasmaart.web.deps import PlatformDep

router = APIRouter(include_in_schema=False)

MAIL = PageSpec("admin_mail.html", "admin", "Mail", admin_only=True)
MESSAGE = PageSpec("admin_mail_message.html", "admin", "Mail message", admin_only=True)
SHOWN = 200
# The HTML part, alone: sandboxed (no scripts, forms, popups or same-origin
# access), loading nothing but its own inline styles, framed only by the
# dashboard itself.
HTML_PART_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
HTML_PART_HEADERS = {
    "Content-Security-Policy": HTML_PART_POLICY,
    "X-Frame-Options": "SAMEORIGIN",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
_URL = re.compile(r"https?://[^\s<>\"']+")


def linked_text(text: str) -> Markup:
    """The text part, escaped, with each URL a link (opened in a new tab,
    sending no referrer)."""
    link = Markup('<a href="{0}" target="_blank" rel="noopener noreferrer">{0}</a>')
    pieces: list[Markup] = []
    start = 0
    for found in _URL.finditer(text):
        pieces.append(escape(text[start : found.start()]))
        pieces.append(link.format(found.group(0)))
        start = found.end()
    pieces.append(escape(text[start:]))
    return Markup("").join(pieces)


def _folder_context(platform: Platform) -> dict[str, Any]:
    settings = platform.settings
    return {
        "smtp_host": settings.smtp_host,
        "smtp_port": settings.smtp_port,
        "mail_dir": str(platform.mail_folder.path),
        "verification_required": settings.email_verification_required,
    }


@router.get("/admin/mail")
def mail_page(request: Request, platform: PlatformDep) -> Response:
    def build(_conn: Connection, _frame: views.Frame) -> dict[str, Any]:
        messages = platform.mail_folder.messages(limit=SHOWN + 1)
        return {
            "messages": messages[:SHOWN],
            "more": len(messages) > SHOWN,
            "shown": SHOWN,
            **_folder_context(platform),
        }

    return page(request, platform, MAIL, build)


def _message(platform: Platform, name: str) -> StoredMail | None:
    try:
        return platform.mail_folder.read(name)
    except FileNotFoundError:
        return None


@router.get("/admin/mail/{name}")
def message_page(request: Request, platform: PlatformDep, name: str) -> Response:
    message = _message(platform, name)
    principal = _viewer(request, platform)
    if message is None and principal is not None and principal.user.role == "admin":
        return render(request, "not_found.html", {"title": "Not found"}, status_code=404)

    def build(_conn: Connection, _frame: views.Frame) -> dict[str, Any]:
        # Only reached by an admin, for a message that exists.
        return {
            "message": message,
            "text": linked_text("" if message is None else message.text),
            **_folder_context(platform),
        }

    return page(request, platform, MESSAGE, build)


@router.get("/admin/mail/{name}/html")
def message_html(request: Request, platform: PlatformDep, name: str) -> Response:
    """The HTML part alone, sandboxed (``HTML_PART_POLICY``), for the message
    page's iframe."""
    principal = _viewer(request, platform)
    message = None
    if principal is not None and principal.user.role == "admin":
        message = _message(platform, name)
    if message is None or message.html is None:
        return Response(
            "Not found", status_code=404, media_type="text/plain", headers=HTML_PART_HEADERS
        )
    return Response(message.html, media_type="text/html", headers=HTML_PART_HEADERS)

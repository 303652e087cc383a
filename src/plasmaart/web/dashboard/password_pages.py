"""The pages of password reset (``/forgot-password``, ``/reset-password``)
and the settings page with its Security section (change the password, the
sessions with revoke, the API keys' last use). As every page, GET only: the
forms call the JSON API from ``static/js/password.js`` (docs/dashboard.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Connection

from plasmaart.accounts.passwords import MIN_PASSWORD_LENGTH
from plasmaart.errors import InvalidToken
from plasmaart.platform import Platform
from plasmaart.web.auth import SESSION_COOKIE
from plasmaart.web.dashboard import views
from plasmaart.web.dashboard.pages import PageSpec, SafeText, _viewer, page, render
from plasmaart.web.deps import PlatformDep

router = APIRouter(include_in_schema=False)

SETTINGS = PageSpec("settings.html", "settings", "Settings")
# How many sessions the Security section lists (the most recent).
SESSIONS_SHOWN = 50
# The reset page carries its token in the address: never send it on as a Referer.
NO_REFERRER = {"Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class SessionRow:
    id: str
    browser: str
    address: str | None
    created_at: datetime
    last_seen_at: datetime


_BROWSERS = (
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("python-httpx/", "Python (httpx)"),
    ("python-requests/", "Python (requests)"),
)
_SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


def browser_name(user_agent: str | None) -> str:
    """``Firefox on Linux``, from a ``User-Agent``; its start when unknown."""
    if not user_agent or not user_agent.strip():
        return "Unknown browser"
    browser = next((name for mark, name in _BROWSERS if mark in user_agent), None)
    system = next((name for mark, name in _SYSTEMS if mark in user_agent), None)
    if browser is None:
        return re.sub(r"\s+", " ", user_agent.strip())[:60]
    return f"{browser} on {system}" if system else browser


def current_session_id(request: Request, platform: Platform) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    found = platform.principals.of_session(token) if token else None
    return None if found is None else found[1].id


def security(
    conn: Connection, platform: Platform, frame: views.Frame, current: str | None
) -> dict[str, Any]:
    """The Security section: the live sessions (this one marked) and the keys."""
    found = platform.passwords.sessions(conn, frame.user, limit=SESSIONS_SHOWN)
    rows = [
        SessionRow(s.id, browser_name(s.user_agent), s.address, s.created_at, s.last_seen_at)
        for s in found.sessions
    ]
    return {
        "sessions": rows,
        "more_sessions": found.more,
        "current_session": current,
        "min_password": MIN_PASSWORD_LENGTH,
    }


@router.get("/settings")
def settings_page(request: Request, platform: PlatformDep) -> Response:
    _viewer(request, platform)  # the caller, kept on the request for ``page``
    current = current_session_id(request, platform)

    def build(conn: Connection, frame: views.Frame) -> dict[str, Any]:
        context = views.settings(conn, platform, frame)
        context.update(security(conn, platform, frame, current))
        return context

    return page(request, platform, SETTINGS, build)


@router.get("/forgot-password")
def forgot_password_page(request: Request, platform: PlatformDep) -> Response:
    context = {"title": "Forgot your password", "support_email": platform.settings.support_email}
    return render(request, "forgot_password.html", context)


@router.get("/reset-password")
def reset_password_page(
    request: Request, platform: PlatformDep, token: SafeText = None
) -> Response:
    """The form for a new password, if the link still works (checked without
    spending it); else a way to get a new link."""
    context: dict[str, Any] = {
        "title": "Choose a new password",
        "valid": False,
        "min_password": MIN_PASSWORD_LENGTH,
    }
    if token:
        try:
            with platform.db.read() as conn:
                user = platform.passwords.check_reset_link(conn, token)
        except InvalidToken:
            pass
        else:
            context.update(valid=True, token=token, email=user.email, two_factor=user.two_factor)
    if not context["valid"]:
        context["title"] = "This link does not work"
    response = render(request, "reset_password.html", context)
    response.headers.update(NO_REFERRER)
    return response

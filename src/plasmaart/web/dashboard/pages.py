"""The dashboard's page routes: GET only. Every action a page offers is a call
to the JSON API from the page's scripts (with the session's CSRF token), so
the pages themselves never write.

A suspended account sees every page, under a banner that says why it is
suspended and how to reach support; the writes it may not make (all but
canceling its subscription and logging out) are shown disabled (``locked``).

Anonymous visitors (or an ended session) are sent to ``/login?next=<path>``;
``next`` is only ever followed to a path of this site. ``/admin`` and
``/admin/audit`` answer 404 to everyone but admins, like the admin API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import Connection
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.templating import Jinja2Templates

from plasmaart import __version__
from plasmaart.accounts.passwords import MIN_PASSWORD_LENGTH
from plasmaart.accounts.tokens import LIFETIMES
from plasmaart.db.values import GENERATION_STATUSES
from plasmaart.errors import Unauthenticated
from plasmaart.generation.runner import EXTENSIONS
from plasmaart.generation.service import Output
from plasmaart.platform import Platform
from plasmaart.web.auth import Principal, authenticate
from plasmaart.web.dashboard import credits_page, views, webhooks_page
from plasmaart.web.deps import PlatformDep
from plasmaart.web.problems import http_problem

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
ASSETS_PREFIX = "/assets/"
TEMPLATE_DIR = HERE / "templates"

# Pages send only what the app serves: scripts and styles from /assets (no
# inline script or style), media from the API, live events from /v1/events.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Pages show a person's balance and history: never from a shared cache.
    "Cache-Control": "no-store",
}
SafeText = Annotated[str | None, Query(max_length=2000)]

router = APIRouter(include_in_schema=False)


def _when(value: datetime | None, style: str = "datetime") -> str:
    if value is None:
        return "—"
    if style == "date":
        return value.strftime("%b %d, %Y")
    return value.strftime("%b %d, %Y %H:%M UTC")


def _money(cents: int, currency: str = "USD") -> str:
    symbol = "$" if currency.upper() == "USD" else currency.upper() + " "
    return f"{symbol}{cents / 100:,.0f}" if cents % 100 == 0 else f"{symbol}{cents / 100:,.2f}"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(("html", "svg")),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["money"] = _money
    env.filters["credits"] = lambda n: f"{int(n):,}"
    env.filters["credit_count"] = _credit_count
    env.filters["sentence"] = _sentence
    env.filters["download_name"] = _download_name
    env.globals["version"] = __version__
    env.globals["locked"] = _locked
    return env


def _credit_count(n: int) -> str:
    """``1 credit``, ``800 credits``, ``2,000 credits``."""
    return f"{int(n):,} credit" + ("" if int(n) == 1 else "s")


def _sentence(text: str) -> str:
    """A message as a sentence: a capital first letter and a closing full stop,
    so that the sentence after it does not run on."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _download_name(output: Output, generation_id: str) -> str:
    """The name the output's Download link saves it as, the one its
    Content-Disposition gives: ``plasmaart-<generation>-<n>.<ext>``."""
    extension = EXTENSIONS.get(output.content_type, "bin")
    return f"plasmaart-{generation_id}-{output.position + 1}.{extension}"


def _locked(frame: views.Frame) -> Markup:
    """The attributes of a write's button on a read-only (suspended)
    account's page: disabled, and pointing at the banner that says why."""
    if frame.read_only:
        return Markup(' disabled aria-describedby="suspended-note"')
    return Markup("")


templates = Jinja2Templates(env=_environment())


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this site, else ``/``: a login link must
    never send anybody elsewhere (``//evil.example``, ``https://…``, ``/\\…``)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(ch) < 0x20 or ch == "\\" for ch in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def _viewer(request: Request, platform: Platform) -> Principal | None:
    """The signed-in caller, or None (no session, or one that ended)."""
    try:
        return authenticate(request, platform)
    except Unauthenticated:
        return None


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, template, context, status_code=status_code, headers=PAGE_HEADERS
    )
    return response


def prefers_html(accept: str) -> bool:
    """Whether an ``Accept`` header asks for a web page before JSON: a browser
    (``text/html,…,*/*;q=0.8``) does; an API client (``application/json``,
    ``*/*``, nothing) does not."""
    html_q = 0.0
    json_q = 0.0
    for item in accept.split(",")[:50]:
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, q)
        elif media in ("application/json", "application/problem+json"):
            json_q = max(json_q, q)
    return html_q > 0 and html_q >= json_q


async def not_found(request: Request, exc: Exception) -> Response:
    """A 404 from the framework (no such route): the styled page for a browser,
    problem+json ``not_found`` for an API client and anything under ``/v1/``."""
    if not isinstance(exc, StarletteHTTPException):  # only HTTP errors carry a status
        raise exc
    path = request.url.path
    if (
        path.startswith(("/v1/", ASSETS_PREFIX))
        or path == "/v1"
        or not prefers_html(request.headers.get("accept", ""))
    ):
        return http_problem(exc)
    return render(request, "not_found.html", {"title": "Not found"}, status_code=404)


Build = Callable[[Connection, views.Frame], dict[str, Any]]
View = Callable[[Connection, Platform, views.Frame], dict[str, Any]]


@dataclass(frozen=True)
class PageSpec:
    """A signed-in page: its template, the menu entry it lights up, its title."""

    template: str
    active: str
    title: str
    admin_only: bool = False  # as for the admin API: other users get the 404 page


def page(request: Request, platform: Platform, spec: PageSpec, build: Build) -> Response:
    """A signed-in page: everything it shows read in one transaction."""
    principal = _viewer(request, platform)
    if principal is None:
        return _login_redirect(request)
    user = principal.user
    if spec.admin_only and user.role != "admin":
        return render(request, "not_found.html", {"title": "Not found"}, status_code=404)
    with platform.db.read() as conn:
        frame = views.frame(conn, platform, user)
        context = build(conn, frame)
    context.update(frame=frame, active=spec.active, title=spec.title)
    return render(request, spec.template, context)


# -- signing in ----------------------------------------------------------------


def _auth_page(request: Request, platform: Platform, mode: str, next_path: str | None) -> Response:
    target = safe_next(next_path)
    if urlsplit(target).path in ("/login", "/signup"):
        target = "/"  # back to the login page would go round in circles
    principal = _viewer(request, platform)
    if principal is not None:
        return RedirectResponse(target, status_code=303)
    title = "Log in" if mode == "login" else "Create your account"
    context = {
        "mode": mode,
        "next": target,
        "title": title,
        "min_password": MIN_PASSWORD_LENGTH,
        "valid_days": LIFETIMES["email_verification"].days,
    }
    return render(request, "auth.html", context)


@router.get("/login")
def login_page(request: Request, platform: PlatformDep, next: SafeText = None) -> Response:
    return _auth_page(request, platform, "login", next)


@router.get("/signup")
def signup_page(request: Request, platform: PlatformDep, next: SafeText = None) -> Response:
    return _auth_page(request, platform, "signup", next)


@router.get("/verify-email")
def verify_email_page(request: Request, platform: PlatformDep, token: SafeText = None) -> Response:
    """Where a verification or change-of-address link lands, signed in or
    not: its script posts the token (a GET never uses it up, so a mail
    scanner fetching the link does no harm) and shows the outcome."""
    context = {
        "title": "Confirm your e-mail address",
        "token": (token or "").strip(),
        "signed_in": _viewer(request, platform) is not None,
        "valid_days": LIFETIMES["email_verification"].days,
        "support_email": platform.settings.support_email,
    }
    return render(request, "verify.html", context)


@router.get("/goodbye")
def goodbye_page(request: Request, platform: PlatformDep) -> Response:
    """Where the browser lands once the account is deleted (``DELETE /v1/me``)."""
    context = {"title": "Goodbye", "support_email": platform.settings.support_email}
    return render(request, "goodbye.html", context)


# -- the pages -----------------------------------------------------------------

# The pages that read no query parameter: path, page, view. (``/settings``,
# which marks the caller's own session, is password_pages.py's.)
PLAIN_PAGES: tuple[tuple[str, PageSpec, View], ...] = (
    ("/", PageSpec("home.html", "home", "Home"), views.home),
    ("/create", PageSpec("create.html", "create", "Create"), views.create),
    ("/billing", PageSpec("billing.html", "billing", "Plan & billing"), views.billing),
    ("/team", PageSpec("team.html", "team", "Team"), views.team),
    ("/credits", PageSpec("credits.html", "credits", "Credits"), credits_page.credits),
    ("/webhooks", PageSpec("webhooks.html", "webhooks", "Webhooks"), webhooks_page.webhooks),
)
GENERATIONS = PageSpec("generations.html", "generations", "Generations")
USAGE = PageSpec("usage.html", "usage", "Usage")
NOTIFICATIONS = PageSpec("notifications.html", "notifications", "Notifications")
ADMIN = PageSpec("admin.html", "admin", "Admin", admin_only=True)
AUDIT = PageSpec("admin_audit.html", "admin", "Audit log", admin_only=True)


def _plain_page(spec: PageSpec, view: View) -> Callable[[Request, Platform], Response]:
    def show(request: Request, platform: PlatformDep) -> Response:
        return page(request, platform, spec, lambda conn, frame: view(conn, platform, frame))

    return show


for _path, _spec, _view in PLAIN_PAGES:
    router.add_api_route(
        _path, _plain_page(_spec, _view), methods=["GET"], name=f"{_spec.active}_page"
    )


@router.get("/generations")
def generations_page(
    request: Request, platform: PlatformDep, before: SafeText = None, status: SafeText = None
) -> Response:
    wanted = status if status in GENERATION_STATUSES else None
    return page(
        request,
        platform,
        GENERATIONS,
        lambda conn, frame: views.gallery(conn, platform, frame, before=before, status=wanted),
    )


@router.get("/usage")
def usage_page(
    request: Request,
    platform: PlatformDep,
    since: SafeText = None,
    until: SafeText = None,
    model: SafeText = None,
    cursor: SafeText = None,
) -> Response:
    wanted = views.usage_filter(platform, since, until, model)
    return page(
        request, platform, USAGE, lambda conn, frame: views.usage(conn, frame, wanted, cursor)
    )


@router.get("/notifications")
def notifications_page(
    request: Request, platform: PlatformDep, cursor: SafeText = None
) -> Response:
    return page(
        request,
        platform,
        NOTIFICATIONS,
        lambda conn, frame: views.notifications(conn, platform, frame, cursor),
    )


@router.get("/admin")
def admin_page(
    request: Request, platform: PlatformDep, q: SafeText = None, status: SafeText = None
) -> Response:
    def build(conn: Connection, frame: views.Frame) -> dict[str, Any]:
        wanted: Literal["active", "suspended"] | None = (
            "active" if status == "active" else "suspended" if status == "suspended" else None
        )
        context = views.admin(conn, platform, q=q, status=wanted)
        context.update(q=q or "", status=wanted, me=frame.user.id)
        return context

    return page(request, platform, ADMIN, build)


async def _audit_form(
    actor: SafeText = None,
    subject: SafeText = None,
    action: SafeText = None,
    since: SafeText = None,
    until: SafeText = None,
) -> views.AuditForm:
    """The audit page's filter form, read from the query (async: no thread hop)."""
    return views.audit_form(actor, subject, action, since, until)


@router.get("/admin/audit")
def admin_audit_page(
    request: Request,
    platform: PlatformDep,
    form: Annotated[views.AuditForm, Depends(_audit_form)],
    cursor: SafeText = None,
) -> Response:
    return page(
        request, platform, AUDIT, lambda conn, _frame: views.admin_audit(conn, form, cursor)
    )

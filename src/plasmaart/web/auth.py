"""Who is calling: an API key (``Authorization: Bearer``) or the session cookie.

Cookie-authenticated writes must echo the session's CSRF token in the
``X-CSRF-Token`` header (or the ``csrf_token`` form field); bearer requests
need none, since browsers never attach them on their own.

A suspended account is read-only (DESIGN.md §5, API.md): every dependency
below that names the caller lets it read (GET, HEAD) and make the few writes
of ``SUSPENDED_MAY_WRITE``, and refuses any other write with
``account_suspended``, before the route runs, so nothing is written. The rule
lives here and nowhere else; routes only declare whose they are.

So does the rule of unverified addresses (docs/accounts.md): while address
verification is required, an account that has not proven its address may
read and do most things, but not the writes of ``VERIFIED_ONLY`` (paying,
joining a team, creating API keys), which answer ``email_not_verified``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from plasmaart.accounts.credentials import KeyLimits
from plasmaart.accounts.service import User
from plasmaart.errors import (
    AccountSuspended,
    EmailNotVerified,
    Forbidden,
    NotFound,
    Unauthenticated,
)
from plasmaart.platform import Platform

__all__ = [
    "AccountSuspended",
    "AdminPrincipal",
    "CurrentPrincipal",
    "EmailNotVerified",
    "Forbidden",
    "OptionalPrincipal",
    "Principal",
    "Unauthenticated",
]
from plasmaart.web.deps import PlatformDep

SESSION_COOKIE = "pa_session"
CSRF_COOKIE = "pa_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The writes a suspended account may still make, as "METHOD /route/{path}":
# ending its subscription (no renewal is charged anyway; this makes the end
# its own, so that a reinstatement does not undo it), logging out, and
# securing the account.
SUSPENDED_MAY_WRITE = frozenset(
    {
        "DELETE /v1/subscription",
        "POST /v1/auth/logout",
        # Securing the account: a new password, a session logged out.
        "POST /v1/me/password",
        "DELETE /v1/sessions/{session_id}",
    }
)
# The writes that need a verified address while verification is required.
VERIFIED_ONLY = frozenset(
    {
        "POST /v1/subscription",
        "PATCH /v1/subscription",
        "POST /v1/subscription/pay",
        "POST /v1/credit-purchases",
        "POST /v1/invitations/{token}/accept",
        "POST /v1/api-keys",
        # Webhooks send data to an address the account names (an account
        # without endpoints has none to change or replay to).
        "POST /v1/webhook-endpoints",
        "PUT /v1/auto-topup",
    }
)


@dataclass(frozen=True)
class Principal:
    user: User
    via: Literal["session", "api_key"]
    credential_id: str  # the session token's hash prefix or the API key id
    # The API key's spend limits (via "api_key"), as cached with the principal.
    api_key: KeyLimits | None = None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use 'Authorization: Bearer <api key>'")
    return token.strip()


def authenticate(request: Request, platform: Platform) -> Principal | None:
    """The caller, or None when the request carries no credentials at all.
    Bad credentials are refused rather than treated as anonymous."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    token = _bearer(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if token is None and cookie is None:
        return None
    # From the process's caches (accounts/principals.py): no database work
    # on a hit, and the key's last use is written later, off the request path.
    if token is not None:
        key = platform.principals.of_api_key(token)
        if key is None:
            raise Unauthenticated("this API key is not valid (revoked or mistyped)")
        user, limits = key
        principal = Principal(user, "api_key", limits.key_id, limits)
    else:
        cookie = cookie or ""  # not None here: one of the two was sent
        found = platform.principals.of_session(cookie)
        if found is None:
            raise Unauthenticated("your session has ended; log in again")
        user, session = found
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER) or getattr(request.state, "form_csrf", None)
            if sent != session.csrf_token:
                raise Forbidden("missing or wrong CSRF token (send X-CSRF-Token)")
        principal = Principal(user, "session", cookie[:8])
    request.state.principal = principal
    return principal


def route_key(request: Request) -> str:
    """``METHOD /path/{param}``: the route the request was routed to."""
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or request.url.path
    return f"{request.method} {path}"


def is_read_only_allowed(request: Request) -> bool:
    """Whether a suspended account may make this request: a read, or one of
    the writes of ``SUSPENDED_MAY_WRITE``."""
    return request.method in SAFE_METHODS or route_key(request) in SUSPENDED_MAY_WRITE


def refuse_if_suspended(request: Request, platform: Platform, principal: Principal) -> None:
    if principal.user.status == "suspended" and not is_read_only_allowed(request):
        support = platform.settings.support_email
        raise AccountSuspended(
            "this account is suspended and read-only: it can read and download, "
            f"cancel its subscription and log out; write to {support} about it",
            support_email=support,
        )


def refuse_if_unverified(request: Request, platform: Platform, principal: Principal) -> None:
    if (
        platform.settings.email_verification_required
        and not principal.user.email_verified
        and route_key(request) in VERIFIED_ONLY
    ):
        raise EmailNotVerified(
            f"verify your address first: open the link we sent to {principal.user.email} "
            "(POST /v1/auth/verify-email/resend sends a new one)"
        )


def _refuse(request: Request, platform: Platform, principal: Principal) -> None:
    refuse_if_suspended(request, platform, principal)
    refuse_if_unverified(request, platform, principal)


def optional_principal(request: Request, platform: PlatformDep) -> Principal | None:
    principal = authenticate(request, platform)
    if principal is not None:
        _refuse(request, platform, principal)
    return principal


def _authenticated(request: Request, platform: Platform) -> Principal:
    principal = authenticate(request, platform)
    if principal is None:
        raise Unauthenticated("log in or send 'Authorization: Bearer <api key>'")
    return principal


def require_principal(request: Request, platform: PlatformDep) -> Principal:
    principal = _authenticated(request, platform)
    _refuse(request, platform, principal)
    return principal


def require_admin(request: Request, platform: PlatformDep) -> Principal:
    principal = _authenticated(request, platform)
    if principal.user.role != "admin":
        # Admin endpoints do not exist for other users: the same answer as
        # for a path that does not exist (suspended or not).
        raise NotFound("Not Found")
    _refuse(request, platform, principal)
    return principal


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]

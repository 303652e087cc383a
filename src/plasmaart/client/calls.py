"""Every API call the client makes, described once as a ``Call``: method,
path, query, body and how to read the answer. The sync and async clients
only send them, so both speak exactly the same API."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from typing import Any, Generic, TypeVar
from urllib.parse import quote as url_quote

import httpx

from plasmaart import __version__
from plasmaart.client import models as m
from plasmaart.client.errors import (
    PlasmaArtError,
    TransportError,
    UnexpectedResponse,
    error_from_response,
)

T = TypeVar("T")

# The API's page size limits (API.md: default 50, max 200).
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

CSRF_COOKIE = "pa_csrf"
SESSION_COOKIE = "pa_session"

Instant = datetime | date | str


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]  # from the decoded JSON body (None when empty)
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    # Multipart form files, {field: (file name, content, content type)}, sent
    # instead of a JSON body (uploads).
    files: Mapping[str, tuple[str, bytes, str]] | None = None
    idempotency_key: str | None = None
    # Health checks answer now or never: a retry would only hide the answer.
    retry: bool = True

    def with_key(self) -> Call[T]:
        """Every POST carries an Idempotency-Key, so a retry cannot act twice."""
        if self.method != "POST" or self.idempotency_key is not None:
            return self
        return dataclasses.replace(self, idempotency_key=str(uuid.uuid4()))


def client_headers(api_key: str | None) -> dict[str, str]:
    """Sent with every request."""
    headers = {"User-Agent": f"plasmaart-client/{__version__}", "Accept": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def csrf_token(cookies: httpx.Cookies) -> str | None:
    """The session's CSRF token, which cookie-authenticated writes echo."""
    found = [cookie.value for cookie in cookies.jar if cookie.name == CSRF_COOKIE]
    return found[-1] if found else None


def request_headers(call: Call[Any], *, csrf_token: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if call.idempotency_key is not None:
        headers["Idempotency-Key"] = call.idempotency_key
    # Only cookie sessions check it; sending it with a bearer key is harmless.
    if csrf_token is not None and call.method not in ("GET", "HEAD", "OPTIONS"):
        headers["X-CSRF-Token"] = csrf_token
    return headers


def build_request(
    http: httpx.Client | httpx.AsyncClient,
    call: Call[Any],
    *,
    headers: Mapping[str, str] | None = None,
    read_timeout: float | None = None,
) -> httpx.Request:
    """The request for ``call`` (which has its Idempotency-Key already): built
    once and sent as is on every attempt."""
    sent = request_headers(call, csrf_token=csrf_token(http.cookies))
    sent.update(headers or {})
    timeout: httpx.Timeout | None = None
    if read_timeout is not None:
        default = http.timeout
        timeout = httpx.Timeout(
            connect=default.connect, read=read_timeout, write=default.write, pool=default.pool
        )
    request = http.build_request(
        call.method,
        call.path,
        params=dict(call.params) or None,
        json=call.body,
        files=dict(call.files) if call.files is not None else None,
        headers=sent,
        timeout=timeout if timeout is not None else http.timeout,
    )
    if not _same_origin(request.url, http.base_url):
        # An absolute link elsewhere (a storage bucket's signed URL, say) is
        # fetched without our credentials: the key is for our server only.
        # (Cookies are already kept to their own domain by the cookie jar.)
        request.headers.pop("Authorization", None)
    return request


def _same_origin(url: httpx.URL, base_url: httpx.URL) -> bool:
    return (url.scheme, url.host, url.port) == (base_url.scheme, base_url.host, base_url.port)


def failure(call: Call[Any], outcome: httpx.Response | httpx.TransportError) -> PlasmaArtError:
    """What to raise when the last attempt of ``call`` ended in ``outcome``."""
    if isinstance(outcome, httpx.TransportError):
        error = TransportError(f"{call.method} {call.path}: {outcome!r}")
        error.__cause__ = outcome
        return error
    return error_from_response(outcome)


def read_answer(call: Call[T], response: httpx.Response) -> T:
    """The typed answer of a successful (and read) response."""
    if response.status_code == 204 or not response.content:
        return call.read(None)
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise UnexpectedResponse(
            f"{call.method} {call.path} answered {response.status_code} without JSON"
        ) from None
    return call.read(body)


def _segment(value: str) -> str:
    return url_quote(value, safe="")


def _instant(value: Instant) -> str:
    return value if isinstance(value, str) else value.isoformat()


def _query(**values: Any) -> dict[str, str]:
    """Query parameters, leaving out the unset ones."""
    found: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            found[name] = "true" if value else "false"
        elif isinstance(value, datetime | date):
            found[name] = _instant(value)
        else:
            found[name] = str(value)
    return found


def _nothing(_body: Any) -> None:
    return None


def _one(cls: type[T]) -> Callable[[Any], T]:
    return partial(m.decode, cls)


def _page(cls: type[T]) -> Callable[[Any], m.Page[T]]:
    return partial(m.decode_page, cls)


def _user(body: Any) -> m.User:
    return m.decode(m.User, body.get("user") if isinstance(body, dict) else None, "user")


# -- paging --------------------------------------------------------------------


PageCall = Callable[[str | None, int], Call[m.Page[T]]]


class Pager(Generic[T]):
    """Walks a list's pages by ``next_cursor``, one request at a time, up to
    ``limit`` items in all (None: every item)."""

    def __init__(self, make: PageCall[T], limit: int | None, page_size: int) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be at least 0")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}")
        self._make = make
        self._left = limit
        self._page_size = page_size
        self._cursor: str | None = None
        self._done = limit == 0

    def next_call(self) -> Call[m.Page[T]] | None:
        if self._done:
            return None
        size = self._page_size if self._left is None else min(self._page_size, self._left)
        return self._make(self._cursor, size)

    def take(self, page: m.Page[T]) -> tuple[T, ...]:
        items = page.items
        if self._left is not None:
            items = items[: self._left]
            self._left -= len(items)
        self._cursor = page.next_cursor
        self._done = page.next_cursor is None or self._left == 0 or not page.items
        return items


# -- operations ------------------------------------------------------------------


def healthz() -> Call[m.Health]:
    return Call("GET", "/healthz", _one(m.Health), retry=False)


def readyz() -> Call[m.Readiness]:
    return Call("GET", "/readyz", _one(m.Readiness), retry=False)


# -- catalog -----------------------------------------------------------------------


def models(cursor: str | None, size: int) -> Call[m.Page[m.Model]]:
    return Call("GET", "/v1/models", _page(m.Model), _query(cursor=cursor, limit=size))


def model(model_id: str) -> Call[m.Model]:
    return Call("GET", f"/v1/models/{_segment(model_id)}", _one(m.Model))


def plans(cursor: str | None, size: int) -> Call[m.Page[m.Plan]]:
    return Call("GET", "/v1/plans", _page(m.Plan), _query(cursor=cursor, limit=size))


def credit_packs(cursor: str | None, size: int) -> Call[m.Page[m.CreditPack]]:
    return Call("GET", "/v1/credit-packs", _page(m.CreditPack), _query(cursor=cursor, limit=size))


# -- accounts ----------------------------------------------------------------------


def _signed_up(body: Any) -> m.User | m.VerificationSent:
    # 201 {user} logs in; 202 {email, verification} asks to open the mailed link.
    if isinstance(body, dict) and "user" not in body and "verification" in body:
        return m.decode(m.VerificationSent, body)
    return _user(body)


def signup(email: str, password: str, key: str | None) -> Call[m.User | m.VerificationSent]:
    body = {"email": email, "password": password}
    return Call("POST", "/v1/auth/signup", _signed_up, body=body, idempotency_key=key)


def verify_email(token: str, key: str | None) -> Call[m.User]:
    return Call("POST", "/v1/auth/verify-email", _user, body={"token": token}, idempotency_key=key)


def resend_verification(key: str | None) -> Call[m.VerificationSent]:
    return Call(
        "POST", "/v1/auth/verify-email/resend", _one(m.VerificationSent), idempotency_key=key
    )


def change_email(email: str, password: str, otp: str | None) -> Call[m.Me]:
    body: dict[str, Any] = {"email": email, "password": password}
    if otp is not None:
        body["otp"] = otp
    return Call("PATCH", "/v1/me", _one(m.Me), body=body)


def login(email: str, password: str, key: str | None) -> Call[m.User]:
    body = {"email": email, "password": password}
    return Call("POST", "/v1/auth/login", _user, body=body, idempotency_key=key)


def logout(key: str | None) -> Call[None]:
    return Call("POST", "/v1/auth/logout", _nothing, idempotency_key=key)


def me() -> Call[m.Me]:
    return Call("GET", "/v1/me", _one(m.Me))


def update_settings(remove_watermark: bool | None) -> Call[m.Me]:
    body: dict[str, Any] = {}
    if remove_watermark is not None:
        body["remove_watermark"] = remove_watermark
    return Call("PATCH", "/v1/me/settings", _one(m.Me), body=body)


def create_api_key(name: str, key: str | None) -> Call[m.NewApiKey]:
    return Call("POST", "/v1/api-keys", _one(m.NewApiKey), body={"name": name}, idempotency_key=key)


def api_keys() -> Call[m.Page[m.ApiKey]]:
    return Call("GET", "/v1/api-keys", _page(m.ApiKey))


def revoke_api_key(key_id: str) -> Call[m.ApiKey]:
    return Call("DELETE", f"/v1/api-keys/{_segment(key_id)}", _one(m.ApiKey))


# -- credits -----------------------------------------------------------------------


def balance() -> Call[m.Balance]:
    return Call("GET", "/v1/balance", _one(m.Balance))


def ledger(
    kind: str | None, since: Instant | None, until: Instant | None
) -> PageCall[m.LedgerEntry]:
    def page(cursor: str | None, size: int) -> Call[m.Page[m.LedgerEntry]]:
        query = _query(limit=size, cursor=cursor, kind=kind, since=since, until=until)
        return Call("GET", "/v1/ledger", _page(m.LedgerEntry), query)

    return page


def _usage_rows(body: Any) -> list[m.UsageRow]:
    return list(m.decode_page(m.UsageRow, body).items)


def usage(since: Instant | None, until: Instant | None, group_by: str) -> Call[list[m.UsageRow]]:
    query = _query(since=since, until=until, group_by=group_by)
    return Call("GET", "/v1/usage", _usage_rows, query)


def usage_csv(since: Instant | None, until: Instant | None) -> Call[None]:
    """Read as a stream, not as JSON (the ``read`` is never used)."""
    return Call("GET", "/v1/usage.csv", _nothing, _query(since=since, until=until))


# -- billing ------------------------------------------------------------------------


def _subscribed(body: Any) -> m.Subscription | m.Checkout:
    # Under Stripe billing: 200 {checkout_url}, a page to pay at.
    if isinstance(body, dict) and "checkout_url" in body:
        return m.decode(m.Checkout, body)
    return m.decode(m.Subscription, body)


def _purchased(body: Any) -> m.CreditPurchase | m.Checkout:
    if isinstance(body, dict) and "checkout_url" in body:
        return m.decode(m.Checkout, body)
    return m.decode(m.CreditPurchase, body)


def subscription() -> Call[m.Subscription]:
    return Call("GET", "/v1/subscription", _one(m.Subscription))


def subscribe(plan: str, key: str | None) -> Call[m.Subscription | m.Checkout]:
    return Call("POST", "/v1/subscription", _subscribed, body={"plan": plan}, idempotency_key=key)


def change_plan(plan: str, prorate_at: Instant | None) -> Call[m.Subscription]:
    body: dict[str, Any] = {"plan": plan}
    if prorate_at is not None:
        body["prorate_at"] = _instant(prorate_at)
    return Call("PATCH", "/v1/subscription", _one(m.Subscription), body=body)


def cancel_subscription() -> Call[m.Subscription]:
    return Call("DELETE", "/v1/subscription", _one(m.Subscription))


def pay_subscription(key: str | None) -> Call[m.Subscription]:
    return Call("POST", "/v1/subscription/pay", _one(m.Subscription), idempotency_key=key)


def preview_subscription(plan: str, key: str | None) -> Call[m.SubscriptionPreview]:
    return Call(
        "POST",
        "/v1/subscription/preview",
        _one(m.SubscriptionPreview),
        body={"plan": plan},
        idempotency_key=key,
    )


def buy_credits(pack: str, key: str | None) -> Call[m.CreditPurchase | m.Checkout]:
    return Call(
        "POST", "/v1/credit-purchases", _purchased, body={"pack": pack}, idempotency_key=key
    )


def payments(cursor: str | None, size: int) -> Call[m.Page[m.Payment]]:
    return Call("GET", "/v1/payments", _page(m.Payment), _query(cursor=cursor, limit=size))


def spend_limit(team_id: str | None) -> Call[m.SpendLimit]:
    return Call("GET", "/v1/spend-limit", _one(m.SpendLimit), _query(team_id=team_id))


def set_spend_limit(monthly_credits: int | None, team_id: str | None) -> Call[m.SpendLimit]:
    return Call(
        "PUT",
        "/v1/spend-limit",
        _one(m.SpendLimit),
        _query(team_id=team_id),
        body={"monthly_credits": monthly_credits},
    )


def auto_topup(team_id: str | None) -> Call[m.AutoTopup]:
    return Call("GET", "/v1/auto-topup", _one(m.AutoTopup), _query(team_id=team_id))


def set_auto_topup(
    enabled: bool, threshold: int, pack: str, monthly_cap_cents: int, team_id: str | None
) -> Call[m.AutoTopup]:
    body = {
        "enabled": enabled,
        "threshold": threshold,
        "pack": pack,
        "monthly_cap_cents": monthly_cap_cents,
    }
    return Call("PUT", "/v1/auto-topup", _one(m.AutoTopup), _query(team_id=team_id), body=body)


# -- teams -------------------------------------------------------------------------


def create_team(name: str, key: str | None) -> Call[m.Team]:
    return Call("POST", "/v1/teams", _one(m.Team), body={"name": name}, idempotency_key=key)


def team(team_id: str) -> Call[m.Team]:
    return Call("GET", f"/v1/teams/{_segment(team_id)}", _one(m.Team))


def invite(team_id: str, email: str, key: str | None) -> Call[m.NewInvitation]:
    return Call(
        "POST",
        f"/v1/teams/{_segment(team_id)}/invitations",
        _one(m.NewInvitation),
        body={"email": email},
        idempotency_key=key,
    )


def invitations(team_id: str) -> Call[m.Page[m.Invitation]]:
    return Call("GET", f"/v1/teams/{_segment(team_id)}/invitations", _page(m.Invitation))


def revoke_invitation(team_id: str, invitation_id: str) -> Call[None]:
    path = f"/v1/teams/{_segment(team_id)}/invitations/{_segment(invitation_id)}"
    return Call("DELETE", path, _nothing)


def resend_invitation(team_id: str, invitation_id: str, key: str | None) -> Call[m.NewInvitation]:
    path = f"/v1/teams/{_segment(team_id)}/invitations/{_segment(invitation_id)}/resend"
    return Call("POST", path, _one(m.NewInvitation), idempotency_key=key)


def invitation(token: str) -> Call[m.InvitationPreview]:
    return Call("GET", f"/v1/invitations/{_segment(token)}", _one(m.InvitationPreview))


def decline_invitation(token: str, key: str | None) -> Call[m.InvitationPreview]:
    path = f"/v1/invitations/{_segment(token)}/decline"
    return Call("POST", path, _one(m.InvitationPreview), idempotency_key=key)


def accept_invitation(token: str, key: str | None) -> Call[m.Team]:
    path = f"/v1/invitations/{_segment(token)}/accept"
    return Call("POST", path, _one(m.Team), idempotency_key=key)


def members(team_id: str) -> PageCall[m.TeamMember]:
    def page(cursor: str | None, size: int) -> Call[m.Page[m.TeamMember]]:
        path = f"/v1/teams/{_segment(team_id)}/members"
        return Call("GET", path, _page(m.TeamMember), _query(limit=size, cursor=cursor))

    return page


def remove_member(team_id: str, user_id: str) -> Call[None]:
    path = f"/v1/teams/{_segment(team_id)}/members/{_segment(user_id)}"
    return Call("DELETE", path, _nothing)


def set_member_cap(
    team_id: str, user_id: str, monthly_credit_cap: int | None
) -> Call[m.TeamMember]:
    path = f"/v1/teams/{_segment(team_id)}/members/{_segment(user_id)}"
    body = {"monthly_credit_cap": monthly_credit_cap}
    return Call("PATCH", path, _one(m.TeamMember), body=body)


# -- notifications -------------------------------------------------------------------


def notifications(unread: bool) -> PageCall[m.Notification]:
    def page(cursor: str | None, size: int) -> Call[m.Page[m.Notification]]:
        query = _query(limit=size, cursor=cursor, unread=unread or None)
        return Call("GET", "/v1/notifications", _page(m.Notification), query)

    return page


def mark_notification_read(notification_id: str, key: str | None) -> Call[m.Notification]:
    path = f"/v1/notifications/{_segment(notification_id)}/read"
    return Call("POST", path, _one(m.Notification), idempotency_key=key)


# -- admin -----------------------------------------------------------------------------


def admin_users(q: str | None, status: str | None) -> PageCall[m.AdminUser]:
    def page(cursor: str | None, size: int) -> Call[m.Page[m.AdminUser]]:
        query = _query(q=q, status=status, limit=size, cursor=cursor)
        return Call("GET", "/v1/admin/users", _page(m.AdminUser), query)

    return page


def admin_audit(
    actor: str | None,
    subject: str | None,
    action: str | None,
    since: Instant | None,
    until: Instant | None,
) -> PageCall[m.AuditEntry]:
    def page(cursor: str | None, size: int) -> Call[m.Page[m.AuditEntry]]:
        query = _query(
            actor=actor,
            subject=subject,
            action=action,
            since=since,
            until=until,
            limit=size,
            cursor=cursor,
        )
        return Call("GET", "/v1/admin/audit", _page(m.AuditEntry), query)

    return page


def suspend_user(user_id: str, reason: str, key: str | None) -> Call[m.AdminUser]:
    path = f"/v1/admin/users/{_segment(user_id)}/suspend"
    return Call("POST", path, _one(m.AdminUser), body={"reason": reason}, idempotency_key=key)


def reinstate_user(user_id: str, key: str | None) -> Call[m.AdminUser]:
    path = f"/v1/admin/users/{_segment(user_id)}/reinstate"
    return Call("POST", path, _one(m.AdminUser), idempotency_key=key)


def adjust_credits(
    user_id: str, amount: int, reason: str, expires_at: Instant | None, key: str | None
) -> Call[m.CreditAdjustment]:
    body: dict[str, Any] = {"amount": amount, "reason": reason}
    if expires_at is not None:
        body["expires_at"] = _instant(expires_at)
    path = f"/v1/admin/users/{_segment(user_id)}/credits"
    return Call("POST", path, _one(m.CreditAdjustment), body=body, idempotency_key=key)


def advance_clock(days: int, key: str | None) -> Call[m.ClockAdvance]:
    return Call(
        "POST",
        "/v1/admin/clock/advance",
        _one(m.ClockAdvance),
        body={"days": days},
        idempotency_key=key,
    )


def set_sandbox_card(
    user_id: str, declines: bool, requires_action: bool | None, key: str | None
) -> Call[m.SandboxCard]:
    body: dict[str, Any] = {"declines": declines}
    if requires_action is not None:
        body["requires_action"] = requires_action
    path = f"/v1/admin/users/{_segment(user_id)}/billing/sandbox-card"
    return Call("POST", path, _one(m.SandboxCard), body=body, idempotency_key=key)


# -- events ------------------------------------------------------------------------------


def events() -> Call[None]:
    """Read as a stream of Server-Sent Events (the ``read`` is never used)."""
    return Call("GET", "/v1/events", _nothing)


# -- generations --------------------------------------------------------------------------


def generation_body(
    model: str,
    prompt: str,
    num_outputs: int,
    image_url: str | None,
    upload_id: str | None,
    team_id: str | None,
    params: Mapping[str, Any] | None,
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """The body of a submission and of its quote (unset fields left out, so
    the server's defaults apply)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "num_outputs": num_outputs}
    optional = {
        "image_url": image_url,
        "upload_id": upload_id,
        "team_id": team_id,
        "webhook_url": webhook_url,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if params is not None:
        body["params"] = dict(params)
    return body


def create_generation(body: Mapping[str, Any], key: str | None) -> Call[m.Generation]:
    return Call("POST", "/v1/generations", _one(m.Generation), body=dict(body), idempotency_key=key)


def quote(body: Mapping[str, Any], key: str | None) -> Call[m.Quote]:
    return Call("POST", "/v1/quotes", _one(m.Quote), body=dict(body), idempotency_key=key)


def generation(generation_id: str) -> Call[m.Generation]:
    return Call("GET", f"/v1/generations/{_segment(generation_id)}", _one(m.Generation))


def generations(
    status: str | None, model: str | None, team_id: str | None
) -> PageCall[m.Generation]:
    def page(cursor: str | None, size: int) -> Call[m.Page[m.Generation]]:
        query = _query(status=status, model=model, team_id=team_id, limit=size, cursor=cursor)
        return Call("GET", "/v1/generations", _page(m.Generation), query)

    return page


def cancel_generation(generation_id: str, key: str | None) -> Call[m.Generation]:
    path = f"/v1/generations/{_segment(generation_id)}/cancel"
    return Call("POST", path, _one(m.Generation), idempotency_key=key)


def upload(
    content: bytes, filename: str, content_type: str | None, key: str | None
) -> Call[m.Upload]:
    # Without a declared type the server goes by the bytes alone (it never
    # trusts a declared type, but refuses one that contradicts them).
    declared = content_type or "application/octet-stream"
    return Call(
        "POST",
        "/v1/uploads",
        _one(m.Upload),
        files={"file": (filename, content, declared)},
        idempotency_key=key,
    )


def output_content(output: m.Output | str) -> Call[None]:
    """An output's file: its signed ``url`` (relative ones are resolved against
    the base URL), or by id with our credentials. Read as a stream."""
    if isinstance(output, m.Output):
        return Call("GET", output.url, _nothing)
    return Call("GET", f"/v1/outputs/{_segment(output)}/content", _nothing)

"""Sign-up, login, logout, API keys, ``/v1/me`` and the account's settings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from plasmaart.accounts.credentials import SESSION_LIFETIME, ApiKey, NewSession
from plasmaart.accounts.service import EmailTaken, User
from plasmaart.billing.repository import Subscription
from plasmaart.platform import Platform
from plasmaart.web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CurrentPrincipal,
    Forbidden,
)
from plasmaart.web.deps import PlatformDep
from plasmaart.web.idempotency import SECRET_FIELDS_HEADER

router = APIRouter(prefix="/v1", tags=["accounts"])


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


class StrictBody(BaseModel):
    """Request bodies refuse fields they do not know, and NUL characters
    anywhere (PostgreSQL cannot store them in text, and no field needs one)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class Credentials(StrictBody):
    email: Annotated[str, Field(max_length=320)]
    password: Annotated[str, Field(max_length=1024)]


class UserOut(BaseModel):
    id: str
    email: str
    role: Literal["user", "admin"]
    status: Literal["active", "suspended"]
    created_at: datetime


class UserEnvelope(BaseModel):
    user: UserOut


class ApiKeyIn(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=100)]


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="The secret. Shown only in this response.")


class ApiKeyList(BaseModel):
    data: list[ApiKeyOut]
    next_cursor: str | None = None


class SubscriptionOut(BaseModel):
    plan: str
    status: Literal["none", "active", "past_due", "canceled"]
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool = Field(
        description="The subscription ends at its period end instead of renewing"
    )
    cancel_reason: Literal["requested", "account_suspended"] | None = Field(
        description="Why it ends: you canceled it (`requested`), or the account is "
        "suspended (`account_suspended`: reinstating it before the period end renews it)"
    )
    pending_plan: str | None


class BalanceSummary(BaseModel):
    available: int
    held: int


class TeamRef(BaseModel):
    id: str
    name: str
    role: Literal["owner", "member"]


class MeSettings(BaseModel):
    remove_watermark: bool


class MeOut(BaseModel):
    id: str
    email: str
    role: Literal["user", "admin"]
    status: Literal["active", "suspended"]
    status_reason: str | None = Field(
        description="Why the account is suspended (null while active)"
    )
    support_email: str = Field(description="Where to write about the account or billing")
    plan: str
    subscription: SubscriptionOut
    balance: BalanceSummary
    teams: list[TeamRef]
    settings: MeSettings


class SettingsIn(StrictBody):
    remove_watermark: bool | None = None


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id, email=user.email, role=user.role, status=user.status, created_at=user.created_at
    )


def api_key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


def _set_session_cookies(request: Request, response: Response, session: NewSession) -> None:
    secure = request.url.scheme == "https"
    max_age = int(SESSION_LIFETIME.total_seconds())
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )
    # Readable by the dashboard's scripts, which echo it in X-CSRF-Token.
    response.set_cookie(
        CSRF_COOKIE,
        session.csrf_token,
        max_age=max_age,
        httponly=False,
        samesite="lax",
        secure=secure,
        path="/",
    )


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/auth/signup",
    status_code=201,
    response_model=UserEnvelope,
    responses={409: {"description": "The address is registered (`email_taken`)"}},
)
def signup(
    body: Credentials, request: Request, response: Response, platform: PlatformDep
) -> UserEnvelope:
    """Create an account (on the Free plan) and log in. A registered address
    is refused, and its owner told (at most once a day) that someone tried."""
    try:
        with platform.db.write() as conn:
            user = platform.accounts.create_user(conn, body.email, body.password)
            session = platform.credentials.open_session(conn, user.id)
    except EmailTaken as taken:
        with platform.db.write() as conn:
            platform.accounts.warn_of_signup_attempt(conn, taken.address)
        raise
    _set_session_cookies(request, response, session)
    return UserEnvelope(user=user_out(user))


@router.post(
    "/auth/login",
    response_model=UserEnvelope,
    responses={
        401: {"description": "Wrong e-mail or password"},
        429: {"description": "Too many failed logins"},
    },
)
def login(
    body: Credentials, request: Request, response: Response, platform: PlatformDep
) -> UserEnvelope:
    """Log in with e-mail and password; sets the session cookies."""
    from plasmaart.accounts.service import WrongCredentials, normalise_email

    email, address = normalise_email(body.email), _client_address(request)
    with platform.db.read() as conn:
        platform.credentials.check_login_allowed(conn, email, address)
    try:
        with platform.db.write() as conn:
            # A suspended account logs in too: to a read-only account.
            user = platform.accounts.authenticate(conn, email, body.password)
            platform.credentials.forget_login_failures(conn, email)
            session = platform.credentials.open_session(conn, user.id)
    except WrongCredentials:
        with platform.db.write() as conn:
            platform.credentials.record_login_failure(conn, email, address)
        raise
    _set_session_cookies(request, response, session)
    return UserEnvelope(user=user_out(user))


@router.post("/auth/logout", status_code=204)
def logout(request: Request, principal: CurrentPrincipal, platform: PlatformDep) -> Response:
    """End the session (a bearer request has no session to end)."""
    token = request.cookies.get(SESSION_COOKIE)
    if principal.via == "session" and token:
        with platform.db.write() as conn:
            platform.credentials.close_session(conn, token)
    answer = Response(status_code=204)
    answer.delete_cookie(SESSION_COOKIE, path="/")
    answer.delete_cookie(CSRF_COOKIE, path="/")
    return answer


@router.post("/api-keys", status_code=201, response_model=NewApiKeyOut)
def create_api_key(
    body: ApiKeyIn, response: Response, principal: CurrentPrincipal, platform: PlatformDep
) -> NewApiKeyOut:
    """A new API key; the secret is in ``key`` and never shown again."""
    response.headers[SECRET_FIELDS_HEADER] = "key"
    with platform.db.write() as conn:
        created = platform.credentials.create_api_key(conn, principal.user.id, body.name)
    return NewApiKeyOut(**api_key_out(created.key).model_dump(), key=created.secret)


@router.get("/api-keys", response_model=ApiKeyList)
def list_api_keys(principal: CurrentPrincipal, platform: PlatformDep) -> ApiKeyList:
    """Your keys, newest first (never their secrets)."""
    with platform.db.read() as conn:
        keys = platform.credentials.list_api_keys(conn, principal.user.id)
    return ApiKeyList(data=[api_key_out(key) for key in keys])


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(key_id: str, principal: CurrentPrincipal, platform: PlatformDep) -> ApiKeyOut:
    """Revoke a key at once; requests with it get 401 from now on."""
    with platform.db.write() as conn:
        key = platform.credentials.revoke_api_key(conn, principal.user.id, key_id)
    return api_key_out(key)


def me_out(platform: Platform, user: User) -> MeOut:
    with platform.db.read() as conn:
        wallet = platform.ledger.wallet_of(conn, "user", user.id)
        balance = platform.ledger.balance(conn, wallet)
        subscription = platform.billing.plans.subscription(conn, wallet)
        plan = platform.billing.plans.plan_of(conn, wallet)
        teams = [
            TeamRef(id=m.team.id, name=m.team.name, role=m.role)
            for m in platform.teams.teams_of(conn, user.id)
        ]
    return MeOut(
        id=user.id,
        email=user.email,
        role=user.role,
        status=user.status,
        status_reason=user.status_reason if user.status == "suspended" else None,
        support_email=platform.settings.support_email,
        plan=plan.id,
        subscription=subscription_out(plan.id, subscription),
        balance=BalanceSummary(available=balance.available, held=balance.held),
        teams=teams,
        settings=MeSettings(remove_watermark=user.remove_watermark),
    )


def subscription_out(plan_id: str, subscription: Subscription | None) -> SubscriptionOut:
    if subscription is None:
        return SubscriptionOut(
            plan=plan_id,
            status="none",
            current_period_start=None,
            current_period_end=None,
            cancel_at_period_end=False,
            cancel_reason=None,
            pending_plan=None,
        )
    return SubscriptionOut(
        plan=subscription.plan,
        status=subscription.status,
        current_period_start=subscription.current_period_start,
        current_period_end=subscription.current_period_end,
        cancel_at_period_end=subscription.ends_at_period_end,
        cancel_reason=(
            "requested"
            if subscription.cancel_at_period_end
            else "account_suspended"
            if subscription.stops_for_suspension
            else None
        ),
        pending_plan=subscription.pending_plan,
    )


@router.get("/me", response_model=MeOut)
def me(principal: CurrentPrincipal, platform: PlatformDep) -> MeOut:
    """Who you are: role, status, plan and subscription, balance, teams."""
    return me_out(platform, principal.user)


@router.patch("/me/settings", response_model=MeOut)
def update_settings(body: SettingsIn, principal: CurrentPrincipal, platform: PlatformDep) -> MeOut:
    """Watermark removal: only where the plan allows it (Studio)."""
    user = principal.user
    if body.remove_watermark is not None:
        with platform.db.write() as conn:
            wallet = platform.ledger.wallet_of(conn, "user", user.id)
            plan = platform.billing.plans.plan_of(conn, wallet)
            if body.remove_watermark and not plan.watermark_removable:
                cheapest = next(
                    p for p in platform.catalogs.now(conn).plans_by_price() if p.watermark_removable
                )
                raise Forbidden(
                    f"watermark removal is not part of the {plan.name} plan; "
                    f"{cheapest.name} includes it",
                    required_plan=cheapest.id,
                )
            user = platform.accounts.set_remove_watermark(conn, user, body.remove_watermark)
    return me_out(platform, user)

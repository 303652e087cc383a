"""Sign-up, login, logout, API keys, ``/v1/me`` and the account's settings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt
from sqlalchemy import Connection

from plasmaart.accounts.addresses import SignupAccepted
from plasmaart.accounts.credentials import (
    MAX_KEY_CREDIT_LIMIT,
    SESSION_LIFETIME,
    ApiKey,
    NewSession,
)
from plasmaart.accounts.second_factor import OtpInvalid, OtpRequired
from plasmaart.accounts.service import EmailTaken, User, WrongCredentials
from plasmaart.platform import Platform
from plasmaart.web.auth import CSRF_COOKIE, SESSION_COOKIE, CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.idempotency import SECRET_FIELDS_HEADER
from plasmaart.web.schemas import StrictBody, SubscriptionOut, subscription_out

router = APIRouter(prefix="/v1", tags=["accounts"])


class Credentials(StrictBody):
    email: Annotated[str, Field(max_length=320)]
    password: Annotated[str, Field(max_length=1024)]


class LoginIn(Credentials):
    otp: Annotated[
        str | None,
        Field(
            max_length=64,
            description="With two-factor on: a code of the authenticator app, or a recovery code",
        ),
    ] = None


class UserOut(BaseModel):
    id: str
    email: str
    role: Literal["user", "admin"]
    status: Literal["active", "suspended"]
    created_at: datetime


class UserEnvelope(BaseModel):
    user: UserOut


KeyLimit = Annotated[StrictInt | None, Field(ge=1, le=MAX_KEY_CREDIT_LIMIT)]


class ApiKeyIn(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    daily_credit_limit: KeyLimit = Field(
        default=None, description="Credits the key may spend per UTC day; null: no limit"
    )
    monthly_credit_limit: KeyLimit = Field(
        default=None, description="Credits the key may spend per calendar month; null: no limit"
    )


class ApiKeyLimitsIn(StrictBody):
    daily_credit_limit: KeyLimit = Field(description="Per UTC day; null: no limit")
    monthly_credit_limit: KeyLimit = Field(description="Per calendar month (UTC); null: no limit")


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    daily_credit_limit: int | None
    monthly_credit_limit: int | None
    spent_today: int = Field(description="Credits charged or held today (UTC) with this key")
    spent_this_month: int = Field(description="Credits charged or held this month with this key")


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="The secret. Shown only in this response.")


class ApiKeyList(BaseModel):
    data: list[ApiKeyOut]
    next_cursor: str | None = None


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
    two_factor: bool = Field(description="Whether logging in asks for a TOTP code")
    email_verified: bool = Field(description="Whether the address is proven the owner's")
    pending_email: str | None = Field(
        default=None, description="The address a change waits to make the account's (its link)"
    )


class SettingsIn(StrictBody):
    remove_watermark: bool | None = None


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


class SignupAcceptedOut(BaseModel):
    """Sign-up while address verification is required: the same answer for
    a new address and a registered one (docs/api.md)."""

    email: str
    verification: Literal["sent"]


@router.post(
    "/auth/signup",
    status_code=201,
    response_model=UserEnvelope,
    responses={
        202: {
            "model": SignupAcceptedOut,
            "description": "Verification is required: check the inbox (new or registered address)",
        },
        409: {"description": "The address is registered (`email_taken`)"},
    },
)
def signup(
    body: Credentials, request: Request, response: Response, platform: PlatformDep
) -> UserEnvelope | Response:
    """Create an account (on the Free plan). While address verification is
    required: 202, no session, whether the address is new (its link mailed)
    or registered (its owner told). Otherwise: 201, logged in; a registered
    address is refused, and its owner told (at most once a day)."""
    with platform.db.write() as conn:
        signed_up = platform.addresses.sign_up(
            conn,
            body.email,
            body.password,
            user_agent=request.headers.get("user-agent"),
            address=_client_address(request),
        )
    if isinstance(signed_up, EmailTaken):
        raise signed_up  # after the warning to the address's owner is committed
    if isinstance(signed_up, SignupAccepted):
        accepted = SignupAcceptedOut(email=signed_up.email, verification="sent")
        return JSONResponse(accepted.model_dump(), status_code=202)
    _set_session_cookies(request, response, signed_up.session)
    return UserEnvelope(user=UserOut.model_validate(signed_up.user, from_attributes=True))


@router.post(
    "/auth/login",
    response_model=UserEnvelope,
    responses={
        401: {
            "description": "Wrong e-mail or password (`unauthenticated`); with two-factor "
            "on, no code (`otp_required`) or a wrong or used one (`otp_invalid`)"
        },
        429: {"description": "Too many failed logins"},
    },
)
def login(
    body: LoginIn, request: Request, response: Response, platform: PlatformDep
) -> UserEnvelope:
    """Log in with e-mail and password (and, with two-factor on, `otp`); sets
    the session cookies."""
    address = _client_address(request)
    with platform.db.write() as conn:
        logged_in = platform.accounts.log_in(
            conn,
            body.email,
            body.password,
            address=address,
            otp=body.otp,
            user_agent=request.headers.get("user-agent"),
        )
    if isinstance(logged_in, WrongCredentials | OtpRequired | OtpInvalid):
        raise logged_in  # after the failure is counted
    _set_session_cookies(request, response, logged_in.session)
    return UserEnvelope(user=UserOut.model_validate(logged_in.user, from_attributes=True))


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
        created = platform.credentials.create_api_key(
            conn,
            principal.user.id,
            body.name,
            daily_credit_limit=body.daily_credit_limit,
            monthly_credit_limit=body.monthly_credit_limit,
        )
    return NewApiKeyOut(**_key_out(created.key).model_dump(), key=created.secret)


def _key_out(key: ApiKey, today: int = 0, this_month: int = 0) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        daily_credit_limit=key.daily_credit_limit,
        monthly_credit_limit=key.monthly_credit_limit,
        spent_today=today,
        spent_this_month=this_month,
    )


def _keys_out(platform: Platform, conn: Connection, keys: list[ApiKey]) -> list[ApiKeyOut]:
    """The keys with what each spent today and this month (one statement)."""
    spends = platform.spend_limits.key_spend(conn, [key.id for key in keys])
    return [_key_out(key, spends[key.id].today, spends[key.id].this_month) for key in keys]


@router.get("/api-keys", response_model=ApiKeyList)
def list_api_keys(principal: CurrentPrincipal, platform: PlatformDep) -> ApiKeyList:
    """Your keys, newest first (never their secrets), with their spend limits
    and the credits spent with each today and this month."""
    with platform.db.read() as conn:
        keys = platform.credentials.list_api_keys(conn, principal.user.id)
        return ApiKeyList(data=_keys_out(platform, conn, keys))


@router.patch("/api-keys/{key_id}", response_model=ApiKeyOut)
def set_api_key_limits(
    key_id: str, body: ApiKeyLimitsIn, principal: CurrentPrincipal, platform: PlatformDep
) -> ApiKeyOut:
    """Change a key's daily and monthly credit limits (null: no limit); the
    next request made with the key obeys them."""
    with platform.db.write() as conn:
        key = platform.credentials.set_api_key_limits(
            conn,
            principal.user.id,
            key_id,
            daily_credit_limit=body.daily_credit_limit,
            monthly_credit_limit=body.monthly_credit_limit,
        )
        (found,) = _keys_out(platform, conn, [key])
    return found


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(key_id: str, principal: CurrentPrincipal, platform: PlatformDep) -> ApiKeyOut:
    """Revoke a key at once; requests with it get 401 from now on."""
    with platform.db.write() as conn:
        key = platform.credentials.revoke_api_key(conn, principal.user.id, key_id)
        (found,) = _keys_out(platform, conn, [key])
    return found


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
        pending_email = platform.addresses.pending_email(conn, user.id)
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
        two_factor=user.two_factor,
        email_verified=user.email_verified,
        pending_email=pending_email,
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
            user = platform.accounts.set_remove_watermark(conn, user, body.remove_watermark)
    return me_out(platform, user)

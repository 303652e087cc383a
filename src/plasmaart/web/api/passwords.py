"""Password reset by e-mail, changing the password, and the caller's sessions
with revoke (accounts/password_service.py; docs/accounts.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from plasmaart.accounts.service import SignedIn
from plasmaart.errors import InvalidInput
from plasmaart.platform import Platform
from plasmaart.web.api.accounts import (
    UserEnvelope,
    UserOut,
    _client_address,
    _set_session_cookies,
)
from plasmaart.web.auth import CSRF_COOKIE, SESSION_COOKIE, CurrentPrincipal, Principal
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.pagination import decode_cursor, encode_cursor
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["accounts"])

Password = Annotated[str, Field(max_length=1024)]
OtpCode = Annotated[
    str | None,
    Field(
        default=None,
        max_length=64,
        description="With two-factor on: a code of the authenticator app, or a recovery code",
    ),
]


class ResetRequestIn(StrictBody):
    email: Annotated[str, Field(max_length=320)]


class ResetRequested(BaseModel):
    detail: str


class ResetConfirmIn(StrictBody):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    password: Password
    otp: OtpCode = None


class PasswordChangeIn(StrictBody):
    current_password: Password
    new_password: Password
    otp: OtpCode = None


class PasswordChangedOut(BaseModel):
    user: UserOut
    other_sessions_ended: int = Field(description="How many other sessions were logged out")


class SessionOut(BaseModel):
    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str | None = Field(description="The browser, as it named itself at login")
    address: str | None = Field(description="The client address it logged in from")
    current: bool = Field(description="The session of this request")


class SessionList(BaseModel):
    data: list[SessionOut]
    next_cursor: str | None = None


RESET_ANSWER = (
    "If an account uses this address, a link to reset its password is on its way. "
    "It works once, for 30 minutes."
)


def _user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


def current_session_id(request: Request, platform: Platform, principal: Principal) -> str | None:
    """The public id of the caller's session (None for an API key)."""
    token = request.cookies.get(SESSION_COOKIE)
    if principal.via != "session" or not token:
        return None
    found = platform.principals.of_session(token)
    return None if found is None else found[1].id


@router.post(
    "/auth/password-reset",
    status_code=202,
    response_model=ResetRequested,
    responses={429: {"description": "Too many requests for this address or from this client"}},
)
def request_password_reset(
    body: ResetRequestIn, request: Request, platform: PlatformDep
) -> ResetRequested:
    """Mail a single-use link (30 minutes) to set a new password. The answer
    is the same whether or not an account uses the address."""
    with platform.db.write() as conn:
        platform.passwords.request_reset(conn, body.email, client=_client_address(request))
    return ResetRequested(detail=RESET_ANSWER)


@router.post(
    "/auth/password-reset/confirm",
    response_model=UserEnvelope,
    responses={
        400: {"description": "The link is unknown, used or expired (`invalid_token`)"},
        401: {"description": "Two-factor is on: `otp_required` or `otp_invalid`"},
    },
)
def confirm_password_reset(
    body: ResetConfirmIn, request: Request, response: Response, platform: PlatformDep
) -> UserEnvelope:
    """Set a new password with the link's token: every session of the account
    ends, and this browser is logged in with a new one."""
    with platform.db.write() as conn:
        done = platform.passwords.confirm_reset(
            conn,
            body.token,
            body.password,
            body.otp,
            user_agent=_user_agent(request),
            client=_client_address(request),
        )
    if not isinstance(done, SignedIn):
        raise done  # a refusal, after a wrong code is counted
    _set_session_cookies(request, response, done.session)
    return UserEnvelope(user=UserOut.model_validate(done.user, from_attributes=True))


@router.post(
    "/me/password",
    response_model=PasswordChangedOut,
    responses={
        401: {"description": "Two-factor is on: `otp_required` or `otp_invalid`"},
        403: {"description": "The current password is wrong (`wrong_password`)"},
        429: {"description": "Too many wrong passwords"},
    },
)
def change_password(
    body: PasswordChangeIn, request: Request, principal: CurrentPrincipal, platform: PlatformDep
) -> PasswordChangedOut:
    """A new password, the current one given (and the two-factor code when
    on). Every other session ends; this one stays."""
    token = request.cookies.get(SESSION_COOKIE) if principal.via == "session" else None
    with platform.db.write() as conn:
        done = platform.passwords.change_password(
            conn,
            principal.user,
            body.current_password,
            body.new_password,
            body.otp,
            session_token=token,
            client=_client_address(request),
        )
    if not isinstance(done, int):
        raise done  # after the failure is counted
    return PasswordChangedOut(
        user=UserOut.model_validate(principal.user, from_attributes=True),
        other_sessions_ended=done,
    )


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    created_at, _, session_id = decode_cursor(cursor).partition("|")
    try:
        return datetime.fromisoformat(created_at), session_id
    except ValueError:
        raise InvalidInput("not a cursor this API handed out", field="cursor") from None


@router.get("/sessions", response_model=SessionList)
def list_sessions(
    request: Request, page: PageQuery, principal: CurrentPrincipal, platform: PlatformDep
) -> SessionList:
    """Your live sessions, the most recently opened first; ``current`` marks
    the one of this request."""
    current = current_session_id(request, platform, principal)
    with platform.db.read() as conn:
        found = platform.passwords.sessions(
            conn, principal.user, limit=page.limit, after=_after(page.cursor)
        )
    data = [
        SessionOut(
            id=s.id,
            created_at=s.created_at,
            last_seen_at=s.last_seen_at,
            expires_at=s.expires_at,
            user_agent=s.user_agent,
            address=s.address,
            current=s.id == current,
        )
        for s in found.sessions
    ]
    last = found.sessions[-1] if found.sessions else None
    next_cursor = (
        encode_cursor(f"{last.created_at.isoformat()}|{last.id}")
        if found.more and last is not None
        else None
    )
    return SessionList(data=data, next_cursor=next_cursor)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    responses={404: {"description": "No session of yours has this id"}},
)
def revoke_session(
    session_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: CurrentPrincipal,
    platform: PlatformDep,
) -> Response:
    """Log a session out at once, in every process; revoking your own logs
    you out."""
    current = current_session_id(request, platform, principal)
    with platform.db.write() as conn:
        platform.passwords.revoke_session(conn, principal.user, session_id)
    answer = Response(status_code=204)
    if session_id == current:
        answer.delete_cookie(SESSION_COOKIE, path="/")
        answer.delete_cookie(CSRF_COOKIE, path="/")
    return answer

"""Proving the account's address and changing it: ``POST /v1/auth/verify-email``,
``POST /v1/auth/verify-email/resend`` and ``PATCH /v1/me`` (docs/accounts.md,
"Address verification")."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from plasmaart.accounts.passwords import WrongPassword
from plasmaart.accounts.second_factor import OtpInvalid, OtpRequired
from plasmaart.web.api.accounts import (
    MeOut,
    UserEnvelope,
    UserOut,
    _client_address,
    _set_session_cookies,
    me_out,
)
from plasmaart.web.auth import SESSION_COOKIE, CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["accounts"])


class VerificationSent(BaseModel):
    """A verification link was mailed (or, for ``already_verified``, not needed)."""

    email: str = Field(description="The address the link goes to")
    verification: Literal["sent", "already_verified"]


class TokenIn(StrictBody):
    token: Annotated[str, Field(min_length=1, max_length=200)]


class AddressChangeIn(StrictBody):
    email: Annotated[str, Field(max_length=320, description="The new address")]
    password: Annotated[str, Field(max_length=1024, description="The current password")]
    otp: Annotated[
        str | None,
        Field(max_length=64, description="A two-factor or recovery code, when two-factor is on"),
    ] = None


def accepted(email: str, verification: Literal["sent", "already_verified"]) -> JSONResponse:
    body = VerificationSent(email=email, verification=verification)
    return JSONResponse(body.model_dump(), status_code=202)


@router.post(
    "/auth/verify-email",
    response_model=UserEnvelope,
    responses={
        400: {"description": "The link is unknown, used or expired (`invalid_token`)"},
        409: {"description": "The new address was registered since (`email_taken`)"},
    },
)
def verify_email(
    body: TokenIn, request: Request, response: Response, platform: PlatformDep
) -> UserEnvelope:
    """Use a mailed link: prove the address, or, for a change of address,
    make the new one the account's. A browser without a session is logged in."""
    cookie = request.cookies.get(SESSION_COOKIE)
    signed_in = cookie is not None and platform.principals.of_session(cookie) is not None
    with platform.db.write() as conn:
        verified = platform.addresses.verify(
            conn,
            body.token,
            open_session=not signed_in,
            user_agent=request.headers.get("user-agent"),
            address=_client_address(request),
        )
    if verified.session is not None:
        _set_session_cookies(request, response, verified.session)
    return UserEnvelope(user=UserOut.model_validate(verified.user, from_attributes=True))


@router.post(
    "/auth/verify-email/resend",
    status_code=202,
    response_model=VerificationSent,
    responses={429: {"description": "Too many in the last hour (`rate_limited`)"}},
)
def resend_verification(principal: CurrentPrincipal, platform: PlatformDep) -> VerificationSent:
    """Mail a new link to the account's address (the older ones stop working).
    An address proven already: ``already_verified``, nothing sent."""
    with platform.db.write() as conn:
        sent = platform.addresses.resend(conn, principal.user)
    return VerificationSent(
        email=principal.user.email, verification="sent" if sent else "already_verified"
    )


@router.patch(
    "/me",
    status_code=202,
    response_model=MeOut,
    responses={
        401: {"description": "Two-factor is on: `otp_required` or `otp_invalid`"},
        403: {"description": "The current password is wrong (`wrong_password`)"},
        429: {"description": "Too many requests to change the address (`rate_limited`)"},
    },
)
def change_email(
    body: AddressChangeIn, principal: CurrentPrincipal, platform: PlatformDep
) -> MeOut:
    """Ask to change the address: a link goes to the new one, which takes
    effect once the link is used; the current address is told. Needs the
    current password, and a two-factor code when two-factor is on."""
    with platform.db.write() as conn:
        pending = platform.addresses.request_change(
            conn, principal.user, body.email, password=body.password, otp=body.otp
        )
    if isinstance(pending, WrongPassword | OtpRequired | OtpInvalid):
        raise pending  # after the failure is counted
    return me_out(platform, principal.user)

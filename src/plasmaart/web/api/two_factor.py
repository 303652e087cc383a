"""Two-factor authentication (TOTP) of the caller's own account: turn it on
(a secret shown as a QR code, then a code to confirm it, then the recovery
codes, shown once), turn it off, make new recovery codes.

These routes change how the account logs in, so they need a login session:
an API key cannot use them (403 ``forbidden``), so that a leaked key cannot
turn two-factor on and lock the owner out. Turning it off and making new
recovery codes also need a current code (or a recovery code). The rules are
``accounts/second_factor.py``'s; a wrong code is counted before it is
refused (it is returned by the service and raised here after the commit).
"""

from __future__ import annotations

from typing import Annotated, Any

import segno
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from plasmaart.accounts.second_factor import Enrollment, OtpInvalid, OtpRequired, TwoFactorStatus
from plasmaart.errors import Forbidden
from plasmaart.web.auth import CurrentPrincipal, Principal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.idempotency import SECRET_FIELDS_HEADER
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1/me/2fa", tags=["accounts"])


def session_principal(principal: CurrentPrincipal) -> Principal:
    if principal.via != "session":
        raise Forbidden(
            "two-factor is managed from a login session (the dashboard's Settings), "
            "not with an API key"
        )
    return principal


SessionPrincipal = Annotated[Principal, Depends(session_principal)]

_CODE_HELP = "A 6-digit code of the authenticator app, or one of the recovery codes"


class CodeIn(StrictBody):
    code: Annotated[str, Field(min_length=1, max_length=64, description=_CODE_HELP)]


class TwoFactorOut(BaseModel):
    enabled: bool
    recovery_codes_left: int = Field(description="Unused recovery codes (0 while off)")
    pending: bool = Field(description="A secret was made and waits for its first code")


class EnrollmentOut(BaseModel):
    secret: str = Field(description="The base32 secret, to type into the app by hand")
    otpauth_url: str = Field(description="The `otpauth://` URL the QR code holds")
    qr_code: str = Field(description="The QR code of `otpauth_url`, an SVG `data:` URL")


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(
        description="Each logs in once in place of a code. Shown only in this response."
    )


def _status_out(status: TwoFactorStatus) -> TwoFactorOut:
    return TwoFactorOut(
        enabled=status.enabled,
        recovery_codes_left=status.recovery_codes_left,
        pending=status.pending,
    )


def qr_code(enrollment: Enrollment) -> str:
    """The QR code of the enrolment's URL, as an SVG data URL an ``<img>``
    shows (the dashboard's CSP allows ``data:`` images, not inline SVG styles)."""
    code = segno.make(enrollment.otpauth_url, error="m")
    return code.svg_data_uri(scale=5, border=4, dark="#111111", light="#ffffff")


_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "A wrong or used code (`otp_invalid`), or none (`otp_required`)"},
    409: {"description": "Two-factor is not in that state (`two_factor_state`)"},
    429: {"description": "Too many wrong codes (`rate_limited`, with `Retry-After`)"},
}


@router.get("", response_model=TwoFactorOut)
def two_factor_status(principal: CurrentPrincipal, platform: PlatformDep) -> TwoFactorOut:
    """Whether two-factor is on, and how many recovery codes are left."""
    with platform.db.read() as conn:
        return _status_out(platform.second_factor.status(conn, principal.user))


@router.post(
    "",
    response_model=EnrollmentOut,
    responses={409: _REFUSALS[409]},
)
def begin_two_factor(
    response: Response, principal: SessionPrincipal, platform: PlatformDep
) -> EnrollmentOut:
    """A new secret for the authenticator app (scan `qr_code`, or type
    `secret`); two-factor is on once `POST /v1/me/2fa/confirm` gets a code."""
    response.headers[SECRET_FIELDS_HEADER] = "secret,otpauth_url,qr_code"
    with platform.db.write() as conn:
        enrollment = platform.second_factor.begin(conn, principal.user)
    return EnrollmentOut(
        secret=enrollment.secret, otpauth_url=enrollment.otpauth_url, qr_code=qr_code(enrollment)
    )


@router.post("/confirm", response_model=RecoveryCodesOut, responses=_REFUSALS)
def confirm_two_factor(
    body: CodeIn, response: Response, principal: SessionPrincipal, platform: PlatformDep
) -> RecoveryCodesOut:
    """Turn two-factor on with a code of the new secret; the answer holds the
    recovery codes, shown only here."""
    response.headers[SECRET_FIELDS_HEADER] = "recovery_codes"
    with platform.db.write() as conn:
        enabled = platform.second_factor.enable(conn, principal.user, body.code)
    if isinstance(enabled, OtpInvalid):
        raise enabled  # after the wrong code is counted
    return RecoveryCodesOut(recovery_codes=enabled)


@router.delete("", response_model=TwoFactorOut, responses=_REFUSALS)
def disable_two_factor(
    body: CodeIn, principal: SessionPrincipal, platform: PlatformDep
) -> TwoFactorOut:
    """Turn two-factor off, with a current code or a recovery code."""
    with platform.db.write() as conn:
        refusal = platform.second_factor.disable(conn, principal.user, body.code)
    if refusal is not None:
        raise refusal  # after the wrong code is counted
    return TwoFactorOut(enabled=False, recovery_codes_left=0, pending=False)


@router.post("/recovery-codes", response_model=RecoveryCodesOut, responses=_REFUSALS)
def regenerate_recovery_codes(
    body: CodeIn, response: Response, principal: SessionPrincipal, platform: PlatformDep
) -> RecoveryCodesOut:
    """New recovery codes (the old ones stop working), with a current code or
    a recovery code; shown only here."""
    response.headers[SECRET_FIELDS_HEADER] = "recovery_codes"
    with platform.db.write() as conn:
        codes = platform.second_factor.regenerate_recovery_codes(conn, principal.user, body.code)
    if isinstance(codes, OtpRequired | OtpInvalid):
        raise codes  # after the wrong code is counted
    return RecoveryCodesOut(recovery_codes=codes)

"""Leaving: ``GET /v1/me/export`` (the account's data, a zip) and
``DELETE /v1/me`` (the account deleted). Only ever the caller's own account:
there is no user id in either path."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from typing import IO, Annotated

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from plasmaart.leaving.deletion import Deleted
from plasmaart.leaving.export import export_filename
from plasmaart.web.auth import CSRF_COOKIE, SESSION_COOKIE, CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["accounts"])
log = logging.getLogger(__name__)

# Exports per user and hour: each reads the whole account and its files.
EXPORTS_PER_HOUR = 5
# Files of the zip sent a chunk at a time.
CHUNK = 256 * 1024


class DeleteAccountIn(StrictBody):
    password: Annotated[str, Field(max_length=1024)]
    otp: Annotated[str | None, Field(max_length=64)] = Field(
        default=None, description="The two-factor code (or a recovery code) when 2FA is on"
    )


class DeletedOut(BaseModel):
    deleted: bool = True
    id: str
    forfeited_credits: int = Field(description="Credits left in the wallet, forfeited")
    generations_canceled: int
    subscription_ended: bool
    team_dissolved: str | None = Field(description="The id of the team the account owned")


def _chunks(file: IO[bytes]) -> Iterator[bytes]:
    try:
        file.seek(0)
        while chunk := file.read(CHUNK):
            yield chunk
    finally:
        file.close()


@router.get(
    "/me/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "The account's data: JSON and CSV files, a README, the files",
        },
        429: {"description": "More than 5 exports in an hour (`rate_limited`)"},
    },
)
def export_account(principal: CurrentPrincipal, platform: PlatformDep) -> StreamingResponse:
    """A zip of your account's data: profile, ledger, generations (with their
    files or links to them), payments, teams, API keys (never the secrets),
    sessions and notifications, each as JSON and CSV, with a README.
    Suspended accounts may export too. At most 5 an hour."""
    user = principal.user
    with platform.db.write() as conn:
        platform.throttle.take(
            conn,
            "account.export",
            ((user.id, EXPORTS_PER_HOUR),),
            window=timedelta(hours=1),
            what="exports (at most 5 an hour)",
        )
    # Written to a temporary file on disk, then streamed: bounded memory.
    target = tempfile.TemporaryFile(prefix="plasmaart-export-")  # noqa: SIM115 - closed by _chunks
    try:
        platform.account_export.write(platform.db, user, target)
    except BaseException:
        target.close()
        raise
    filename = export_filename(user.id, platform.clock.now())
    return StreamingResponse(
        _chunks(target),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


@router.delete(
    "/me",
    response_model=DeletedOut,
    responses={
        401: {"description": "Two-factor code missing or wrong (`otp_required`, `otp_invalid`)"},
        403: {"description": "Wrong password (`wrong_password`): nothing was deleted"},
        503: {
            "description": "The billing provider could not cancel the subscription "
            "(`unavailable`): nothing was deleted"
        },
    },
)
def delete_account(
    body: DeleteAccountIn, principal: CurrentPrincipal, platform: PlatformDep
) -> Response:
    """Delete your account, confirmed with your password (and your two-factor
    code when it is on): the subscription ends now, unfinished generations
    are canceled, a team you own is dissolved, sessions and API keys stop
    working, credits left are forfeited and personal data is erased. The
    journal of your credits and your payments stay, anonymized
    (docs/accounts.md). A goodbye mail goes to your address."""
    with platform.db.write() as conn:
        deleted = platform.account_deletion.delete(conn, principal.user, body.password, body.otp)
    if not isinstance(deleted, Deleted):
        raise deleted  # after the wrong code is counted
    try:
        platform.account_deletion.remove_files(platform.db, deleted.user_id)
    except Exception:  # the account is deleted: the worker's sweep removes the rest
        log.exception("could not remove the files of deleted account %s yet", deleted.user_id)
    answer = DeletedOut(
        id=deleted.user_id,
        forfeited_credits=deleted.forfeited,
        generations_canceled=deleted.generations_canceled,
        subscription_ended=deleted.subscription_ended,
        team_dissolved=deleted.team_dissolved,
    )
    response = Response(answer.model_dump_json(), media_type="application/json")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response

"""Studio teams: create, invite, accept, list, remove and cap members.

Non-members get 404 for everything under a team; members who are not the
owner get 403 ``forbidden`` on what only the owner may do.

An invitation is mailed to its address with a link to the dashboard's
``/invitations?token=...`` page; the token also opens ``GET
/v1/invitations/{token}`` (what the page shows) and
``POST /v1/invitations/{token}/decline`` without an account.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, StrictInt

from plasmaart.errors import InvalidInput
from plasmaart.teams.service import (
    MAX_MONTHLY_CREDIT_CAP,
    TEAM_NAME_MAX,
    InvitationStatus,
    InvitationView,
    Member,
    NewInvitation,
    invitation_status,
)
from plasmaart.web.auth import CurrentPrincipal, OptionalPrincipal
from plasmaart.web.deps import CursorQuery, LimitQuery, PlatformDep
from plasmaart.web.idempotency import SECRET_FIELDS_HEADER
from plasmaart.web.pagination import DEFAULT_LIMIT, Page, decode_cursor, encode_cursor
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["teams"])

_OWNER_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "A member who is not the owner"},
    404: {"description": "No such team, or you are not a member"},
}


class TeamIn(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=TEAM_NAME_MAX)]


class InvitationIn(StrictBody):
    email: Annotated[str, Field(max_length=320)]


class MemberCapIn(StrictBody):
    monthly_credit_cap: Annotated[StrictInt | None, Field(ge=0, le=MAX_MONTHLY_CREDIT_CAP)] = Field(
        description="Credits the member may spend per month; null for no cap"
    )


class SeatsOut(BaseModel):
    used: int = Field(description="Members plus pending invitations")
    pending: int = Field(description="Pending invitations, each holding a seat")
    total: int = Field(description="Seats of the owner's current plan")


class TeamOut(BaseModel):
    id: str
    name: str
    owner_id: str
    created_at: datetime
    seats: SeatsOut


class InvitationOut(BaseModel):
    id: str
    team_id: str
    email: str
    created_at: datetime
    expires_at: datetime
    status: InvitationStatus = Field(
        default="pending",
        description="pending (sent, not answered yet), accepted, declined, revoked or expired",
    )
    accepted_at: datetime | None = None
    declined_at: datetime | None = None
    revoked_at: datetime | None = None


class NewInvitationOut(InvitationOut):
    token: str = Field(description="The secret to accept with. Shown only in this response.")
    url: str = Field(
        description="The link mailed to the address (it carries the token). Shown only here."
    )


class InvitationPreviewOut(BaseModel):
    """What the holder of an invitation's token sees of it."""

    id: str
    team_id: str
    team_name: str
    inviter_email: str
    email: str = Field(description="The address invited: only it may accept")
    status: InvitationStatus
    expires_at: datetime
    viewer_is_member: bool = Field(
        description="Whether the signed-in caller already belongs to the team"
    )


class MemberOut(BaseModel):
    user_id: str
    email: str
    role: Literal["owner", "member"]
    monthly_credit_cap: int | None
    joined_at: datetime


class InvitationList(BaseModel):
    data: list[InvitationOut]
    next_cursor: str | None = None


def _invitation_out(invitation: Any, now: datetime) -> InvitationOut:
    return InvitationOut(
        **InvitationOut.model_validate(invitation, from_attributes=True).model_dump(
            exclude={"status"}
        ),
        status=invitation_status(invitation, now),
    )


def _new_invitation_out(created: NewInvitation, now: datetime) -> NewInvitationOut:
    return NewInvitationOut(
        **_invitation_out(created.invitation, now).model_dump(),
        token=created.token,
        url=created.url,
    )


def _preview(found: InvitationView) -> InvitationPreviewOut:
    return InvitationPreviewOut(
        id=found.invitation.id,
        team_id=found.team_id,
        team_name=found.team_name,
        inviter_email=found.inviter_email,
        email=found.invitation.email,
        status=found.status,
        expires_at=found.invitation.expires_at,
        viewer_is_member=found.viewer_is_member,
    )


_BAD_TOKEN: dict[int | str, dict[str, Any]] = {
    400: {"description": "`invalid_token`: unknown, used, expired, declined or revoked"},
}


def _member_cursor(member: Member) -> str:
    return encode_cursor(f"{member.joined_at.isoformat()}|{member.user_id}")


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    joined_at, _, user_id = decode_cursor(cursor).partition("|")
    try:
        when = datetime.fromisoformat(joined_at)
    except ValueError:
        raise InvalidInput("not a cursor this API handed out", field="cursor") from None
    if when.tzinfo is None or not user_id:
        raise InvalidInput("not a cursor this API handed out", field="cursor")
    return when, user_id


@router.post(
    "/teams",
    status_code=201,
    response_model=TeamOut,
    responses={
        403: {"description": "The plan has no team seats (`required_plan` says which has)"},
        409: {"description": "`already_owns_team`: one team per owner"},
    },
)
def create_team(body: TeamIn, principal: CurrentPrincipal, platform: PlatformDep) -> TeamOut:
    """A team sharing your wallet; you are its owner. Plans with team seats only."""
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, principal.user, body.name)
    return TeamOut.model_validate(team, from_attributes=True)


@router.get(
    "/teams/{team_id}",
    response_model=TeamOut,
    responses={404: {"description": "No such team, or you are not a member"}},
)
def get_team(team_id: str, principal: CurrentPrincipal, platform: PlatformDep) -> TeamOut:
    """One of your teams, with its seats."""
    with platform.db.read() as conn:
        team = platform.teams.team_for_member(conn, team_id, principal.user.id)
    return TeamOut.model_validate(team, from_attributes=True)


@router.post(
    "/teams/{team_id}/invitations",
    status_code=201,
    response_model=NewInvitationOut,
    responses={
        **_OWNER_ONLY,
        409: {"description": "`seats_exhausted`, `already_member` or `already_invited`"},
    },
)
def invite(
    team_id: str,
    body: InvitationIn,
    response: Response,
    principal: CurrentPrincipal,
    platform: PlatformDep,
) -> NewInvitationOut:
    """Invite an e-mail address (owner only) and mail it the invitation. The
    invitation holds a seat until it is accepted, declined, revoked or expires
    (7 days); its ``token`` (and the mailed ``url``) are shown only here."""
    response.headers[SECRET_FIELDS_HEADER] = "token,url"
    with platform.db.write() as conn:
        created = platform.teams.invite(conn, team_id, principal.user.id, body.email)
    return _new_invitation_out(created, platform.clock.now())


@router.post(
    "/teams/{team_id}/invitations/{invitation_id}/resend",
    response_model=NewInvitationOut,
    responses={**_OWNER_ONLY, 429: {"description": "`rate_limited`: too many invitation e-mails"}},
)
def resend_invitation(
    team_id: str,
    invitation_id: str,
    response: Response,
    principal: CurrentPrincipal,
    platform: PlatformDep,
) -> NewInvitationOut:
    """Mail a pending invitation again (owner only), with a new token and 7
    more days; the link of the earlier mail stops working."""
    response.headers[SECRET_FIELDS_HEADER] = "token,url"
    with platform.db.write() as conn:
        created = platform.teams.resend_invitation(conn, team_id, principal.user.id, invitation_id)
    return _new_invitation_out(created, platform.clock.now())


@router.get("/teams/{team_id}/invitations", response_model=InvitationList, responses=_OWNER_ONLY)
def list_invitations(
    team_id: str,
    principal: CurrentPrincipal,
    platform: PlatformDep,
    status: Annotated[
        Literal["pending", "all"],
        Query(description="`all` adds those answered, revoked or expired in the last 30 days"),
    ] = "pending",
) -> InvitationList:
    """Pending invitations, oldest first; with ``status=all``, also those that
    ended in the last 30 days, newest first (owner only; never their tokens)."""
    with platform.db.read() as conn:
        if status == "all":
            found = platform.teams.recent_invitations(conn, team_id, principal.user.id)
        else:
            found = platform.teams.pending_invitations(conn, team_id, principal.user.id)
    now = platform.clock.now()
    return InvitationList(data=[_invitation_out(invitation, now) for invitation in found])


@router.delete(
    "/teams/{team_id}/invitations/{invitation_id}", status_code=204, responses=_OWNER_ONLY
)
def revoke_invitation(
    team_id: str, invitation_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> Response:
    """Withdraw a pending invitation (owner only); its seat is free at once."""
    with platform.db.write() as conn:
        platform.teams.revoke_invitation(conn, team_id, principal.user.id, invitation_id)
    return Response(status_code=204)


@router.get(
    "/invitations/{token}",
    response_model=InvitationPreviewOut,
    responses={400: {"description": "`invalid_token`: no invitation has this token"}},
)
def show_invitation(
    token: str, principal: OptionalPrincipal, platform: PlatformDep
) -> InvitationPreviewOut:
    """The invitation this token opens, whatever its status: the team, who
    invited, the address invited. No account needed: the token is the proof."""
    with platform.db.read() as conn:
        found = platform.teams.invitation_by_token(
            conn, token, None if principal is None else principal.user
        )
    return _preview(found)


@router.post(
    "/invitations/{token}/accept",
    response_model=TeamOut,
    responses={
        **_BAD_TOKEN,
        403: {
            "description": "`invitation_for_another_address` (sign in with the invited "
            "address) or `email_not_verified`"
        },
        409: {"description": "`seats_exhausted` or `already_member`"},
    },
)
def accept_invitation(token: str, principal: CurrentPrincipal, platform: PlatformDep) -> TeamOut:
    """Join the team; the invitation must be addressed to your e-mail."""
    with platform.db.write() as conn:
        team = platform.teams.accept_invitation(conn, token, principal.user)
    return TeamOut.model_validate(team, from_attributes=True)


@router.post(
    "/invitations/{token}/decline",
    response_model=InvitationPreviewOut,
    responses=_BAD_TOKEN,
)
def decline_invitation(token: str, platform: PlatformDep) -> InvitationPreviewOut:
    """Decline a pending invitation: its seat is free again and the team's
    owner is told. No account needed: the token is the proof."""
    with platform.db.write() as conn:
        found = platform.teams.decline_invitation(conn, token)
    return _preview(found)


@router.get(
    "/teams/{team_id}/members",
    response_model=Page[MemberOut],
    responses={404: {"description": "No such team, or you are not a member"}},
)
def list_members(
    team_id: str,
    principal: CurrentPrincipal,
    platform: PlatformDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[MemberOut]:
    """The team's members in the order they joined, the owner first."""
    with platform.db.read() as conn:
        members = platform.teams.members(
            conn, team_id, principal.user.id, limit=limit + 1, after=_after(cursor)
        )
    more = len(members) > limit
    members = members[:limit]
    return Page[MemberOut](
        data=[MemberOut.model_validate(member, from_attributes=True) for member in members],
        next_cursor=_member_cursor(members[-1]) if more else None,
    )


@router.delete(
    "/teams/{team_id}/members/{user_id}",
    status_code=204,
    responses={
        **_OWNER_ONLY,
        409: {"description": "`owner_not_removable`"},
    },
)
def remove_member(
    team_id: str, user_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> Response:
    """The owner removes a member, or a member leaves (their own user id)."""
    with platform.db.write() as conn:
        platform.teams.remove_member(conn, team_id, principal.user.id, user_id)
    return Response(status_code=204)


@router.patch("/teams/{team_id}/members/{user_id}", response_model=MemberOut, responses=_OWNER_ONLY)
def set_member_cap(
    team_id: str,
    user_id: str,
    body: MemberCapIn,
    principal: CurrentPrincipal,
    platform: PlatformDep,
) -> MemberOut:
    """Set or clear (null) a member's monthly credit cap (owner only)."""
    with platform.db.write() as conn:
        member = platform.teams.set_member_cap(
            conn, team_id, principal.user.id, user_id, body.monthly_credit_cap
        )
    return MemberOut.model_validate(member, from_attributes=True)

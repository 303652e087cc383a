"""The teams' refusals, each with a stable code."""

from __future__ import annotations

from plasmaart.errors import Conflict, Forbidden, NotFound


class TeamNotFound(NotFound):
    """Also what non-members get: a team's existence is nobody else's business."""


class InvitationNotFound(NotFound):
    """The owner names an invitation the team has no pending one of."""


class InvitationForAnotherAddress(Forbidden):
    """A signed-in account whose address is not the one invited: it must sign
    in (or up) with the invited address. Nothing else about the invitation
    is said."""

    code = "invitation_for_another_address"
    title = "This invitation is for another address"


class MemberNotFound(NotFound):
    """The user is not (or no longer) a member of the team."""


class AlreadyOwnsTeam(Conflict):
    """One team per owner: a second ``create_team`` is refused."""

    code = "already_owns_team"
    title = "Already owns a team"


class SeatsExhausted(Conflict):
    """Members and pending invitations fill every seat of the owner's plan."""

    code = "seats_exhausted"
    title = "No seat left"


class AlreadyMember(Conflict):
    """An invitation for, or acceptance by, someone already in the team."""

    code = "already_member"
    title = "Already a member"


class AlreadyInvited(Conflict):
    """The address has a pending invitation to the team already."""

    code = "already_invited"
    title = "Already invited"


class OwnerNotRemovable(Conflict):
    """Nobody removes a team's owner, not even the owner."""

    code = "owner_not_removable"
    title = "The owner cannot be removed"

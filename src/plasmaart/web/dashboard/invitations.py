"""The rows of the Team page's list of the invitations a team sent, each with
its status (the page an invitation's mail links to is ``invitation_pages``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from plasmaart.platform import Platform
from plasmaart.teams.service import Invitation, InvitationStatus, invitation_status

# The Team page's words for each status.
STATUS_LABELS: dict[InvitationStatus, str] = {
    "pending": "Sent",
    "accepted": "Accepted",
    "declined": "Declined",
    "revoked": "Revoked",
    "expired": "Expired",
}


@dataclass(frozen=True)
class InvitationRow:
    """One invitation on the Team page; ``latest`` when no newer invitation
    went to the same address (only then is "Invite again" offered)."""

    invitation: Invitation
    status: InvitationStatus
    latest: bool

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]


def invitation_rows(
    conn: Connection, platform: Platform, team_id: str, owner_id: str
) -> list[InvitationRow]:
    """The team's pending invitations and those that ended in the last 30
    days, newest first, each with its status."""
    now = platform.clock.now()
    seen: set[str] = set()
    rows = []
    for invitation in platform.teams.recent_invitations(conn, team_id, owner_id):
        rows.append(
            InvitationRow(
                invitation, invitation_status(invitation, now), invitation.email not in seen
            )
        )
        seen.add(invitation.email)
    return rows

"""What teams tell people, as facts for the notification outbox
(``plasmaart.outbox``); the words are ``notify.letters.invitations``'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class InvitationLetter:
    """The mail inviting an address to a team. ``url`` carries the secret
    token, so the message is sensitive (its body is blanked once sent)."""

    kind: ClassVar[str] = "team.invitation"
    invitation_id: str
    team_id: str
    team_name: str
    inviter_email: str
    email: str
    expires_at: datetime
    url: str
    resent: bool = False

    def data(self) -> dict[str, Any]:
        return {"invitation_id": self.invitation_id, "team_id": self.team_id}


@dataclass(frozen=True)
class InvitationAnswered:
    """The owner's notice: the invited address accepted or declined."""

    kind: ClassVar[str] = "team.invitation_answered"
    invitation_id: str
    team_id: str
    team_name: str
    email: str
    accepted: bool

    def data(self) -> dict[str, Any]:
        return {
            "invitation_id": self.invitation_id,
            "team_id": self.team_id,
            "email": self.email,
            "answer": "accepted" if self.accepted else "declined",
        }

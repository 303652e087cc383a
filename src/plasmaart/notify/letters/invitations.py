"""The words of team invitations: the letter to the invited address, and the
owner's notice when the invitation is accepted or declined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.outbox import Text
from plasmaart.teams.notices import InvitationAnswered, InvitationLetter


def invitation(fact: InvitationLetter) -> Text:
    again = " (sent again: the link in any earlier invitation no longer works)"
    return Text(
        f"{fact.inviter_email} invited you to the team {fact.team_name} on PlasmaArt",
        f"{fact.inviter_email} invited {fact.email} to join the team "
        f"\u201c{fact.team_name}\u201d on PlasmaArt{again if fact.resent else ''}.\n\n"
        "What joining means: generations you make for the team spend the "
        "team owner's credits, not yours, and the owner may set a monthly cap "
        "on what each member spends. Your own account, credits and plan stay "
        "as they are, and you can leave the team at any time from its Team page.\n\n"
        f"The invitation is valid until {fact.expires_at:%Y-%m-%d %H:%M} UTC. "
        "Open this link to accept or decline it:\n"
        f"{fact.url}\n\n"
        f"To accept, sign in (or sign up) with {fact.email}, the address this "
        "invitation was sent to. To decline, no account is needed. If you "
        "did not expect this invitation, you can ignore this message; it "
        "expires on its own.",
    )


def invitation_answered(fact: InvitationAnswered) -> Text:
    if fact.accepted:
        return Text(
            f"{fact.email} joined {fact.team_name}",
            f"{fact.email} accepted your invitation and is now a member of "
            f"\u201c{fact.team_name}\u201d. Their generations for the team spend "
            "your credits; you can set a monthly cap for them on the Team page.",
        )
    return Text(
        f"{fact.email} declined your invitation to {fact.team_name}",
        f"{fact.email} declined your invitation to \u201c{fact.team_name}\u201d. "
        "The seat it held is free again; you can invite someone else from the Team page.",
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    InvitationLetter: invitation,
    InvitationAnswered: invitation_answered,
}

"""The Credits page's spend limits section (``credits_limits.html``): the
wallet's monthly limit, each live API key's daily and monthly limits, and,
beside them, the team members' caps as the teams' owners set them
(changed on the Team page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from plasmaart.accounts.credentials import ApiKey
from plasmaart.controls.limits import KeySpend
from plasmaart.platform import Platform
from plasmaart.teams.repository import Member
from plasmaart.web.dashboard.views import Frame

# Members listed per team (a Studio team has a handful of seats).
MEMBERS_SHOWN = 100


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    spend: KeySpend


@dataclass(frozen=True)
class CapRow:
    member: Member
    spent: int  # this month, in the team


@dataclass(frozen=True)
class TeamCaps:
    """One of the user's teams: as its owner, every member's cap; as a
    member, one's own."""

    team_id: str
    name: str
    owner: bool
    rows: tuple[CapRow, ...]


def limits(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    user_id = page.user.id
    spend_limits = platform.spend_limits
    keys = [k for k in platform.credentials.list_api_keys(conn, user_id) if k.revoked_at is None]
    spends = spend_limits.key_spend(conn, [k.id for k in keys])
    teams: list[TeamCaps] = []
    for membership in platform.teams.teams_of(conn, user_id):
        team = membership.team
        owner = membership.role == "owner"
        members = platform.teams.members(conn, team.id, user_id, limit=MEMBERS_SHOWN)
        shown = (
            [m for m in members if m.role != "owner"]
            if owner
            else [m for m in members if m.user_id == user_id]
        )
        rows = tuple(CapRow(m, spend_limits.member_spend(conn, team.id, m.user_id)) for m in shown)
        teams.append(TeamCaps(team.id, team.name, owner, rows))
    return {
        "spend_limit": spend_limits.wallet_limit(conn, page.wallet_id),
        "limit_keys": [KeyRow(k, spends[k.id]) for k in keys],
        "team_caps": teams,
    }

"""Teams' SQL: teams, their members and their invitations. Rows come back as
the frozen records below.

An invitation is pending while nobody accepted, declined or revoked it and it
has not expired (``pending``, the SQL twin of ``service.invitation_is_pending``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Select, and_, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from plasmaart.accounts.repository import AnyRow
from plasmaart.clock import as_utc
from plasmaart.db.tables import invitations, team_members, teams, users

Role = Literal["owner", "member"]


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    owner_id: str
    wallet_id: str
    created_at: datetime


@dataclass(frozen=True)
class Member:
    team_id: str
    user_id: str
    email: str
    role: Role
    monthly_credit_cap: int | None
    joined_at: datetime


@dataclass(frozen=True)
class Membership:
    """One of a user's teams and the user's role in it."""

    team: Team
    role: Role


@dataclass(frozen=True)
class Invitation:
    id: str
    team_id: str
    email: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None = None
    revoked_at: datetime | None = None
    declined_at: datetime | None = None
    invited_by: str | None = None


@dataclass(frozen=True)
class InvitationDetails:
    """An invitation with what its page shows: the team and who invited."""

    invitation: Invitation
    team_name: str
    owner_id: str
    inviter_email: str


# -- teams ---------------------------------------------------------------


def insert_team(conn: Connection, team: Team) -> None:
    """The team, with its owner as its first member."""
    conn.execute(
        insert(teams).values(
            id=team.id,
            name=team.name,
            owner_id=team.owner_id,
            wallet_id=team.wallet_id,
            created_at=team.created_at,
        )
    )
    insert_member(conn, team.id, team.owner_id, "owner", team.created_at)


def count_teams_owned(conn: Connection, owner_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(teams).where(teams.c.owner_id == owner_id)
        ).scalar_one()
    )


def team_wallet(conn: Connection, team_id: str) -> str | None:
    wallet_id = conn.execute(
        select(teams.c.wallet_id).where(teams.c.id == team_id)
    ).scalar_one_or_none()
    return None if wallet_id is None else str(wallet_id)


def lock_team(conn: Connection, team_id: str) -> Team | None:
    """The team, its row locked (PostgreSQL; SQLite's writers are serial)."""
    row = conn.execute(select(teams).where(teams.c.id == team_id).with_for_update()).one_or_none()
    return None if row is None else _team(row)


def membership(conn: Connection, team_id: str, user_id: str) -> Membership | None:
    """The team and the user's role in it, if the user is a member."""
    row = conn.execute(
        _memberships().where(teams.c.id == team_id, team_members.c.user_id == user_id)
    ).one_or_none()
    return None if row is None else Membership(_team(row), row.role)


def memberships_of(conn: Connection, user_id: str) -> list[Membership]:
    """The user's teams, those they own first, then in the order they joined."""
    rows = conn.execute(
        _memberships()
        .where(team_members.c.user_id == user_id)
        .order_by(
            (team_members.c.role == "owner").desc(),
            team_members.c.joined_at,
            teams.c.id,
        )
    )
    return [Membership(_team(row), row.role) for row in rows]


# -- members -------------------------------------------------------------


def insert_member(
    conn: Connection, team_id: str, user_id: str, role: Role, joined_at: datetime
) -> None:
    conn.execute(
        insert(team_members).values(
            team_id=team_id, user_id=user_id, role=role, joined_at=joined_at
        )
    )


def member(conn: Connection, team_id: str, user_id: str) -> Member | None:
    row = conn.execute(
        _members().where(team_members.c.team_id == team_id, team_members.c.user_id == user_id)
    ).one_or_none()
    return None if row is None else _member(row)


def member_ids(conn: Connection, team_id: str) -> list[str]:
    rows = conn.execute(
        select(team_members.c.user_id)
        .where(team_members.c.team_id == team_id)
        .order_by(team_members.c.user_id)
    )
    return [str(user_id) for user_id in rows.scalars()]


def members_page(
    conn: Connection, team_id: str, *, limit: int, after: tuple[datetime, str] | None
) -> list[Member]:
    """Up to ``limit`` members in the order they joined, after the member
    who joined at ``after = (joined_at, user_id)``."""
    query = _members().where(team_members.c.team_id == team_id)
    if after is not None:
        joined_at, user_id = after
        query = query.where(
            or_(
                team_members.c.joined_at > joined_at,
                and_(team_members.c.joined_at == joined_at, team_members.c.user_id > user_id),
            )
        )
    rows = conn.execute(
        query.order_by(team_members.c.joined_at, team_members.c.user_id).limit(limit)
    )
    return [_member(row) for row in rows]


def count_members(conn: Connection, team_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(team_members).where(team_members.c.team_id == team_id)
        ).scalar_one()
    )


def has_member_with_email(conn: Connection, team_id: str, email: str) -> bool:
    found = conn.execute(
        select(team_members.c.user_id)
        .select_from(team_members.join(users, users.c.id == team_members.c.user_id))
        .where(team_members.c.team_id == team_id, users.c.email == email)
    ).first()
    return found is not None


def delete_member(conn: Connection, team_id: str, user_id: str) -> None:
    conn.execute(
        team_members.delete().where(
            team_members.c.team_id == team_id, team_members.c.user_id == user_id
        )
    )


def set_member_cap(conn: Connection, team_id: str, user_id: str, cap: int | None) -> None:
    conn.execute(
        update(team_members)
        .where(team_members.c.team_id == team_id, team_members.c.user_id == user_id)
        .values(monthly_credit_cap=cap)
    )


# -- invitations ---------------------------------------------------------


def pending(now: datetime) -> ColumnElement[bool]:
    return and_(
        invitations.c.accepted_at.is_(None),
        invitations.c.revoked_at.is_(None),
        invitations.c.declined_at.is_(None),
        invitations.c.expires_at > now,
    )


def insert_invitation(
    conn: Connection, invitation: Invitation, *, token_hash: str, invited_by: str
) -> None:
    conn.execute(
        insert(invitations).values(
            id=invitation.id,
            team_id=invitation.team_id,
            email=invitation.email,
            token_hash=token_hash,
            invited_by=invited_by,
            created_at=invitation.created_at,
            expires_at=invitation.expires_at,
        )
    )


def count_pending(conn: Connection, team_id: str, now: datetime) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(invitations)
            .where(invitations.c.team_id == team_id, pending(now))
        ).scalar_one()
    )


def pending_invitations(conn: Connection, team_id: str, now: datetime) -> list[Invitation]:
    """The team's pending invitations, oldest first."""
    rows = conn.execute(
        select(invitations)
        .where(invitations.c.team_id == team_id, pending(now))
        .order_by(invitations.c.created_at, invitations.c.id)
    )
    return [_invitation(row) for row in rows]


def pending_invitation(
    conn: Connection,
    team_id: str,
    now: datetime,
    *,
    invitation_id: str | None = None,
    email: str | None = None,
) -> Invitation | None:
    """The team's pending invitation with this id, or for this address."""
    query = select(invitations).where(invitations.c.team_id == team_id, pending(now))
    if invitation_id is not None:
        query = query.where(invitations.c.id == invitation_id)
    if email is not None:
        query = query.where(invitations.c.email == email)
    row = conn.execute(query).first()
    return None if row is None else _invitation(row)


def invitation(conn: Connection, invitation_id: str) -> Invitation:
    return _invitation(
        conn.execute(select(invitations).where(invitations.c.id == invitation_id)).one()
    )


def invitation_by_token_hash(conn: Connection, token_hash: str) -> Invitation | None:
    row = conn.execute(
        select(invitations).where(invitations.c.token_hash == token_hash)
    ).one_or_none()
    return None if row is None else _invitation(row)


def recent_invitations(
    conn: Connection, team_id: str, *, since: datetime, limit: int
) -> list[Invitation]:
    """The team's invitations that expire (or expired) after ``since``, newest
    first: the open ones and the recent past, which the Team page lists."""
    rows = conn.execute(
        select(invitations)
        .where(invitations.c.team_id == team_id, invitations.c.expires_at >= since)
        .order_by(invitations.c.created_at.desc(), invitations.c.id.desc())
        .limit(limit)
    )
    return [_invitation(row) for row in rows]


def invitation_details(conn: Connection, token_hash: str) -> InvitationDetails | None:
    """The invitation of this token hash with its team and its inviter."""
    inviter = users.alias("inviter")
    row = conn.execute(
        select(
            invitations,
            teams.c.name.label("team_name"),
            teams.c.owner_id,
            inviter.c.email.label("inviter_email"),
        )
        .select_from(
            invitations.join(teams, teams.c.id == invitations.c.team_id).join(
                inviter, inviter.c.id == invitations.c.invited_by
            )
        )
        .where(invitations.c.token_hash == token_hash)
    ).one_or_none()
    if row is None:
        return None
    return InvitationDetails(_invitation(row), row.team_name, row.owner_id, row.inviter_email)


def set_declined(conn: Connection, invitation_id: str, now: datetime) -> None:
    conn.execute(
        update(invitations).where(invitations.c.id == invitation_id).values(declined_at=now)
    )


def set_token(
    conn: Connection, invitation_id: str, *, token_hash: str, expires_at: datetime
) -> None:
    """A new secret for the invitation (the old one stops working), valid until
    ``expires_at``: how an invitation is sent again."""
    conn.execute(
        update(invitations)
        .where(invitations.c.id == invitation_id)
        .values(token_hash=token_hash, expires_at=expires_at)
    )


def set_revoked(conn: Connection, invitation_id: str, now: datetime) -> None:
    conn.execute(
        update(invitations).where(invitations.c.id == invitation_id).values(revoked_at=now)
    )


def set_accepted(conn: Connection, invitation_id: str, user_id: str, now: datetime) -> None:
    conn.execute(
        update(invitations)
        .where(invitations.c.id == invitation_id)
        .values(accepted_at=now, accepted_by=user_id)
    )


# -- rows ----------------------------------------------------------------


def _memberships() -> Select[Any]:
    return select(teams, team_members.c.role).select_from(
        teams.join(team_members, team_members.c.team_id == teams.c.id)
    )


def _members() -> Select[Any]:
    return select(team_members, users.c.email).select_from(
        team_members.join(users, users.c.id == team_members.c.user_id)
    )


def _team(row: AnyRow) -> Team:
    return Team(row.id, row.name, row.owner_id, row.wallet_id, as_utc(row.created_at))


def _member(row: AnyRow) -> Member:
    return Member(
        team_id=row.team_id,
        user_id=row.user_id,
        email=row.email,
        role=row.role,
        monthly_credit_cap=None if row.monthly_credit_cap is None else int(row.monthly_credit_cap),
        joined_at=as_utc(row.joined_at),
    )


def _invitation(row: AnyRow) -> Invitation:
    return Invitation(
        row.id,
        row.team_id,
        row.email,
        as_utc(row.created_at),
        as_utc(row.expires_at),
        None if row.accepted_at is None else as_utc(row.accepted_at),
        None if row.revoked_at is None else as_utc(row.revoked_at),
        None if row.declined_at is None else as_utc(row.declined_at),
        row.invited_by,
    )

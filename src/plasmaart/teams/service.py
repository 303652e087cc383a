"""Studio teams: who belongs to a team, invitations, seats and per-member caps.

A team spends its owner's wallet ("the team shares the owner's wallet"), so
the seats it may fill follow the owner's plan *now*: a downgrade leaves the
members in place but lets nobody new in. An invitation holds its seat from the
moment it is sent until it is accepted, revoked or expired, so the owner can
never hand out more invitations than there are seats.

Limits chosen here (the policy names none): one team per owner (a second
``create_team`` is ``already_owns_team``), invitations live 7 days, and the
owner is a member like the others except that nobody can remove them.

Invitation tokens are random secrets shown once; only their SHA-256 is stored,
like API keys. Every owner action, and every join and leave, goes to the audit
log with the acting user's id.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Select, and_, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from plasmaart.accounts import audit
from plasmaart.accounts.credentials import digest
from plasmaart.accounts.repository import AnyRow
from plasmaart.accounts.service import User, is_valid_email, normalise_email
from plasmaart.billing.plans import PlanService
from plasmaart.caches import CacheHub, TtlLru, cached
from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import invalidate, pending_invalidations
from plasmaart.db.tables import invitations, team_members, teams, users
from plasmaart.errors import Conflict, Forbidden, InvalidInput, NotFound
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService

INVITATION_LIFETIME = timedelta(days=7)
INVITATION_PREFIX = "pa_inv_"
TEAMS_PER_OWNER = 1
TEAM_NAME_MAX = 100
# Far below BIGINT's range, far above any month of spending.
MAX_MONTHLY_CREDIT_CAP = 10**12


Role = Literal["owner", "member"]


# -- refusals ------------------------------------------------------------


class TeamNotFound(NotFound):
    """Also what non-members get: a team's existence is nobody else's business."""


class InvitationNotFound(NotFound):
    """Unknown, expired, revoked, used, or addressed to somebody else."""


class MemberNotFound(NotFound):
    pass


class AlreadyOwnsTeam(Conflict):
    code = "already_owns_team"
    title = "Already owns a team"


class SeatsExhausted(Conflict):
    code = "seats_exhausted"
    title = "No seat left"


class AlreadyMember(Conflict):
    code = "already_member"
    title = "Already a member"


class AlreadyInvited(Conflict):
    code = "already_invited"
    title = "Already invited"


class OwnerNotRemovable(Conflict):
    code = "owner_not_removable"
    title = "The owner cannot be removed"


# -- plain data ----------------------------------------------------------


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    owner_id: str
    wallet_id: str
    created_at: datetime


@dataclass(frozen=True)
class Seats:
    """``total`` from the owner's plan; members and pending invitations use them."""

    total: int
    members: int
    pending: int

    @property
    def used(self) -> int:
        return self.members + self.pending

    @property
    def left(self) -> int:
        return seats_left(self.total, self.members, self.pending)


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


@dataclass(frozen=True)
class NewInvitation:
    invitation: Invitation
    token: str  # the secret; shown once, stored only as its SHA-256


# -- pure rules ----------------------------------------------------------


def plan_allows_teams(plan: PlanSpec) -> bool:
    """A plan with a single seat has nobody to share it with."""
    return plan.team_seats > 1


def cheapest_team_plan(catalog: Catalog) -> PlanSpec | None:
    for plan in catalog.plans_by_price():
        if plan_allows_teams(plan):
            return plan
    return None


def seats_left(total: int, members: int, pending: int) -> int:
    """Seats still free; never negative, even after the owner's plan shrank."""
    return max(0, total - members - pending)


def invitation_is_pending(
    *,
    accepted_at: datetime | None,
    revoked_at: datetime | None,
    expires_at: datetime,
    now: datetime,
) -> bool:
    return accepted_at is None and revoked_at is None and now < expires_at


def team_name(raw: str) -> str:
    name = raw.strip()
    if not 1 <= len(name) <= TEAM_NAME_MAX:
        raise InvalidInput(f"a team needs a name of 1 to {TEAM_NAME_MAX} characters", field="name")
    return name


def invitation_email(raw: str) -> str:
    address = normalise_email(raw)
    # The same shape check as sign-up: deliverability is proven by accepting.
    if not is_valid_email(address):
        raise InvalidInput("not a valid e-mail address", field="email")
    return address


def monthly_credit_cap(value: int | None) -> int | None:
    """A cap is a whole number of credits from 0 up, or None for no cap."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("must be a whole number of credits or null", field="monthly_credit_cap")
    if not 0 <= value <= MAX_MONTHLY_CREDIT_CAP:
        raise InvalidInput(
            f"must be between 0 and {MAX_MONTHLY_CREDIT_CAP}", field="monthly_credit_cap"
        )
    return value


def within_cap(cap: int | None, spent_this_month: int, credits: int) -> bool:
    """Whether a member who spent ``spent_this_month`` may spend ``credits`` more."""
    return cap is None or spent_this_month + credits <= cap


# -- the service ---------------------------------------------------------


class TeamService:
    CACHED_USERS = 10_000

    def __init__(
        self, clock: Clock, catalogs: Catalogs, ledger: LedgerService, plans: PlanService
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.ledger = ledger
        self.plans = plans
        # The wallets each user generates from, per process (attach_caches).
        self._hub: CacheHub | None = None
        self._wallets: TtlLru[str, tuple[str, ...]] | None = None

    def attach_caches(self, hub: CacheHub) -> None:
        """Cache ``wallets_of`` in ``hub``; joining or leaving a team
        invalidates ``user:<id>``."""
        self._hub = hub
        self._wallets = hub.cache("user_wallets", self.CACHED_USERS)

    # -- reading ---------------------------------------------------------

    def wallets_of(self, conn: Connection, user_id: str) -> tuple[str, ...]:
        """The user's own wallet, then those of the teams they belong to (in
        the order of ``teams_of``): whose plans set the user's limits."""

        def load() -> tuple[str, ...]:
            own = self.ledger.wallet_of(conn, "user", user_id)
            return (own, *(m.team.wallet_id for m in self.teams_of(conn, user_id)))

        hub, cache = self._hub, self._wallets
        if hub is None or cache is None or pending_invalidations(conn):
            return load()
        found = cached(hub, cache, user_id, load, lambda _: (f"user:{user_id}",))
        return found if found is not None else load()

    def membership(self, conn: Connection, team_id: str, user_id: str) -> Member | None:
        """The user's place in the team (role and cap), or None if not a member."""
        row = conn.execute(
            _members_query().where(
                team_members.c.team_id == team_id, team_members.c.user_id == user_id
            )
        ).one_or_none()
        return None if row is None else _member(row)

    def member_ids(self, conn: Connection, team_id: str) -> list[str]:
        """The ids of everyone in the team now, its owner included."""
        rows = conn.execute(
            select(team_members.c.user_id)
            .where(team_members.c.team_id == team_id)
            .order_by(team_members.c.user_id)
        )
        return [str(user_id) for user_id in rows.scalars()]

    def team_wallet(self, conn: Connection, team_id: str) -> str:
        """The wallet the team's generations spend: its owner's."""
        wallet_id = conn.execute(
            select(teams.c.wallet_id).where(teams.c.id == team_id)
        ).scalar_one_or_none()
        if wallet_id is None:
            raise TeamNotFound(f"no team {team_id!r}")
        return str(wallet_id)

    def teams_of(self, conn: Connection, user_id: str) -> list[Membership]:
        """The user's teams, those they own first, then in the order they joined."""
        rows = conn.execute(
            select(teams, team_members.c.role)
            .select_from(teams.join(team_members, team_members.c.team_id == teams.c.id))
            .where(team_members.c.user_id == user_id)
            .order_by(
                (team_members.c.role == "owner").desc(),
                team_members.c.joined_at,
                teams.c.id,
            )
        )
        return [Membership(_team(row), row.role) for row in rows]

    def team_for_member(self, conn: Connection, team_id: str, user_id: str) -> Team:
        """The team, for one of its members; anyone else gets ``not_found``."""
        team, _ = self._as_member(conn, team_id, user_id)
        return team

    def seats(self, conn: Connection, team: Team) -> Seats:
        total = self.plans.plan_of(conn, team.wallet_id, fresh=True).team_seats
        members = conn.execute(
            select(func.count()).select_from(team_members).where(team_members.c.team_id == team.id)
        ).scalar_one()
        pending = conn.execute(
            select(func.count())
            .select_from(invitations)
            .where(invitations.c.team_id == team.id, self._pending())
        ).scalar_one()
        return Seats(total=total, members=int(members), pending=int(pending))

    def members(
        self,
        conn: Connection,
        team_id: str,
        viewer_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[Member]:
        """Up to ``limit`` members in the order they joined (the owner first),
        after the member who joined at ``after = (joined_at, user_id)``."""
        self._as_member(conn, team_id, viewer_id)
        query = _members_query().where(team_members.c.team_id == team_id)
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

    def pending_invitations(
        self, conn: Connection, team_id: str, actor_id: str
    ) -> list[Invitation]:
        """The invitations still holding a seat, oldest first (owner only)."""
        self._as_owner(conn, team_id, actor_id)
        rows = conn.execute(
            select(invitations)
            .where(invitations.c.team_id == team_id, self._pending())
            .order_by(invitations.c.created_at, invitations.c.id)
        )
        return [_invitation(row) for row in rows]

    # -- the owner's actions --------------------------------------------

    def create_team(self, conn: Connection, owner: User, name: str) -> Team:
        """A team spending ``owner``'s wallet, with the owner as its first member."""
        name = team_name(name)
        wallet_id = self.ledger.wallet_of(conn, "user", owner.id)
        plan = self.plans.plan_of(conn, wallet_id, fresh=True)
        if not plan_allows_teams(plan):
            cheapest = cheapest_team_plan(self.catalogs.now(conn))
            extra = {"required_plan": cheapest.id} if cheapest else {}
            includes = f"; {cheapest.name} includes them" if cheapest else ""
            raise Forbidden(f"teams are not part of the {plan.name} plan{includes}", **extra)
        # Two concurrent creations by one owner queue on the owner's row, so
        # the second sees the first's team (PostgreSQL; SQLite serialises writers).
        conn.execute(select(users.c.id).where(users.c.id == owner.id).with_for_update())
        owned = conn.execute(
            select(func.count()).select_from(teams).where(teams.c.owner_id == owner.id)
        ).scalar_one()
        if owned >= TEAMS_PER_OWNER:
            raise AlreadyOwnsTeam(f"you already own a team (at most {TEAMS_PER_OWNER})")
        now = self.clock.now()
        team = Team(new_id("team"), name, owner.id, wallet_id, now)
        conn.execute(
            insert(teams).values(
                id=team.id,
                name=team.name,
                owner_id=owner.id,
                wallet_id=wallet_id,
                created_at=now,
            )
        )
        conn.execute(
            insert(team_members).values(
                team_id=team.id, user_id=owner.id, role="owner", joined_at=now
            )
        )
        invalidate(conn, f"user:{owner.id}")
        self._audit(conn, owner.id, "team.create", team.id, {"name": name, "plan": plan.id})
        return team

    def invite(self, conn: Connection, team_id: str, actor_id: str, email: str) -> NewInvitation:
        """An invitation for ``email`` holding one of the team's seats for 7 days."""
        team = self._as_owner(conn, team_id, actor_id, lock=True)
        address = invitation_email(email)
        is_member = conn.execute(
            select(team_members.c.user_id)
            .select_from(team_members.join(users, users.c.id == team_members.c.user_id))
            .where(team_members.c.team_id == team.id, users.c.email == address)
        ).first()
        if is_member is not None:
            raise AlreadyMember(f"{address} is already a member of this team")
        invited = conn.execute(
            select(invitations.c.id).where(
                invitations.c.team_id == team.id,
                invitations.c.email == address,
                self._pending(),
            )
        ).first()
        if invited is not None:
            raise AlreadyInvited(f"{address} already has a pending invitation to this team")
        self._require_seat(conn, team)
        now = self.clock.now()
        token = INVITATION_PREFIX + secrets.token_urlsafe(32)
        invitation = Invitation(new_id("inv"), team.id, address, now, now + INVITATION_LIFETIME)
        conn.execute(
            insert(invitations).values(
                id=invitation.id,
                team_id=team.id,
                email=address,
                token_hash=digest(token),
                invited_by=actor_id,
                created_at=now,
                expires_at=invitation.expires_at,
            )
        )
        self._audit(
            conn,
            actor_id,
            "team.invite",
            team.id,
            {"invitation_id": invitation.id, "email": address},
        )
        return NewInvitation(invitation, token)

    def revoke_invitation(
        self, conn: Connection, team_id: str, actor_id: str, invitation_id: str
    ) -> None:
        """Withdraw a pending invitation; its seat is free again at once."""
        team = self._as_owner(conn, team_id, actor_id, lock=True)
        row = conn.execute(
            select(invitations).where(
                invitations.c.id == invitation_id,
                invitations.c.team_id == team.id,
                self._pending(),
            )
        ).one_or_none()
        if row is None:
            raise InvitationNotFound(f"no pending invitation {invitation_id!r} in this team")
        conn.execute(
            update(invitations)
            .where(invitations.c.id == invitation_id)
            .values(revoked_at=self.clock.now())
        )
        self._audit(
            conn,
            actor_id,
            "team.invitation_revoke",
            team.id,
            {"invitation_id": invitation_id, "email": row.email},
        )

    def remove_member(self, conn: Connection, team_id: str, actor_id: str, user_id: str) -> None:
        """The owner removes a member, or a member leaves. Nobody removes the owner."""
        team, actor_role = self._as_member(conn, team_id, actor_id, lock=True)
        if actor_role != "owner" and user_id != actor_id:
            raise Forbidden("only the team's owner can remove other members")
        target = self.membership(conn, team.id, user_id)
        if target is None:
            raise MemberNotFound(f"no member {user_id!r} in this team")
        if target.role == "owner":
            raise OwnerNotRemovable("the owner cannot be removed from their team")
        conn.execute(
            team_members.delete().where(
                team_members.c.team_id == team.id, team_members.c.user_id == user_id
            )
        )
        invalidate(conn, f"user:{user_id}")
        action = "team.leave" if user_id == actor_id else "team.member_remove"
        self._audit(conn, actor_id, action, team.id, {"user_id": user_id, "email": target.email})

    def set_member_cap(
        self, conn: Connection, team_id: str, actor_id: str, user_id: str, cap: int | None
    ) -> Member:
        """Cap what a member may spend of the team's credits per month (None: no cap)."""
        team = self._as_owner(conn, team_id, actor_id)
        cap = monthly_credit_cap(cap)
        target = self.membership(conn, team.id, user_id)
        if target is None:
            raise MemberNotFound(f"no member {user_id!r} in this team")
        conn.execute(
            update(team_members)
            .where(team_members.c.team_id == team.id, team_members.c.user_id == user_id)
            .values(monthly_credit_cap=cap)
        )
        self._audit(
            conn,
            actor_id,
            "team.member_cap",
            team.id,
            {"user_id": user_id, "before": target.monthly_credit_cap, "after": cap},
        )
        return Member(team.id, user_id, target.email, target.role, cap, target.joined_at)

    # -- the invitee's action -------------------------------------------

    def accept_invitation(self, conn: Connection, token: str, user: User) -> Team:
        """Join the team of the invitation ``token``, addressed to ``user``'s e-mail.

        Every reason the token does not work for this user is the same
        ``not_found``, so a token tells a stranger nothing."""
        found = conn.execute(
            select(invitations.c.id, invitations.c.team_id).where(
                invitations.c.token_hash == digest(token)
            )
        ).one_or_none()
        if found is None:
            raise InvitationNotFound("no such invitation for you (or it expired)")
        team = self._lock_team(conn, found.team_id)
        # Read again under the team's lock: a revocation or another accept of
        # the same token may have committed while this one waited.
        row = conn.execute(select(invitations).where(invitations.c.id == found.id)).one()
        now = self.clock.now()
        if row.email != user.email or not invitation_is_pending(
            accepted_at=row.accepted_at,
            revoked_at=row.revoked_at,
            expires_at=as_utc(row.expires_at),
            now=now,
        ):
            raise InvitationNotFound("no such invitation for you (or it expired)")
        if self.membership(conn, team.id, user.id) is not None:
            raise AlreadyMember("you are already a member of this team")
        # This invitation already holds one of the counted seats; turning it
        # into a member needs no more, unless the owner's plan shrank since.
        seats = self.seats(conn, team)
        if seats.used > seats.total:
            raise SeatsExhausted(
                f"the team has no seat left ({seats.total} on its owner's plan); "
                "ask the owner to free one"
            )
        conn.execute(
            update(invitations)
            .where(invitations.c.id == row.id)
            .values(accepted_at=now, accepted_by=user.id)
        )
        conn.execute(
            insert(team_members).values(
                team_id=team.id, user_id=user.id, role="member", joined_at=now
            )
        )
        invalidate(conn, f"user:{user.id}")
        self._audit(conn, user.id, "team.join", team.id, {"invitation_id": row.id})
        return team

    # -- internals -------------------------------------------------------

    def _pending(self) -> ColumnElement[bool]:
        return and_(
            invitations.c.accepted_at.is_(None),
            invitations.c.revoked_at.is_(None),
            invitations.c.expires_at > self.clock.now(),
        )

    def _lock_team(self, conn: Connection, team_id: str) -> Team:
        # Whatever changes who holds a seat locks the team row first, so on
        # PostgreSQL two invitations cannot both take the last seat.
        row = conn.execute(
            select(teams).where(teams.c.id == team_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise TeamNotFound(f"no team {team_id!r}")
        return _team(row)

    def _as_member(
        self, conn: Connection, team_id: str, user_id: str, *, lock: bool = False
    ) -> tuple[Team, Role]:
        if lock:
            self._lock_team(conn, team_id)
        row = conn.execute(
            select(teams, team_members.c.role)
            .select_from(teams.join(team_members, team_members.c.team_id == teams.c.id))
            .where(teams.c.id == team_id, team_members.c.user_id == user_id)
        ).one_or_none()
        if row is None:
            raise TeamNotFound(f"no team {team_id!r}")
        return _team(row), row.role

    def _as_owner(
        self, conn: Connection, team_id: str, user_id: str, *, lock: bool = False
    ) -> Team:
        team, role = self._as_member(conn, team_id, user_id, lock=lock)
        if role != "owner":
            raise Forbidden("only the team's owner can do this")
        return team

    def _require_seat(self, conn: Connection, team: Team) -> None:
        seats = self.seats(conn, team)
        if seats.left < 1:
            raise SeatsExhausted(
                f"all {seats.total} seats are taken ({seats.members} members, "
                f"{seats.pending} pending invitations)",
                seats_total=seats.total,
                seats_used=seats.used,
            )

    def _audit(
        self, conn: Connection, actor: str, action: str, team_id: str, data: dict[str, object]
    ) -> None:
        audit.record(
            conn,
            actor=actor,
            action=action,
            target=team_id,
            reason=None,
            now=self.clock.now(),
            data=data,
        )


def _members_query() -> Select[Any]:
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
        row.id, row.team_id, row.email, as_utc(row.created_at), as_utc(row.expires_at)
    )

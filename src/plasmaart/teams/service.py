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
log with the acting user's id. The SQL is in ``repository``, the refusals in
``errors``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts import repository as accounts_repo
from plasmaart.accounts.credentials import digest
from plasmaart.accounts.entitlements import NotInPlan, cheapest_plan
from plasmaart.accounts.service import User, is_valid_email, normalise_email
from plasmaart.billing.plans import PlanService
from plasmaart.caches import CacheHub, TtlLru, cached
from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.db.engine import invalidate, pending_invalidations
from plasmaart.errors import Forbidden, InvalidInput
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService
from plasmaart.teams import repository as repo
from plasmaart.teams.errors import (
    AlreadyInvited,
    AlreadyMember,
    AlreadyOwnsTeam,
    InvitationNotFound,
    MemberNotFound,
    OwnerNotRemovable,
    SeatsExhausted,
    TeamNotFound,
)
from plasmaart.teams.repository import Invitation, Member, Membership, Role, Team

__all__ = [
    "INVITATION_LIFETIME",
    "MAX_MONTHLY_CREDIT_CAP",
    "TEAM_NAME_MAX",
    "AlreadyInvited",
    "AlreadyMember",
    "AlreadyOwnsTeam",
    "Invitation",
    "InvitationNotFound",
    "Member",
    "MemberNotFound",
    "Membership",
    "NewInvitation",
    "OwnerNotRemovable",
    "Role",
    "Seats",
    "SeatsExhausted",
    "Team",
    "TeamNotFound",
    "TeamService",
    "TeamWithSeats",
    "cheapest_team_plan",
    "invitation_email",
    "invitation_is_pending",
    "monthly_credit_cap",
    "plan_allows_teams",
    "seats_left",
    "team_name",
    "within_cap",
]

T = TypeVar("T")

INVITATION_LIFETIME = timedelta(days=7)
INVITATION_PREFIX = "pa_inv_"
TEAMS_PER_OWNER = 1
TEAM_NAME_MAX = 100
# Far below BIGINT's range, far above any month of spending.
MAX_MONTHLY_CREDIT_CAP = 10**12


# -- plain data ----------------------------------------------------------


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
class TeamWithSeats(Team):
    """A team as its members see it: with the seats of its owner's plan."""

    seats: Seats


@dataclass(frozen=True)
class NewInvitation:
    invitation: Invitation
    token: str  # the secret; shown once, stored only as its SHA-256


# -- pure rules ----------------------------------------------------------


def plan_allows_teams(plan: PlanSpec) -> bool:
    """A plan with a single seat has nobody to share it with."""
    return plan.team_seats > 1


def cheapest_team_plan(catalog: Catalog) -> PlanSpec | None:
    return cheapest_plan(catalog, plan_allows_teams)


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
        self,
        clock: Clock,
        catalogs: Catalogs,
        ledger: LedgerService,
        plans: PlanService,
        *,
        caches: CacheHub | None = None,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.ledger = ledger
        self.plans = plans
        # The wallets each user generates from, per process, when given
        # ``caches``: joining or leaving a team invalidates ``user:<id>``.
        self._hub = caches
        self._wallets: TtlLru[str, tuple[str, ...]] | None = (
            None if caches is None else caches.cache("user_wallets", self.CACHED_USERS)
        )

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
        return repo.member(conn, team_id, user_id)

    def member_ids(self, conn: Connection, team_id: str) -> list[str]:
        """The ids of everyone in the team now, its owner included."""
        return repo.member_ids(conn, team_id)

    def team_wallet(self, conn: Connection, team_id: str) -> str:
        """The wallet the team's generations spend: its owner's."""
        return _team_found(repo.team_wallet(conn, team_id), team_id)

    def teams_of(self, conn: Connection, user_id: str) -> list[Membership]:
        """The user's teams, those they own first, then in the order they joined."""
        return repo.memberships_of(conn, user_id)

    def team_for_member(self, conn: Connection, team_id: str, user_id: str) -> TeamWithSeats:
        """The team with its seats, for one of its members; anyone else gets
        ``not_found``."""
        team, _ = self._as_member(conn, team_id, user_id)
        return self._with_seats(team, self.seats(conn, team))

    def seats(self, conn: Connection, team: Team) -> Seats:
        total = self.plans.plan_of(conn, team.wallet_id, fresh=True).team_seats
        return Seats(
            total=total,
            members=repo.count_members(conn, team.id),
            pending=repo.count_pending(conn, team.id, self.clock.now()),
        )

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
        return repo.members_page(conn, team_id, limit=limit, after=after)

    def pending_invitations(
        self, conn: Connection, team_id: str, actor_id: str
    ) -> list[Invitation]:
        """The invitations still holding a seat, oldest first (owner only)."""
        self._as_owner(conn, team_id, actor_id)
        return repo.pending_invitations(conn, team_id, self.clock.now())

    # -- the owner's actions --------------------------------------------

    def create_team(self, conn: Connection, owner: User, name: str) -> TeamWithSeats:
        """A team spending ``owner``'s wallet, with the owner as its first member."""
        name = team_name(name)
        wallet_id = self.ledger.wallet_of(conn, "user", owner.id)
        plan = self.plans.plan_of(conn, wallet_id, fresh=True)
        if not plan_allows_teams(plan):
            raise NotInPlan(
                "teams are", plan, cheapest_team_plan(self.catalogs.now(conn)), it="them"
            )
        # Two concurrent creations by one owner queue on the owner's row, so
        # the second sees the first's team (PostgreSQL; SQLite serialises writers).
        accounts_repo.lock_user(conn, owner.id)
        if repo.count_teams_owned(conn, owner.id) >= TEAMS_PER_OWNER:
            raise AlreadyOwnsTeam(f"you already own a team (at most {TEAMS_PER_OWNER})")
        team = Team(new_id("team"), name, owner.id, wallet_id, self.clock.now())
        repo.insert_team(conn, team)
        invalidate(conn, f"user:{owner.id}")
        self._audit(conn, owner.id, "team.create", team.id, {"name": name, "plan": plan.id})
        # The owner alone, on the plan just read.
        return self._with_seats(team, Seats(total=plan.team_seats, members=1, pending=0))

    def invite(self, conn: Connection, team_id: str, actor_id: str, email: str) -> NewInvitation:
        """An invitation for ``email`` holding one of the team's seats for 7 days."""
        team = self._as_owner(conn, team_id, actor_id, lock=True)
        address = invitation_email(email)
        if repo.has_member_with_email(conn, team.id, address):
            raise AlreadyMember(f"{address} is already a member of this team")
        now = self.clock.now()
        if repo.pending_invitation(conn, team.id, now, email=address) is not None:
            raise AlreadyInvited(f"{address} already has a pending invitation to this team")
        self._require_seat(conn, team)
        token = INVITATION_PREFIX + secrets.token_urlsafe(32)
        invitation = Invitation(new_id("inv"), team.id, address, now, now + INVITATION_LIFETIME)
        repo.insert_invitation(conn, invitation, token_hash=digest(token), invited_by=actor_id)
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
        now = self.clock.now()
        found = repo.pending_invitation(conn, team.id, now, invitation_id=invitation_id)
        if found is None:
            raise InvitationNotFound(f"no pending invitation {invitation_id!r} in this team")
        repo.set_revoked(conn, invitation_id, now)
        self._audit(
            conn,
            actor_id,
            "team.invitation_revoke",
            team.id,
            {"invitation_id": invitation_id, "email": found.email},
        )

    def remove_member(self, conn: Connection, team_id: str, actor_id: str, user_id: str) -> None:
        """The owner removes a member, or a member leaves. Nobody removes the owner."""
        team, actor_role = self._as_member(conn, team_id, actor_id, lock=True)
        if actor_role != "owner" and user_id != actor_id:
            raise Forbidden("only the team's owner can remove other members")
        target = self._member(conn, team.id, user_id)
        if target.role == "owner":
            raise OwnerNotRemovable("the owner cannot be removed from their team")
        repo.delete_member(conn, team.id, user_id)
        invalidate(conn, f"user:{user_id}")
        action = "team.leave" if user_id == actor_id else "team.member_remove"
        self._audit(conn, actor_id, action, team.id, {"user_id": user_id, "email": target.email})

    def set_member_cap(
        self, conn: Connection, team_id: str, actor_id: str, user_id: str, cap: int | None
    ) -> Member:
        """Cap what a member may spend of the team's credits per month (None: no cap)."""
        team = self._as_owner(conn, team_id, actor_id)
        cap = monthly_credit_cap(cap)
        target = self._member(conn, team.id, user_id)
        repo.set_member_cap(conn, team.id, user_id, cap)
        self._audit(
            conn,
            actor_id,
            "team.member_cap",
            team.id,
            {"user_id": user_id, "before": target.monthly_credit_cap, "after": cap},
        )
        return replace(target, monthly_credit_cap=cap)

    # -- the invitee's action -------------------------------------------

    def accept_invitation(self, conn: Connection, token: str, user: User) -> TeamWithSeats:
        """Join the team of the invitation ``token``, addressed to ``user``'s e-mail.

        Every reason the token does not work for this user is the same
        ``not_found``, so a token tells a stranger nothing."""
        found = repo.invitation_by_token_hash(conn, digest(token))
        if found is None:
            raise InvitationNotFound("no such invitation for you (or it expired)")
        team = self._lock_team(conn, found.team_id)
        # Read again under the team's lock: a revocation or another accept of
        # the same token may have committed while this one waited.
        invitation = repo.invitation(conn, found.id)
        now = self.clock.now()
        if invitation.email != user.email or not invitation_is_pending(
            accepted_at=invitation.accepted_at,
            revoked_at=invitation.revoked_at,
            expires_at=invitation.expires_at,
            now=now,
        ):
            raise InvitationNotFound("no such invitation for you (or it expired)")
        if repo.member(conn, team.id, user.id) is not None:
            raise AlreadyMember("you are already a member of this team")
        # This invitation already holds one of the counted seats; turning it
        # into a member needs no more, unless the owner's plan shrank since.
        seats = self.seats(conn, team)
        if seats.used > seats.total:
            raise SeatsExhausted(
                f"the team has no seat left ({seats.total} on its owner's plan); "
                "ask the owner to free one"
            )
        repo.set_accepted(conn, invitation.id, user.id, now)
        repo.insert_member(conn, team.id, user.id, "member", now)
        invalidate(conn, f"user:{user.id}")
        self._audit(conn, user.id, "team.join", team.id, {"invitation_id": invitation.id})
        # Under the team's lock nothing else moved: the seat held by the
        # invitation is now the new member's.
        joined = replace(seats, members=seats.members + 1, pending=seats.pending - 1)
        return self._with_seats(team, joined)

    # -- internals -------------------------------------------------------

    def _lock_team(self, conn: Connection, team_id: str) -> Team:
        # Whatever changes who holds a seat locks the team row first, so on
        # PostgreSQL two invitations cannot both take the last seat.
        return _team_found(repo.lock_team(conn, team_id), team_id)

    def _as_member(
        self, conn: Connection, team_id: str, user_id: str, *, lock: bool = False
    ) -> tuple[Team, Role]:
        if lock:
            self._lock_team(conn, team_id)
        found = _team_found(repo.membership(conn, team_id, user_id), team_id)
        return found.team, found.role

    def _as_owner(
        self, conn: Connection, team_id: str, user_id: str, *, lock: bool = False
    ) -> Team:
        team, role = self._as_member(conn, team_id, user_id, lock=lock)
        if role != "owner":
            raise Forbidden("only the team's owner can do this")
        return team

    def _member(self, conn: Connection, team_id: str, user_id: str) -> Member:
        found = repo.member(conn, team_id, user_id)
        if found is None:
            raise MemberNotFound(f"no member {user_id!r} in this team")
        return found

    def _require_seat(self, conn: Connection, team: Team) -> None:
        seats = self.seats(conn, team)
        if seats.left < 1:
            raise SeatsExhausted(
                f"all {seats.total} seats are taken ({seats.members} members, "
                f"{seats.pending} pending invitations)",
                seats_total=seats.total,
                seats_used=seats.used,
            )

    @staticmethod
    def _with_seats(team: Team, seats: Seats) -> TeamWithSeats:
        return TeamWithSeats(
            team.id, team.name, team.owner_id, team.wallet_id, team.created_at, seats
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


def _team_found(found: T | None, team_id: str) -> T:
    """What was read of the team, or ``not_found`` (also for non-members)."""
    if found is None:
        raise TeamNotFound(f"no team {team_id!r}")
    return found

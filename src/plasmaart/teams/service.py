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
like API keys. Each invitation is mailed to its address in the transaction
that creates it (a letter through the outbox, one per invitation link), with
the link ``<public url>/invitations?token=...``. Inviting an address that
already has a pending invitation stays ``already_invited``; the owner sends
it again with ``resend_invitation``, which gives it a new token (the old link
stops working) and a new 7-day expiry, and mails it. Invitation mail is
throttled per team and per address (``MAIL_PER_TEAM``, ``MAIL_PER_ADDRESS``).

Only the invited address may accept: another signed-in account gets
``invitation_for_another_address``. A token that is unknown, used, expired,
declined or revoked is ``invalid_token`` for accepting and declining alike.
Whoever holds the token may decline (no account needed): the token is the
proof that its mail was received. The owner is told (a notice) when an
invitation is accepted or declined.

Every owner action, and every join and leave, goes to the audit log with the
acting user's id (a decline by an address without an account: ``invitee:<address>``).
The SQL is in ``repository``, the refusals in ``errors``, the facts the
outbox is handed in ``notices``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts import repository as accounts_repo
from plasmaart.accounts.credentials import digest
from plasmaart.accounts.entitlements import NotInPlan, cheapest_plan
from plasmaart.accounts.service import User, is_valid_email, normalise_email
from plasmaart.accounts.tokens import Throttle
from plasmaart.billing.plans import PlanService
from plasmaart.caches import CacheHub, TtlLru, cached
from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.db.engine import invalidate, pending_invalidations
from plasmaart.errors import Forbidden, InvalidInput, InvalidToken
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService
from plasmaart.links import Links
from plasmaart.outbox import Outbox
from plasmaart.teams import repository as repo
from plasmaart.teams.errors import (
    AlreadyInvited,
    AlreadyMember,
    AlreadyOwnsTeam,
    InvitationForAnotherAddress,
    InvitationNotFound,
    MemberNotFound,
    OwnerNotRemovable,
    SeatsExhausted,
    TeamNotFound,
)
from plasmaart.teams.notices import InvitationAnswered, InvitationLetter
from plasmaart.teams.repository import (
    Invitation,
    InvitationDetails,
    Member,
    Membership,
    Role,
    Team,
)

__all__ = [
    "INVITATION_LIFETIME",
    "MAX_MONTHLY_CREDIT_CAP",
    "TEAM_NAME_MAX",
    "AlreadyInvited",
    "AlreadyMember",
    "AlreadyOwnsTeam",
    "Invitation",
    "InvitationForAnotherAddress",
    "InvitationNotFound",
    "InvitationStatus",
    "InvitationView",
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
    "invitation_status",
    "monthly_credit_cap",
    "plan_allows_teams",
    "seats_left",
    "team_name",
]

T = TypeVar("T")

INVITATION_LIFETIME = timedelta(days=7)
INVITATION_PREFIX = "pa_inv_"
TOKEN_MAX = 200  # far longer than any token handed out
# Where an invitation's link leads: the dashboard's page for it.
INVITATION_PAGE = "/invitations"
# Invitation mail (first sends and resends) per day: per team, and per
# invited address across teams, so nobody can flood an inbox with them.
MAIL_WINDOW = timedelta(days=1)
MAIL_PER_TEAM = 20
MAIL_PER_ADDRESS = 5
# How far back the Team page's list of invitations reaches (by expiry).
INVITATIONS_SHOWN_DAYS = 30
INVITATIONS_SHOWN = 100

InvitationStatus = Literal["pending", "accepted", "declined", "revoked", "expired"]
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
    url: str  # the link mailed to the address: the page that accepts it


@dataclass(frozen=True)
class InvitationView:
    """What the holder of an invitation's token may see of it: the team, who
    invited, the address invited, its status; ``viewer_is_member`` when the
    signed-in viewer already belongs to the team."""

    invitation: Invitation
    team_id: str
    team_name: str
    inviter_email: str
    status: InvitationStatus
    viewer_is_member: bool

    @property
    def email(self) -> str:
        """The address invited: only it may accept."""
        return self.invitation.email


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
    declined_at: datetime | None = None,
) -> bool:
    return accepted_at is None and revoked_at is None and declined_at is None and now < expires_at


def invitation_status(invitation: Invitation, now: datetime) -> InvitationStatus:
    """Where an invitation stands: answered (accepted or declined), revoked by
    the owner, past its expiry, or still pending."""
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.declined_at is not None:
        return "declined"
    if invitation.revoked_at is not None:
        return "revoked"
    if now >= invitation.expires_at:
        return "expired"
    return "pending"


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
        outbox: Outbox,
        links: Links,
        throttle: Throttle,
        caches: CacheHub | None = None,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.ledger = ledger
        self.plans = plans
        # Invitations are mailed (outbox) with a link (links), within the
        # mail limits (throttle).
        self.outbox = outbox
        self.links = links
        self.throttle = throttle
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

    def controlled_wallet(
        self, conn: Connection, user_id: str, team_id: str | None, what: str
    ) -> str:
        """The wallet whose credit controls (``what``: its limits, its auto
        top-up, its alerts) the user sets: their own, or with ``team_id`` the
        team's, for its owner only (a member: ``forbidden``; anyone else:
        ``not_found``)."""
        if team_id is None:
            return self.ledger.wallet_of(conn, "user", user_id)
        _, role = self._as_member(conn, team_id, user_id)
        if role != "owner":
            raise Forbidden(f"only the team's owner sets {what}")
        return self.team_wallet(conn, team_id)

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

    def recent_invitations(self, conn: Connection, team_id: str, actor_id: str) -> list[Invitation]:
        """The pending invitations and those that ended (accepted, declined,
        revoked, expired) in the last 30 days, newest first (owner only)."""
        self._as_owner(conn, team_id, actor_id)
        since = self.clock.now() - timedelta(days=INVITATIONS_SHOWN_DAYS)
        return repo.recent_invitations(conn, team_id, since=since, limit=INVITATIONS_SHOWN)

    def invitation_by_token(
        self, conn: Connection, token: str, viewer: User | None = None
    ) -> InvitationView:
        """The invitation ``token`` opens, whatever its status, for its page;
        ``invalid_token`` for a token that opens none."""
        found = self._details(conn, token)
        if found is None:
            raise InvalidToken("this invitation link is not valid")
        invitation = found.invitation
        member = viewer is not None and repo.member(conn, invitation.team_id, viewer.id) is not None
        return InvitationView(
            invitation=invitation,
            team_id=invitation.team_id,
            team_name=found.team_name,
            inviter_email=found.inviter_email,
            status=invitation_status(invitation, self.clock.now()),
            viewer_is_member=member,
        )

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
        self._take_mail(conn, team.id, address)
        token = new_token()
        invitation = Invitation(
            new_id("inv"),
            team.id,
            address,
            now,
            now + INVITATION_LIFETIME,
            invited_by=actor_id,
        )
        repo.insert_invitation(conn, invitation, token_hash=digest(token), invited_by=actor_id)
        self._audit(
            conn,
            actor_id,
            "team.invite",
            team.id,
            {"invitation_id": invitation.id, "email": address},
        )
        url = self._mail(conn, team, actor_id, invitation, token, resent=False)
        return NewInvitation(invitation, token, url)

    def resend_invitation(
        self, conn: Connection, team_id: str, actor_id: str, invitation_id: str
    ) -> NewInvitation:
        """Mail a pending invitation again with a new token (the old link stops
        working) and a new 7-day expiry; it keeps its seat."""
        team = self._as_owner(conn, team_id, actor_id, lock=True)
        now = self.clock.now()
        found = repo.pending_invitation(conn, team.id, now, invitation_id=invitation_id)
        if found is None:
            raise InvitationNotFound(f"no pending invitation {invitation_id!r} in this team")
        self._take_mail(conn, team.id, found.email)
        token = new_token()
        expires_at = now + INVITATION_LIFETIME
        repo.set_token(conn, found.id, token_hash=digest(token), expires_at=expires_at)
        self._audit(
            conn,
            actor_id,
            "team.invitation_resend",
            team.id,
            {"invitation_id": found.id, "email": found.email},
        )
        invitation = replace(found, expires_at=expires_at)
        url = self._mail(conn, team, actor_id, invitation, token, resent=True)
        return NewInvitation(invitation, token, url)

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

        ``invalid_token`` for a token that is unknown, used, expired, declined
        or revoked; ``invitation_for_another_address`` for a pending one
        addressed to somebody else."""
        team, invitation = self._pending_by_token(conn, token)
        now = self.clock.now()
        if invitation.email != user.email:
            raise InvitationForAnotherAddress(
                f"this invitation was sent to another address than {user.email}; "
                "sign in with the address it was sent to (or sign up with it) to accept it"
            )
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
        self._tell_owner(conn, team, invitation, accepted=True)
        # Under the team's lock nothing else moved: the seat held by the
        # invitation is now the new member's.
        joined = replace(seats, members=seats.members + 1, pending=seats.pending - 1)
        return self._with_seats(team, joined)

    def decline_invitation(self, conn: Connection, token: str) -> InvitationView:
        """Say no to the invitation ``token``: its seat is free at once and the
        owner is told. Whoever holds the token may decline, signed in or not."""
        team, invitation = self._pending_by_token(conn, token)
        now = self.clock.now()
        repo.set_declined(conn, invitation.id, now)
        declined = replace(invitation, declined_at=now)
        inviter = accounts_repo.user_by_id(conn, invitation.invited_by or team.owner_id)
        # Declining needs no account: the actor is the invited address's
        # account if it has one, else the address itself.
        invitee = accounts_repo.user_by_email(conn, invitation.email)
        self._audit(
            conn,
            f"invitee:{invitation.email}" if invitee is None else invitee.id,
            "team.invitation_decline",
            team.id,
            {"invitation_id": invitation.id, "email": invitation.email},
        )
        self._tell_owner(conn, team, invitation, accepted=False)
        return InvitationView(
            invitation=declined,
            team_id=team.id,
            team_name=team.name,
            inviter_email="" if inviter is None else inviter.email,
            status="declined",
            viewer_is_member=False,
        )

    # -- internals -------------------------------------------------------

    def _details(self, conn: Connection, token: str) -> InvitationDetails | None:
        if not token.startswith(INVITATION_PREFIX) or len(token) > TOKEN_MAX:
            return None
        return repo.invitation_details(conn, digest(token))

    def _pending_by_token(self, conn: Connection, token: str) -> tuple[Team, Invitation]:
        """The team (locked) and the invitation of ``token`` if it is still
        pending; ``invalid_token`` otherwise, whatever the reason."""
        found = self._details(conn, token)
        if found is None:
            raise InvalidToken("this invitation link is not valid")
        team = self._lock_team(conn, found.invitation.team_id)
        # Read again under the team's lock: a revocation, a decline or another
        # accept of the same token may have committed while this one waited.
        invitation = repo.invitation(conn, found.invitation.id)
        if invitation_status(invitation, self.clock.now()) != "pending":
            raise InvalidToken(
                "this invitation was already answered, withdrawn or has expired; "
                "ask the team's owner for a new one"
            )
        return team, invitation

    def _take_mail(self, conn: Connection, team_id: str, address: str) -> None:
        self.throttle.take(
            conn,
            "team.invitation_mail",
            ((f"team:{team_id}", MAIL_PER_TEAM), (f"address:{address}", MAIL_PER_ADDRESS)),
            window=MAIL_WINDOW,
            what="invitation e-mails",
        )

    def _mail(
        self,
        conn: Connection,
        team: Team,
        inviter_id: str,
        invitation: Invitation,
        token: str,
        *,
        resent: bool,
    ) -> str:
        """Queue the invitation's letter (one per token) and return its link."""
        url = self.links.url(INVITATION_PAGE, token=token)
        inviter = accounts_repo.user_by_id(conn, inviter_id)
        invitee = accounts_repo.user_by_email(conn, invitation.email)
        cause = f"invitation:{invitation.id}"
        self.outbox.enqueue(
            conn,
            cause_key=f"{cause}:resend:{digest(token)[:16]}" if resent else cause,
            user_id=None if invitee is None else invitee.id,
            fact=InvitationLetter(
                invitation_id=invitation.id,
                team_id=team.id,
                team_name=team.name,
                inviter_email="" if inviter is None else inviter.email,
                email=invitation.email,
                expires_at=invitation.expires_at,
                url=url,
                resent=resent,
            ),
            to=invitation.email,
            in_app=False,
            sensitive=True,
        )
        return url

    def _tell_owner(
        self, conn: Connection, team: Team, invitation: Invitation, *, accepted: bool
    ) -> None:
        answer = "accepted" if accepted else "declined"
        self.outbox.enqueue(
            conn,
            cause_key=f"invitation:{invitation.id}:{answer}",
            user_id=team.owner_id,
            fact=InvitationAnswered(
                invitation_id=invitation.id,
                team_id=team.id,
                team_name=team.name,
                email=invitation.email,
                accepted=accepted,
            ),
        )

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


def new_token() -> str:
    """An invitation's secret: shown once, stored only as its SHA-256."""
    return INVITATION_PREFIX + secrets.token_urlsafe(32)


def _team_found(found: T | None, team_id: str) -> T:
    """What was read of the team, or ``not_found`` (also for non-members)."""
    if found is None:
        raise TeamNotFound(f"no team {team_id!r}")
    return found

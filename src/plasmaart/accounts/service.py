"""Accounts' use cases: signing up and logging in, creating users, changing
their role, password or settings, and suspending and reinstating them (with
the audit log). The SQL is in ``repository``."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts import repository as repo
from plasmaart.accounts.credentials import CredentialService, NewSession
from plasmaart.accounts.entitlements import NotInPlan, PlanOf, cheapest_plan, watermark_removable
from plasmaart.accounts.notices import AccountReinstated, AccountSuspended, SignupAttempt
from plasmaart.accounts.passwords import (
    MIN_PASSWORD_LENGTH,
    WrongPassword,
    hash_password,
    needs_rehash,
    verify_password,
)
from plasmaart.accounts.repository import Role, Status, User
from plasmaart.accounts.second_factor import OtpInvalid, OtpRequired, SecondFactor
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.errors import Conflict, DomainError, InvalidInput, NotFound
from plasmaart.ids import new_id
from plasmaart.ledger.service import AdjustResult, LedgerService
from plasmaart.outbox import Outbox

__all__ = [
    "AccountService",
    "EmailTaken",
    "Role",
    "SignedIn",
    "Status",
    "User",
    "UserNotFound",
    "WrongCredentials",
    "is_valid_email",
    "normalise_email",
    "validate_credentials",
]

# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability
# is proven by e-mail, not by a regular expression.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@cache
def _dummy_hash() -> str:
    """Verified against when the address is unknown, so both refusals cost the same."""
    return hash_password("not the password of anybody")


class EmailTaken(Conflict):
    code = "email_taken"
    title = "E-mail already registered"

    def __init__(self, detail: str, *, address: str) -> None:
        super().__init__(detail)
        # Not part of the answer: whom ``sign_up`` warns of the attempt.
        self.address = address


class UserNotFound(NotFound):
    pass


class WrongCredentials(DomainError):
    code = "unauthenticated"
    status = 401
    title = "Wrong e-mail or password"


@dataclass(frozen=True)
class SignedIn:
    """A user who signed up or logged in, and their new session."""

    user: User
    session: NewSession


def normalise_email(email: str) -> str:
    return email.strip().lower()


def is_valid_email(address: str) -> bool:
    """The shape check for an already normalised address."""
    return len(address) <= 320 and _EMAIL.match(address) is not None


def validate_credentials(email: str, password: str) -> str:
    address = normalise_email(email)
    errors = []
    if not is_valid_email(address):
        errors.append({"field": "email", "message": "not a valid e-mail address"})
    if len(password) < MIN_PASSWORD_LENGTH:
        errors.append(
            {
                "field": "password",
                "message": f"must be at least {MIN_PASSWORD_LENGTH} characters",
            }
        )
    if errors:
        raise InvalidInput(errors[0]["message"], errors=errors)
    return address


def adjustment_key(actor: str, request_key: str | None) -> str:
    """The ledger key of an admin's credit adjustment: from the request's
    Idempotency-Key when sent (idempotent per actor), else a new one."""
    if not request_key:
        return f"admin:{uuid.uuid4().hex}"
    return "admin:" + hashlib.sha256(f"{actor}:{request_key}".encode()).hexdigest()[:32]


class AccountService:
    """Refusals that must leave a trace (a failed login counted, the owner of
    a registered address warned) are returned, not raised: the caller commits
    the trace, then raises them. Every other refusal is raised and writes nothing."""

    def __init__(
        self,
        clock: Clock,
        ledger: LedgerService,
        credentials: CredentialService,
        catalogs: Catalogs,
        outbox: Outbox,
        *,
        plan_of: PlanOf,
        second_factor: SecondFactor,
    ) -> None:
        self.clock = clock
        # Asked for the code at login when two-factor is on.
        self.second_factor = second_factor
        self.ledger = ledger
        self.credentials = credentials
        # The catalog in force names the cheapest plan that allows a setting.
        self.catalogs = catalogs
        self.plan_of = plan_of
        # Where sign-up attempt, suspension and reinstatement notices are queued.
        self.outbox = outbox

    def log_in(
        self,
        conn: Connection,
        email: str,
        password: str,
        *,
        address: str,
        otp: str | None = None,
        user_agent: str | None = None,
    ) -> SignedIn | WrongCredentials | OtpRequired | OtpInvalid:
        """A new session for these credentials, from the client at ``address``.
        Too many recent failures of the account or of the client are refused
        (``LoginThrottled``) before the password is checked; a wrong password
        is counted. A suspended account logs in too: to a read-only account.

        With two-factor on, the right password is not enough: ``otp`` (a code
        of the authenticator app, or a recovery code) is asked for only once
        the password is right, so ``OtpRequired`` tells nothing to someone
        without it, and writes nothing. A wrong code is counted as a failed
        login and as a wrong code (``second_factor``'s throttle)."""
        email = normalise_email(email)
        self.credentials.check_login_allowed(conn, email, address)
        try:
            user = self.authenticate(conn, email, password)
        except WrongCredentials as wrong:
            self.credentials.record_login_failure(conn, email, address)
            return wrong
        refusal = self.second_factor.check(conn, user, otp)
        if isinstance(refusal, OtpInvalid):
            self.credentials.record_login_failure(conn, email, address)
        if refusal is not None:
            return refusal
        self.credentials.forget_login_failures(conn, email)
        session = self.credentials.open_session(
            conn, user.id, user_agent=user_agent, address=address
        )
        return SignedIn(user, session)

    def create_user(
        self,
        conn: Connection,
        email: str,
        password: str,
        *,
        role: Role = "user",
        actor: str | None = None,
        plan: str | None = None,
        verified: bool | None = None,
    ) -> User:
        """A new user with an empty wallet of their own. ``actor``: who
        creates it for its owner (an operator); the creation is then
        audit-logged, with the ``plan`` they subscribe it to, if any, and the
        address counts as verified (the operator vouches for it) unless
        ``verified`` says otherwise. A sign-up's address is verified by the
        link mailed to it (docs/accounts.md)."""
        address = validate_credentials(email, password)
        if role not in ("user", "admin"):
            raise InvalidInput(f"unknown role {role!r}", field="role")
        if repo.user_by_email(conn, address) is not None:
            # Hashed anyway, so that the refusal takes as long as a sign-up.
            hash_password(password)
            raise EmailTaken(f"{address} is already registered", address=address)
        user_id = new_id("usr")
        now = self.clock.now()
        if verified is None:
            verified = actor is not None
        repo.insert_user(
            conn,
            user_id=user_id,
            email=address,
            password_hash=hash_password(password),
            role=role,
            now=now,
            verified=verified,
        )
        self.ledger.open_wallet(conn, "user", user_id)
        user = User(
            user_id, address, role, "active", now, email_verified_at=now if verified else None
        )
        if actor is not None:
            self._audit(conn, actor, "user.create", user, role=role, plan=plan)
        return user

    def authenticate(self, conn: Connection, email: str, password: str) -> User:
        """The user with these credentials. The same refusal, and about the same
        time, whether the address is unknown or the password wrong."""
        found = repo.login_by_email(conn, normalise_email(email))
        if found is None:
            verify_password(_dummy_hash(), password)
            raise WrongCredentials("wrong e-mail or password")
        user, password_hash = found
        if not verify_password(password_hash, password):
            raise WrongCredentials("wrong e-mail or password")
        if needs_rehash(password_hash):
            repo.set_password_hash(conn, user.id, hash_password(password))
        return user

    def confirm(
        self,
        conn: Connection,
        user: User,
        password: str,
        otp: str | None,
        *,
        wrong: str = "the password is wrong",
    ) -> WrongPassword | OtpRequired | OtpInvalid | None:
        """The owner again, before a sensitive change (the address, deleting
        the account): the password, then the two-factor code when it is on.
        None when both are good; otherwise the refusal, returned (a wrong code
        is counted: the caller commits, then raises it). ``wrong``: what a
        wrong password's refusal says."""
        try:
            self.authenticate(conn, user.email, password)
        except WrongCredentials:
            return WrongPassword(wrong)
        return self.second_factor.check(conn, user, otp)

    def warn_of_signup_attempt(self, conn: Connection, address: str) -> bool:
        """Tell the owner of ``address`` that somebody tried to sign up with
        it: in the app, and by e-mail when SMTP is set. At most once a day
        per account, so repeated attempts cannot flood the owner's inbox.
        False when nothing was queued (no such account, or already told
        today)."""
        row = repo.user_by_email(conn, normalise_email(address))
        if row is None:
            return False
        now = self.clock.now()
        return self.outbox.enqueue(
            conn,
            cause_key=f"account.signup_attempt:{row.id}:{now.date().isoformat()}",
            user_id=row.id,
            fact=SignupAttempt(email=row.email, at=now),
        )

    def get_by_email(self, conn: Connection, email: str) -> User:
        user = repo.user_by_email(conn, normalise_email(email))
        if user is None:
            raise UserNotFound(f"no user with e-mail {normalise_email(email)}")
        return user

    def get(self, conn: Connection, user_id: str) -> User:
        user = repo.user_by_id(conn, user_id)
        if user is None:
            raise UserNotFound(f"no user {user_id!r}")
        return user

    def lock(self, conn: Connection, user_id: str) -> User:
        """``get``, with the user's row locked until ``conn`` ends (the order
        of locks is ``repository.lock_user``'s)."""
        user = repo.lock_user(conn, user_id)
        if user is None:
            raise UserNotFound(f"no user {user_id!r}")
        return user

    def set_role(self, conn: Connection, user: User, role: Role, *, actor: str) -> User:
        """Make ``user`` an admin or a plain user again (audit-logged, even when
        the role was already that one, so the log shows every decision)."""
        if role not in ("user", "admin"):
            raise InvalidInput(f"unknown role {role!r}: admin or user", field="role")
        repo.set_role(conn, user.id, role)
        self._audit(conn, actor, "user.set_role", user, **{"from": user.role, "to": role})
        return replace(user, role=role)

    def set_password(self, conn: Connection, user: User, password: str, *, actor: str) -> None:
        """A new password, under the rules of sign-up (audit-logged, without
        the password). The user's sessions end: signed-in browsers log in
        again (API keys keep working)."""
        validate_credentials(user.email, password)
        repo.set_password_hash(conn, user.id, hash_password(password))
        self.credentials.close_all_sessions(conn, user.id)
        self._audit(conn, actor, "user.set_password", user)

    def set_remove_watermark(self, conn: Connection, user: User, remove: bool) -> User:
        """Remove the watermark from the user's outputs, or put it back.
        Removing it needs a plan that allows it (the user's own plan, now);
        putting it back is always allowed."""
        if remove:
            plan = self.plan_of(conn, self.ledger.wallet_of(conn, "user", user.id))
            if not watermark_removable(plan):
                cheapest = cheapest_plan(self.catalogs.now(conn), watermark_removable)
                raise NotInPlan("watermark removal is", plan, cheapest, it="it")
        repo.set_remove_watermark(conn, user.id, remove)
        return replace(user, remove_watermark=remove)

    def adjust_credits(
        self,
        conn: Connection,
        user_id: str,
        amount: int,
        *,
        reason: str,
        expires_at: datetime | None,
        idempotency_key: str,
        actor: str,
        **data: object,
    ) -> AdjustResult:
        """An operator grants ``amount`` credits to the user's own wallet (a
        negative amount adjusts down, never below zero): audit-logged with
        the reason, and ``data`` beside the amount. ``adjustment_key`` makes
        an admin request's key."""
        user = self.get(conn, user_id)
        wallet = self.ledger.wallet_of(conn, "user", user.id)
        result = self.ledger.adjust(
            conn,
            wallet,
            amount,
            reason=reason,
            expires_at=expires_at,
            idempotency_key=idempotency_key,
        )
        audit.record(
            conn,
            actor=actor,
            action="credits.adjust",
            target=user.id,
            reason=reason,
            now=self.clock.now(),
            data={"amount": amount, "expires_at": expires_at, **data},
        )
        return result

    def set_status(
        self, conn: Connection, user: User, status: Status, *, actor: str, reason: str | None
    ) -> User:
        if status == "suspended" and not (reason and reason.strip()):
            raise InvalidInput("a suspension needs a reason", field="reason")
        repo.set_status(conn, user.id, status, reason)
        action = "user.suspend" if status == "suspended" else "user.reinstate"
        if user.status != status:
            self.outbox.enqueue(
                conn,
                # Each suspension and each reinstatement is its own cause, queued
                # in the transaction that makes it: no other code path can repeat it.
                cause_key=f"account.{status}:{user.id}:{new_id('evt')}",
                user_id=user.id,
                fact=AccountSuspended(reason) if status == "suspended" else AccountReinstated(),
            )
        self._audit(conn, actor, action, user, reason=reason)
        return replace(user, status=status, status_reason=reason)

    def _audit(
        self,
        conn: Connection,
        actor: str,
        action: str,
        user: User,
        *,
        reason: str | None = None,
        **data: object,
    ) -> None:
        """An entry about ``user`` (named by e-mail in its data) in the audit log."""
        now = self.clock.now()
        entry = {"email": user.email, **data}
        audit.record(
            conn, actor=actor, action=action, target=user.id, reason=reason, now=now, data=entry
        )

"""Creating users, changing their role or password, and suspending and
reinstating them (with the audit log)."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from typing import Literal

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts import repository as repo
from plasmaart.accounts.passwords import (
    MIN_PASSWORD_LENGTH,
    hash_password,
    needs_rehash,
    verify_password,
)
from plasmaart.clock import Clock, as_utc
from plasmaart.errors import Conflict, DomainError, InvalidInput, NotFound
from plasmaart.ids import new_id
from plasmaart.ledger.service import AdjustResult, LedgerService
from plasmaart.notify.outbox import Outbox

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
        # Not part of the answer: the route mails the address's owner.
        self.address = address


class UserNotFound(NotFound):
    pass


class WrongCredentials(DomainError):
    code = "unauthenticated"
    status = 401
    title = "Wrong e-mail or password"


Role = Literal["user", "admin"]
Status = Literal["active", "suspended"]


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: Role
    status: Status
    created_at: datetime
    remove_watermark: bool = False
    # Why the account is suspended (None while active), as shown to the user.
    status_reason: str | None = None


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


class AccountService:
    def __init__(self, clock: Clock, ledger: LedgerService) -> None:
        self.clock = clock
        self.ledger = ledger
        # Where suspension and reinstatement notices are queued, if anywhere.
        self.outbox: Outbox | None = None

    def create_user(
        self, conn: Connection, email: str, password: str, *, role: Role = "user"
    ) -> User:
        """A new user with an empty wallet of their own."""
        address = validate_credentials(email, password)
        if role not in ("user", "admin"):
            raise InvalidInput(f"unknown role {role!r}", field="role")
        if repo.user_by_email(conn, address) is not None:
            # Hashed anyway, so that the refusal takes as long as a sign-up.
            hash_password(password)
            raise EmailTaken(f"{address} is already registered", address=address)
        user_id = new_id("usr")
        now = self.clock.now()
        repo.insert_user(
            conn,
            user_id=user_id,
            email=address,
            password_hash=hash_password(password),
            role=role,
            now=now,
        )
        self.ledger.open_wallet(conn, "user", user_id)
        return User(user_id, address, role, "active", now)

    def authenticate(self, conn: Connection, email: str, password: str) -> User:
        """The user with these credentials. The same refusal, and about the same
        time, whether the address is unknown or the password wrong."""
        row = repo.user_by_email(conn, normalise_email(email))
        if row is None:
            verify_password(_dummy_hash(), password)
            raise WrongCredentials("wrong e-mail or password")
        if not verify_password(row.password_hash, password):
            raise WrongCredentials("wrong e-mail or password")
        if needs_rehash(row.password_hash):
            repo.set_password_hash(conn, row.id, hash_password(password))
        return _user(row)

    def warn_of_signup_attempt(self, conn: Connection, address: str) -> bool:
        """Tell the owner of ``address`` that somebody tried to sign up with
        it: in the app, and by e-mail when SMTP is set. At most once a day
        per account, so repeated attempts cannot flood the owner's inbox.
        False when nothing was queued (no such account, already told today,
        or no outbox)."""
        row = repo.user_by_email(conn, normalise_email(address))
        if row is None or self.outbox is None:
            return False
        now = self.clock.now()
        return self.outbox.enqueue(
            conn,
            cause_key=f"account.signup_attempt:{row.id}:{now.date().isoformat()}",
            user_id=row.id,
            kind="account.signup_attempt",
            title="Someone tried to sign up with your address",
            body=(
                f"Someone tried to create a new PlasmaArt account with {row.email} "
                f"on {now:%Y-%m-%d at %H:%M} UTC. This address already has an "
                "account, so nothing was created and your account is unchanged. "
                "If it was you, log in with your password instead. If it was "
                "not you, you can ignore this message."
            ),
            data={"email": row.email},
        )

    def get_by_email(self, conn: Connection, email: str) -> User:
        row = repo.user_by_email(conn, normalise_email(email))
        if row is None:
            raise UserNotFound(f"no user with e-mail {normalise_email(email)}")
        return _user(row)

    def get(self, conn: Connection, user_id: str) -> User:
        row = repo.user_by_id(conn, user_id)
        if row is None:
            raise UserNotFound(f"no user {user_id!r}")
        return _user(row)

    def lock(self, conn: Connection, user_id: str) -> User:
        """``get``, with the user's row locked until ``conn`` ends (the order
        of locks is ``repository.lock_user``'s)."""
        row = repo.lock_user(conn, user_id)
        if row is None:
            raise UserNotFound(f"no user {user_id!r}")
        return _user(row)

    def adjust_credits(
        self,
        conn: Connection,
        user_id: str,
        amount: int,
        *,
        reason: str,
        expires_at: datetime | None,
        request_key: str | None,
        actor: str,
    ) -> AdjustResult:
        """An admin's grant (``amount`` > 0) or correction down (< 0, never
        below zero) of the user's own wallet, audit-logged. ``request_key``
        (the request's Idempotency-Key, when sent) makes the movement
        itself idempotent per actor; without one, each call is a new one."""
        user = self.get(conn, user_id)
        wallet = self.ledger.wallet_of(conn, "user", user.id)
        if not request_key:
            key = f"admin:{uuid.uuid4().hex}"
        else:
            key = "admin:" + hashlib.sha256(f"{actor}:{request_key}".encode()).hexdigest()[:32]
        result = self.ledger.adjust(
            conn, wallet, amount, reason=reason, expires_at=expires_at, idempotency_key=key
        )
        audit.record(
            conn,
            actor=actor,
            action="credits.adjust",
            target=user.id,
            reason=reason,
            now=self.clock.now(),
            data={"amount": amount, "expires_at": expires_at},
        )
        return result

    def set_role(self, conn: Connection, user: User, role: Role, *, actor: str) -> User:
        """Make ``user`` an admin or a plain user again (audit-logged, even when
        the role was already that one, so the log shows every decision)."""
        if role not in ("user", "admin"):
            raise InvalidInput(f"unknown role {role!r}: admin or user", field="role")
        repo.set_role(conn, user.id, role)
        audit.record(
            conn,
            actor=actor,
            action="user.set_role",
            target=user.id,
            reason=None,
            now=self.clock.now(),
            data={"email": user.email, "from": user.role, "to": role},
        )
        return replace(user, role=role)

    def set_password(self, conn: Connection, user: User, password: str, *, actor: str) -> None:
        """A new password, under the rules of sign-up (audit-logged, without
        the password). Ending the user's sessions is the caller's part, in the
        same transaction (``CredentialService.close_all_sessions``)."""
        validate_credentials(user.email, password)
        repo.set_password_hash(conn, user.id, hash_password(password))
        audit.record(
            conn,
            actor=actor,
            action="user.set_password",
            target=user.id,
            reason=None,
            now=self.clock.now(),
            data={"email": user.email},
        )

    def set_remove_watermark(self, conn: Connection, user: User, remove: bool) -> User:
        repo.set_remove_watermark(conn, user.id, remove)
        return replace(user, remove_watermark=remove)

    def set_status(
        self, conn: Connection, user: User, status: Status, *, actor: str, reason: str | None
    ) -> User:
        if status == "suspended" and not (reason and reason.strip()):
            raise InvalidInput("a suspension needs a reason", field="reason")
        repo.set_status(conn, user.id, status, reason)
        action = "user.suspend" if status == "suspended" else "user.reinstate"
        if self.outbox is not None and user.status != status:
            _queue_status_notice(self.outbox, conn, user, status, reason)
        audit.record(
            conn,
            actor=actor,
            action=action,
            target=user.id,
            reason=reason,
            now=self.clock.now(),
            data={"email": user.email},
        )
        return replace(user, status=status, status_reason=reason)


def _queue_status_notice(
    outbox: Outbox,
    conn: Connection,
    user: User,
    status: Status,
    reason: str | None,
) -> None:
    if status == "suspended":
        title = "Your account is suspended"
        body = (
            f"Your account was suspended: {reason}. It is read-only: you can still "
            "log in, see your balance, payments and generations, download your "
            "outputs and cancel your subscription, but not generate or buy. Queued "
            "generations were canceled with their credits released, and your "
            "subscription will not renew while the account is suspended. "
            "Contact support if you think this is a mistake."
        )
    else:
        title = "Your account is reinstated"
        body = (
            "Your account is active again; you can generate as before. A "
            "subscription still in its period renews as usual, unless you canceled it."
        )
    outbox.enqueue(
        conn,
        # Each suspension and each reinstatement is its own cause, queued in
        # the transaction that makes it: no other code path can repeat it.
        cause_key=f"account.{status}:{user.id}:{new_id('evt')}",
        user_id=user.id,
        kind="account.suspended" if status == "suspended" else "account.reinstated",
        title=title,
        body=body,
        data={"status": status},
    )


def _user(row: repo.AnyRow) -> User:
    return User(
        row.id,
        row.email,
        row.role,
        row.status,
        as_utc(row.created_at),
        bool(row.remove_watermark),
        row.status_reason,
    )

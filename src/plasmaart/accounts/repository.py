"""Accounts' SQL: the users table. Rows come back as the frozen ``User``
below (and, for a login, with the password's hash beside it), or, for the
admin's user list, as ``UserBalances`` (the user with their own wallet's
balances)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, Row, insert, or_, select, update

from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import users, wallets

AnyRow = Row[*tuple[Any, ...]]

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
    # When the address was proven the owner's; None: not yet (docs/accounts.md).
    email_verified_at: datetime | None = None
    # Whether TOTP two-factor is on (its secret never leaves the repository
    # but through ``second_factor``).
    two_factor: bool = False

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class StoredLogin(NamedTuple):
    """A user with the hash their password is checked against."""

    user: User
    password_hash: str


@dataclass(frozen=True)
class UserBalances:
    """A user with their own wallet (None until it is opened) and its balances."""

    id: str
    email: str
    role: Role
    status: Status
    status_reason: str | None
    created_at: datetime
    wallet_id: str | None
    available: int
    held: int
    # When the account was deleted (its address is then anonymized).
    deleted_at: datetime | None


@dataclass(frozen=True)
class UserSearch:
    """Which users the admin lists, newest first: ``q``, part of an e-mail or
    an id; ``before``, the id after which the page starts (the cursor);
    ``user_id``, that one user alone."""

    limit: int
    q: str | None = None
    status: Status | None = None
    before: str | None = None
    user_id: str | None = None


def insert_user(
    conn: Connection,
    *,
    user_id: str,
    email: str,
    password_hash: str,
    role: str,
    now: datetime,
    verified: bool = False,
) -> None:
    conn.execute(
        insert(users).values(
            id=user_id,
            email=email,
            password_hash=password_hash,
            role=role,
            status="active",
            created_at=now,
            email_verified_at=now if verified else None,
        )
    )


def login_by_email(conn: Connection, email: str) -> StoredLogin | None:
    row = conn.execute(select(users).where(users.c.email == email)).one_or_none()
    return None if row is None else StoredLogin(_user(row), row.password_hash)


def user_by_email(conn: Connection, email: str) -> User | None:
    found = login_by_email(conn, email)
    return None if found is None else found.user


def lock_user(conn: Connection, user_id: str) -> User | None:
    """The user, their row locked (PostgreSQL; SQLite's write transactions are
    serial already). A transaction that may both move an account's credits
    and score a fair-use signal about it locks the account first, then its
    wallets, the order a suspension takes them in: two such transactions
    never wait on each other in a deadlock, and one account's signals are
    scored one at a time, so two requests cannot both open a flag.

    The lock is ``FOR NO KEY UPDATE``: it does not block the key-share lock
    that a foreign key to the user takes. A submission locks only its wallet
    and then inserts a job that refers to its user; with ``FOR UPDATE`` a
    suspension holding the user and waiting for that wallet would deadlock
    with it."""
    locked = select(users).where(users.c.id == user_id).with_for_update(key_share=True)
    row = conn.execute(locked).one_or_none()
    return None if row is None else _user(row)


def user_by_id(conn: Connection, user_id: str) -> User | None:
    row = conn.execute(select(users).where(users.c.id == user_id)).one_or_none()
    return None if row is None else _user(row)


def set_status(conn: Connection, user_id: str, status: str, reason: str | None) -> None:
    conn.execute(
        update(users).where(users.c.id == user_id).values(status=status, status_reason=reason)
    )
    invalidate(conn, f"user:{user_id}")


def set_password_hash(conn: Connection, user_id: str, password_hash: str) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))
    invalidate(conn, f"user:{user_id}")


def set_role(conn: Connection, user_id: str, role: str) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(role=role))
    invalidate(conn, f"user:{user_id}")


def set_remove_watermark(conn: Connection, user_id: str, remove: bool) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(remove_watermark=remove))
    invalidate(conn, f"user:{user_id}")


def _user(row: AnyRow) -> User:
    return User(
        row.id,
        row.email,
        row.role,
        row.status,
        as_utc(row.created_at),
        bool(row.remove_watermark),
        row.status_reason,
        None if row.email_verified_at is None else as_utc(row.email_verified_at),
        row.totp_secret is not None,
    )


def users_with_balances(conn: Connection, search: UserSearch) -> list[UserBalances]:
    """The users ``search`` finds, each with their wallet's balances, in one query."""
    query = (
        select(
            users,
            wallets.c.id.label("wallet_id"),
            wallets.c.available,
            wallets.c.held,
        )
        .select_from(
            users.outerjoin(
                wallets, (wallets.c.owner_kind == "user") & (wallets.c.owner_id == users.c.id)
            )
        )
        .order_by(users.c.id.desc())
        .limit(search.limit)
    )
    if search.q:
        term = search.q.strip()
        pattern = (
            "%" + term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        query = query.where(or_(users.c.email.like(pattern, escape="\\"), users.c.id == term))
    if search.status:
        query = query.where(users.c.status == search.status)
    if search.before:
        query = query.where(users.c.id < search.before)
    if search.user_id:
        query = query.where(users.c.id == search.user_id)
    return [
        UserBalances(
            row.id,
            row.email,
            row.role,
            row.status,
            row.status_reason,
            as_utc(row.created_at),
            row.wallet_id,
            int(row.available or 0),
            int(row.held or 0),
            None if row.deleted_at is None else as_utc(row.deleted_at),
        )
        for row in conn.execute(query)
    ]

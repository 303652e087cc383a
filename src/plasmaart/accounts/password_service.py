"""Password reset by e-mail, changing the password, and the list of one's
sessions with revoke (docs/accounts.md, "Password reset" and "Password and
sessions").

A reset request answers the same whatever the address (no enumeration): the
same work is done for an unknown address as for a registered one but the
writes, and the throttle counts requests per address whether or not it is
registered, so its refusals tell nothing either. A reset link is a
single-use token (``AccountTokens``, 30 minutes, stored hashed). Using it
sets the new password, ends every session of the account, voids its other
reset links, clears the failed logins of the address, tells the address, and
opens a session for the browser that used it. With two-factor on, the link
alone is not enough: the code is asked too.

Refusals that must leave a trace (a wrong current password counted as a
failed login, a wrong two-factor code counted) are returned, not raised:
the caller commits the trace, then raises them. Every other refusal is
raised and writes nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts import repository as accounts_repo
from plasmaart.accounts import sessions_repository as repo
from plasmaart.accounts.credentials import digest
from plasmaart.accounts.password_notices import PasswordChanged, PasswordResetLink
from plasmaart.accounts.passwords import MIN_PASSWORD_LENGTH, WrongPassword, hash_password
from plasmaart.accounts.second_factor import OtpInvalid, OtpRequired
from plasmaart.accounts.self_service import AccountFlow
from plasmaart.accounts.service import (
    SignedIn,
    User,
    WrongCredentials,
    is_valid_email,
    normalise_email,
)
from plasmaart.accounts.sessions_repository import SessionRecord
from plasmaart.accounts.tokens import LIFETIMES
from plasmaart.errors import InvalidInput, InvalidToken, NotFound
from plasmaart.ids import new_id

__all__ = [
    "RESETS_PER_ADDRESS",
    "RESETS_PER_CLIENT",
    "PasswordService",
    "SessionRecord",
    "WrongPassword",
]

# Reset requests: per address (registered or not) and per client address.
RESETS_PER_ADDRESS = 3
RESET_ADDRESS_WINDOW = timedelta(minutes=15)
RESETS_PER_CLIENT = 20
RESET_CLIENT_WINDOW = timedelta(hours=1)
RESET_PATH = "/reset-password"
FORGOT_PATH = "/forgot-password"
# No user has this id (ids are ``usr_`` and 26 characters).
NOBODY = "usr_nobody"
_INVALID_LINK = "this link is not valid: it was used already, expired or mistyped"


@dataclass(frozen=True)
class SessionPage:
    sessions: list[SessionRecord]
    more: bool


class PasswordService(AccountFlow):
    """Password reset by e-mail, the change of a password, the sessions."""

    # -- reset by e-mail -----------------------------------------------------

    def request_reset(self, conn: Connection, email: str, *, client: str) -> None:
        """Mail a reset link to ``email`` if it is a registered account's; the
        same outcome, and about the same work, if it is not. At most
        ``RESETS_PER_ADDRESS`` requests per address in 15 minutes and
        ``RESETS_PER_CLIENT`` per client address in an hour (``Throttled``,
        nothing counted then)."""
        address = normalise_email(email)
        if not is_valid_email(address):
            raise InvalidInput("not a valid e-mail address", field="email")
        self.throttle.take(
            conn,
            "password_reset.client",
            ((client, RESETS_PER_CLIENT),),
            window=RESET_CLIENT_WINDOW,
            what="password reset requests from this address",
        )
        self.throttle.take(
            conn,
            "password_reset.email",
            ((address, RESETS_PER_ADDRESS),),
            window=RESET_ADDRESS_WINDOW,
            what="password reset requests for this e-mail address",
        )
        account = repo.reset_account(conn, address)
        minutes = int(LIFETIMES["password_reset"].total_seconds() // 60)
        if account is None:
            # The same statement as issuing's first (it matches no row), and
            # the same token, hash, link and letter, kept by nobody.
            self.tokens.retire(conn, NOBODY, ("password_reset",))
            decoy = secrets.token_urlsafe(32)
            digest(decoy)
            url = self.links.url(RESET_PATH, token=decoy)
            self.outbox.render(PasswordResetLink(email=address, url=url, minutes=minutes))
            return
        token = self.tokens.issue(
            conn, "password_reset", user_id=account.user_id, email=account.email
        )
        self.outbox.enqueue(
            conn,
            cause_key=f"account.password_reset:{account.user_id}:{new_id('evt')}",
            user_id=account.user_id,
            fact=PasswordResetLink(
                email=account.email, url=self.links.url(RESET_PATH, token=token), minutes=minutes
            ),
            in_app=False,
            sensitive=True,
        )

    def check_reset_link(self, conn: Connection, token: str) -> User:
        """Whom a reset link is for, without spending it (the page that asks
        for the new password shows at once whether the link still works, and
        whether the account asks for a two-factor code); ``InvalidToken`` if
        it is unknown, used, expired, or no longer the account's address."""
        grant = self.tokens.peek(conn, "password_reset", token)
        user = self.accounts.get(conn, grant.user_id)
        if repo.is_deleted(conn, user.id) or user.email != grant.email:
            raise InvalidToken(_INVALID_LINK)
        return user

    def confirm_reset(
        self,
        conn: Connection,
        token: str,
        password: str,
        otp: str | None,
        *,
        user_agent: str | None,
        client: str,
    ) -> SignedIn | OtpRequired | OtpInvalid:
        """Set a new password with a reset link: every session of the account
        ends, a new one opens for this browser, the other reset links are
        void, the failed logins of the address are forgotten, and the address
        is told. With two-factor on, ``otp`` is required; a missing or wrong
        code is returned (a wrong one counted) and the link is not spent."""
        user = self.check_reset_link(conn, token)
        _check_new_password(password, field="password")
        refusal = self.second_factor.check(conn, user, otp)
        if refusal is not None:
            return refusal
        self.tokens.use(conn, "password_reset", token)  # of two racing requests, one wins
        accounts_repo.set_password_hash(conn, user.id, hash_password(password))
        self.tokens.retire(conn, user.id, ("password_reset",))
        self.credentials.close_all_sessions(conn, user.id)
        self.credentials.forget_login_failures(conn, user.email)
        self._changed(conn, user, "reset", client)
        session = self.credentials.open_session(
            conn, user.id, user_agent=user_agent, address=client
        )
        return SignedIn(user, session)

    # -- changing it ----------------------------------------------------------

    def change_password(
        self,
        conn: Connection,
        user: User,
        current_password: str,
        new_password: str,
        otp: str | None,
        *,
        session_token: str | None,
        client: str,
    ) -> int | WrongPassword | OtpRequired | OtpInvalid:
        """A new password, the current one given (a wrong one is counted as
        a failed login of the account and of the client, so it cannot be
        guessed here either) and the two-factor code when it is on. Every
        other session ends (``session_token``: the caller's, which stays;
        None for an API key: every session ends); the address is told. How
        many sessions ended."""
        self.credentials.check_login_allowed(conn, user.email, client)
        _check_new_password(new_password, field="new_password")
        try:
            self.accounts.authenticate(conn, user.email, current_password)
        except WrongCredentials:
            self.credentials.record_login_failure(conn, user.email, client)
            return WrongPassword(
                "the current password is wrong",
                errors=[{"field": "current_password", "message": "This is not your password."}],
            )
        if secrets.compare_digest(current_password.encode(), new_password.encode()):
            raise InvalidInput(
                "choose a password different from the current one", field="new_password"
            )
        refusal = self.second_factor.check(conn, user, otp)
        if refusal is not None:
            return refusal
        accounts_repo.set_password_hash(conn, user.id, hash_password(new_password))
        keep = None if session_token is None else digest(session_token)
        ended = repo.delete_other_sessions(conn, user.id, keep)
        self.tokens.retire(conn, user.id, ("password_reset",))
        self._changed(conn, user, "change", client)
        return ended

    def _changed(
        self, conn: Connection, user: User, how: Literal["reset", "change"], client: str
    ) -> None:
        now = self.clock.now()
        self.outbox.enqueue(
            conn,
            cause_key=f"account.password_changed:{user.id}:{new_id('evt')}",
            user_id=user.id,
            fact=PasswordChanged(
                email=user.email,
                at=now,
                how=how,
                address=client,
                support_email=self.support_email,
                forgot_url=self.links.url(FORGOT_PATH),
            ),
        )
        audit.record(
            conn,
            actor=user.id,
            action=f"user.password_{how}",
            target=user.id,
            reason=None,
            now=now,
            data={"email": user.email, "address": client},
        )

    # -- sessions -------------------------------------------------------------

    def sessions(
        self,
        conn: Connection,
        user: User,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> SessionPage:
        """The user's live sessions, the most recently opened first."""
        found = repo.live_sessions(
            conn, user.id, now=self.clock.now(), limit=limit + 1, after=after
        )
        return SessionPage(found[:limit], len(found) > limit)

    def revoke_session(self, conn: Connection, user: User, session_id: str) -> None:
        """End one of the user's sessions (the caller's own too: that logs
        out); another user's session is ``NotFound``, as an unknown id."""
        if not repo.delete_session_of(conn, user.id, session_id):
            raise NotFound(f"no session {session_id!r}")


def _check_new_password(password: str, *, field: str) -> None:
    """The rule of sign-up (passwords.MIN_PASSWORD_LENGTH), the refusal naming ``field``."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"must be at least {MIN_PASSWORD_LENGTH} characters", field=field)

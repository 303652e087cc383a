"""Proving an account's address, changing it, and welcoming a new account
(docs/accounts.md, "Address verification").

* Sign-up queues the welcome mail (first steps) and, while verification is
  required, the link that proves the address. Two mails, not one: the link's
  body is blanked once sent (it carries a token), while the welcome stays in
  the app's notifications to be read again.
* While verification is required, sign-up answers alike for a new address
  and a registered one (``SignupAccepted``, no session): the new account is
  mailed its link, the registered address's owner the "someone tried to sign
  up" notice. The password is hashed either way, so the time tells nothing.
  Without verification, sign-up logs the new account in and a registered
  address is refused (``EmailTaken``), as the contract always said.
* A change of address needs the current password (and a two-factor code when
  it is on). The link goes to the new address; the current one is told of
  the request and, once the link is used, of the change. A change to an
  address that has an account answers the same, and records the same
  pending change, but no link is mailed: the owner of that address gets a
  notice that changes nothing for them.
* The link of either purpose is used through ``verify``, which also opens a
  session for a browser that has none (the link proves the mailbox, as a
  password-reset link does).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import Connection

from plasmaart.accounts import addresses_repository as repo
from plasmaart.accounts import repository as users_repo
from plasmaart.accounts.address_notices import (
    AddressChanged,
    AddressChangeLink,
    AddressChangeRequested,
    AddressInUse,
    VerificationLink,
    Welcome,
)
from plasmaart.accounts.credentials import NewSession
from plasmaart.accounts.passwords import WrongPassword
from plasmaart.accounts.second_factor import OtpInvalid, OtpRequired
from plasmaart.accounts.self_service import AccountFlow, SelfServiceParts
from plasmaart.accounts.service import (
    EmailTaken,
    SignedIn,
    User,
    UserNotFound,
    is_valid_email,
    normalise_email,
)
from plasmaart.accounts.tokens import LIFETIMES
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.catalog.rules import plan_models
from plasmaart.errors import InvalidInput, InvalidToken
from plasmaart.ids import new_id

__all__ = [
    "CHANGES_PER_HOUR",
    "RESENDS_PER_HOUR",
    "VERIFY_PATH",
    "AddressService",
    "SignupAccepted",
    "Verified",
    "WrongPassword",
]

VERIFY_PATH = "/verify-email"
# A resend mails the account's own address: three an hour is plenty for a
# person and no use to someone flooding an inbox.
RESENDS_PER_HOUR = 3
# Requests to change the address, wrong passwords included (so the endpoint
# cannot be used to guess the password of a stolen session's account).
CHANGES_PER_HOUR = 5
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class SignupAccepted:
    """Sign-up's answer while verification is required, the same for a new
    address and a registered one: check the inbox."""

    email: str


@dataclass(frozen=True)
class Verified:
    """A link used: the user now, the session opened for a browser that had
    none, and the address it replaced (a change of address)."""

    user: User
    session: NewSession | None
    changed_from: str | None


def _days(purpose: str) -> int:
    return LIFETIMES["email_change" if purpose == "email_change" else "email_verification"].days


class AddressService(AccountFlow):
    def __init__(self, parts: SelfServiceParts, catalogs: Catalogs, *, required: bool) -> None:
        super().__init__(parts)
        # The Free plan's allowance and the cheapest model and pack, in the welcome.
        self.catalogs = catalogs
        # settings.email_verification_required
        self.required = required

    # -- sign-up ---------------------------------------------------------------

    def sign_up(
        self,
        conn: Connection,
        email: str,
        password: str,
        *,
        user_agent: str | None = None,
        address: str | None = None,
    ) -> SignedIn | SignupAccepted | EmailTaken:
        """A new account on the Free plan, welcomed. While verification is
        required: ``SignupAccepted`` whether the address was new (its link
        mailed) or registered (its owner told); otherwise the new account is
        logged in and a registered address is refused (returned, after its
        owner is told)."""
        try:
            user = self.accounts.create_user(conn, email, password)
        except EmailTaken as taken:
            self.accounts.warn_of_signup_attempt(conn, taken.address)
            return SignupAccepted(taken.address) if self.required else taken
        self._welcome(conn, user)
        if self.required:
            self._mail_verification_link(conn, user, cause="signup")
            return SignupAccepted(user.email)
        session = self.credentials.open_session(
            conn, user.id, user_agent=user_agent, address=address
        )
        return SignedIn(user, session)

    # -- proving the address -----------------------------------------------------

    def resend(self, conn: Connection, user: User) -> bool:
        """Mail a new link to the user's address (older ones stop working);
        False, with nothing sent or counted, when it is proven already.
        ``Throttled`` past ``RESENDS_PER_HOUR``."""
        if user.email_verified:
            return False
        self.throttle.take(
            conn,
            "email_verification.resend",
            ((user.id, RESENDS_PER_HOUR),),
            window=HOUR,
            what="verification mails",
        )
        self._mail_verification_link(conn, user, cause=new_id("evt"))
        return True

    def verify(
        self,
        conn: Connection,
        token: str,
        *,
        open_session: bool,
        user_agent: str | None = None,
        address: str | None = None,
    ) -> Verified:
        """Use a link: prove the address it was mailed to (a verification
        link), or make it the account's (a change-of-address link). With
        ``open_session``, log the browser in. ``InvalidToken`` (nothing
        written) for a link unknown, used, expired, or of an address the
        account no longer has; ``EmailTaken`` when the new address was
        registered by another account since the link was mailed."""
        try:
            grant = self.tokens.use(conn, "email_verification", token)
            purpose = "email_verification"
        except InvalidToken:
            grant = self.tokens.use(conn, "email_change", token)
            purpose = "email_change"
        try:
            user = self.accounts.lock(conn, grant.user_id)
        except UserNotFound:
            raise self._invalid() from None
        now = self.clock.now()
        changed_from = None
        if purpose == "email_verification":
            if user.email != grant.email:
                raise self._invalid()  # mailed to an address the account has left
            if not user.email_verified:
                repo.mark_verified(conn, user.id, user.email, now)
                user = replace(user, email_verified_at=now)
        else:
            holder = users_repo.user_by_email(conn, grant.email)
            if holder is not None and holder.id != user.id:
                raise EmailTaken(f"{grant.email} is already registered", address=grant.email)
            changed_from = user.email
            repo.change_email(conn, user.id, user.email, grant.email, now)
            # Links mailed to the old address must not work any more.
            self.tokens.retire(conn, user.id, ("password_reset", "email_verification"))
            self.outbox.enqueue(
                conn,
                cause_key=f"account.email_changed:{grant.id}",
                user_id=user.id,
                fact=AddressChanged(old_email=changed_from, new_email=grant.email, at=now),
                to=changed_from,
            )
            user = replace(user, email=grant.email, email_verified_at=now)
        session = None
        if open_session:
            session = self.credentials.open_session(
                conn, user.id, user_agent=user_agent, address=address
            )
        return Verified(user, session, changed_from)

    # -- changing the address ------------------------------------------------------

    def request_change(
        self,
        conn: Connection,
        user: User,
        new_email: str,
        *,
        password: str,
        otp: str | None,
    ) -> str | WrongPassword | OtpRequired | OtpInvalid:
        """Ask to make ``new_email`` the account's address; the address now
        pending. A wrong password or two-factor code is returned (counted:
        the caller commits, then raises it)."""
        address = normalise_email(new_email)
        if not is_valid_email(address):
            raise InvalidInput("not a valid e-mail address", field="email")
        if address == user.email:
            raise InvalidInput("this is your address already", field="email")
        self.throttle.take(
            conn,
            "email_change",
            ((user.id, CHANGES_PER_HOUR),),
            window=HOUR,
            what="requests to change the address",
        )
        refusal = self.accounts.confirm(conn, user, password, otp)
        if refusal is not None:
            return refusal
        now = self.clock.now()
        cause = new_id("evt")
        token = self.tokens.issue(conn, "email_change", user_id=user.id, email=address)
        holder = users_repo.user_by_email(conn, address)
        if holder is None:
            self.outbox.enqueue(
                conn,
                cause_key=f"account.email_change_link:{user.id}:{cause}",
                user_id=user.id,
                fact=AddressChangeLink(
                    old_email=user.email,
                    new_email=address,
                    url=self.links.url(VERIFY_PATH, token=token),
                    valid_days=_days("email_change"),
                ),
                to=address,
                in_app=False,
                sensitive=True,
            )
        else:
            # The same answer and the same pending change, but no link: the
            # owner is told, at most once a day, that nothing changes for them.
            self.outbox.enqueue(
                conn,
                cause_key=f"account.email_change_attempt:{holder.id}:{now.date().isoformat()}",
                user_id=holder.id,
                fact=AddressInUse(email=holder.email, at=now),
                in_app=False,
            )
        self.outbox.enqueue(
            conn,
            cause_key=f"account.email_change_requested:{user.id}:{cause}",
            user_id=user.id,
            fact=AddressChangeRequested(old_email=user.email, new_email=address, at=now),
        )
        return address

    def pending_email(self, conn: Connection, user_id: str) -> str | None:
        """The address a change waits to make the account's, if any."""
        return repo.pending_email(conn, user_id, self.clock.now())

    # -- internals -------------------------------------------------------------

    def _invalid(self) -> InvalidToken:
        return InvalidToken("this link is not valid: it was used already, expired or mistyped")

    def _mail_verification_link(self, conn: Connection, user: User, *, cause: str) -> None:
        token = self.tokens.issue(conn, "email_verification", user_id=user.id, email=user.email)
        self.outbox.enqueue(
            conn,
            cause_key=f"account.verify_email:{user.id}:{cause}",
            user_id=user.id,
            fact=VerificationLink(
                email=user.email,
                url=self.links.url(VERIFY_PATH, token=token),
                valid_days=_days("email_verification"),
            ),
            in_app=False,
            sensitive=True,
        )

    def _welcome(self, conn: Connection, user: User) -> None:
        catalog = self.catalogs.now(conn)
        free = catalog.default_plan
        models = plan_models(catalog, free) or catalog.models
        cheapest = min(models, key=lambda m: (m.credits, m.name))
        pack = min(catalog.credit_packs, key=lambda p: (p.price_cents, p.id))
        self.outbox.enqueue(
            conn,
            cause_key=f"account.welcome:{user.id}",
            user_id=user.id,
            fact=Welcome(
                email=user.email,
                plan_name=free.name,
                monthly_credits=free.monthly_credits,
                cheapest_model=cheapest.name,
                cheapest_model_credits=cheapest.credits,
                pack_credits=pack.credits,
                pack_price_cents=pack.price_cents,
                pack_currency=catalog.currency,
                verify_first=self.required,
                create_url=self.links.url("/create"),
                billing_url=self.links.url("/billing"),
                settings_url=self.links.url("/settings"),
                docs_url=self.links.url("/docs"),
                support_email=self.support_email,
            ),
        )

"""Deleting an account (``DELETE /v1/me``): the one home of it.

The owner confirms with their password (and their two-factor code when it
is on). Then, in the caller's one transaction:

- the subscription ends now, at the provider too (Stripe is called first:
  if it cannot be reached the deletion is refused, ``unavailable``, and
  nothing is written);
- the account's unfinished generations, and those that spend its wallet
  (the members' of a team it owns), are canceled and their holds released;
- a team the account owns is dissolved: its members leave it and are told,
  its pending invitations are withdrawn; the account leaves the teams it
  belongs to;
- its sessions end, its API keys are revoked, its single-use links,
  recovery codes and TOTP secret are deleted;
- the credits left in its wallet are forfeited by a ledger adjustment (the
  journal says so, and ``ledger verify`` holds);
- its personal data is erased: the address becomes
  ``deleted-<id>@deleted.invalid``, the password hash unusable, prompts and
  parameters of its generations, its notifications and its unsent mail are
  deleted, failed logins and throttled requests of its address too, and the
  audit log no longer names the address;
- the goodbye letter is queued to the address it had.

The files (outputs, uploads) are removed from storage once that commits
(``remove_files``): their rows stay until each file is gone, so a crash in
between leaves rows that the worker's next sweep finishes.

What stays, and why, is in docs/accounts.md ("Leaving").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts.credentials import CredentialService
from plasmaart.accounts.passwords import WrongPassword
from plasmaart.accounts.second_factor import OtpInvalid, OtpRequired
from plasmaart.accounts.service import AccountService, User
from plasmaart.billing.service import BillingService
from plasmaart.billing.stripe.errors import BillingProviderError
from plasmaart.clock import Clock
from plasmaart.controls.topup import turn_off_for_deletion
from plasmaart.db.engine import Database
from plasmaart.errors import DomainError
from plasmaart.generation.service import GenerationService
from plasmaart.leaving import repository as repo
from plasmaart.leaving.notices import AccountDeleted, TeamDissolved
from plasmaart.ledger.service import LedgerService
from plasmaart.media.storage import Storage
from plasmaart.outbox import Outbox

log = logging.getLogger(__name__)

# Never a valid argon2 hash: no password verifies against it.
UNUSABLE_PASSWORD = "!deleted"  # noqa: S105 - a marker, not a password
FORFEIT_REASON = "account deleted: remaining credits forfeited"
# Files removed per transaction, and the most transactions one call runs.
FILES_PER_PAGE = 200
MAX_PAGES = 1_000


class DeletionUnavailable(DomainError):
    """The billing provider could not end the subscription: nothing was
    deleted, try again shortly."""

    code = "unavailable"
    status = 503
    title = "Service unavailable"


def deleted_address(user_id: str) -> str:
    """What a deleted account's address becomes: unique, and undeliverable
    (``.invalid`` is reserved, RFC 2606)."""
    return f"deleted-{user_id}@deleted.invalid"


@dataclass(frozen=True)
class Deleted:
    user_id: str
    forfeited: int
    generations_canceled: int
    subscription_ended: bool
    team_dissolved: str | None


class AccountDeletion:
    def __init__(
        self,
        clock: Clock,
        accounts: AccountService,
        credentials: CredentialService,
        ledger: LedgerService,
        billing: BillingService,
        generations: GenerationService,
        outbox: Outbox,
        storage: Storage,
    ) -> None:
        self.clock = clock
        self.accounts = accounts
        self.credentials = credentials
        self.ledger = ledger
        self.billing = billing
        self.generations = generations
        self.outbox = outbox
        self.storage = storage

    def delete(
        self, conn: Connection, user: User, password: str, otp: str | None
    ) -> Deleted | OtpRequired | OtpInvalid:
        """Delete ``user``'s account. A wrong password raises ``WrongPassword``
        and writes nothing; a missing or wrong two-factor code is returned
        (a wrong one is counted: commit, then raise it)."""
        user = self.accounts.lock(conn, user.id)
        refusal = self.accounts.confirm(
            conn, user, password, otp, wrong="this is not your password: nothing was deleted"
        )
        if isinstance(refusal, WrongPassword):
            raise refusal
        if refusal is not None:
            return refusal
        try:
            subscription = self.billing.subscriptions.end_for_deletion(conn, user.id)
        except BillingProviderError as exc:
            raise DeletionUnavailable(
                "the billing provider could not cancel your subscription; nothing was "
                "deleted: try again in a few minutes",
                retry_after=60,
            ) from exc
        now = self.clock.now()
        wallet = self.ledger.wallet_of(conn, "user", user.id)
        # Before anything moves its balance: no top-up for a forfeited wallet.
        turn_off_for_deletion(conn, wallet, now)
        canceled = 0
        for job in repo.unfinished_jobs(conn, user_id=user.id, wallet_id=wallet):
            canceled += self.generations.end_for_deletion(conn, job.id, "account deleted")
        team = repo.owned_team(conn, user.id)
        if team is not None:
            self._dissolve(conn, user, *team)
        repo.leave_teams(conn, user.id)
        self.credentials.close_all_sessions(conn, user.id)
        repo.revoke_api_keys(conn, user.id, now)
        repo.delete_secrets(conn, user.id)
        repo.delete_webhooks(conn, user.id)
        repo.delete_address_traces(conn, user_id=user.id, email=user.email)
        generations = repo.erase_generations(conn, user.id)
        repo.delete_notifications(conn, user.id)
        forfeited = self.ledger.balance(conn, wallet).available
        if forfeited:
            self.ledger.adjust(
                conn,
                wallet,
                -forfeited,
                idempotency_key=f"account.delete:{user.id}",
                reason=FORFEIT_REASON,
            )
        anonymous = deleted_address(user.id)
        repo.anonymize_audit_log(conn, email=user.email, replacement=anonymous)
        repo.erase_user(conn, user.id, email=anonymous, password_hash=UNUSABLE_PASSWORD, now=now)
        audit.record(
            conn,
            actor=user.id,
            action="user.delete",
            target=user.id,
            reason=None,
            now=now,
            data={
                "forfeited": forfeited,
                "generations_canceled": canceled,
                "subscription_ended": subscription is not None,
                "team_dissolved": None if team is None else team[0],
            },
        )
        files = repo.count_files(conn, user.id)
        self.outbox.enqueue(
            conn,
            cause_key=f"account.deleted:{user.id}",
            user_id=user.id,
            fact=AccountDeleted(
                email=user.email,
                at=now,
                forfeited=forfeited,
                generations=generations,
                files=files,
                subscription_ended=subscription is not None,
                team_dissolved=None if team is None else team[1],
            ),
            to=user.email,
            in_app=False,
        )
        return Deleted(
            user.id,
            forfeited,
            canceled,
            subscription is not None,
            None if team is None else team[0],
        )

    def _dissolve(self, conn: Connection, owner: User, team_id: str, name: str) -> None:
        members = [m for m in repo.team_member_ids(conn, team_id) if m != owner.id]
        repo.dissolve_team(conn, team_id, self.clock.now())
        for member in members:
            self.outbox.enqueue(
                conn,
                cause_key=f"team.dissolved:{team_id}:{member}",
                user_id=member,
                fact=TeamDissolved(team_id, name),
            )
        audit.record(
            conn,
            actor=owner.id,
            action="team.dissolve",
            target=team_id,
            reason="the owner deleted their account",
            now=self.clock.now(),
            data={"members": members},
        )

    def remove_files(self, db: Database, user_id: str | None = None) -> int:
        """Remove the files of deleted accounts (of ``user_id`` alone when
        given) from storage, then their rows, a page per transaction: after
        a deletion commits, and on every worker tick for whatever a crash
        left. How many were removed."""
        removed = 0
        for _ in range(MAX_PAGES):
            with db.read() as conn:
                files = repo.files_of_deleted(conn, user_id=user_id, limit=FILES_PER_PAGE)
            if not files:
                break
            for file in files:
                self.storage.delete(file.key)
            with db.write() as conn:
                repo.forget_files(conn, files)
            removed += len(files)
        if removed:
            log.info("removed %d files of deleted accounts", removed)
        return removed

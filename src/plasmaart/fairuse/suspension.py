"""What suspending an account does, and what reinstating it undoes: the one
home of both, whoever decides (an admin, the command line, fair use's
automatic suspension).

A suspended account is read-only (DESIGN.md §5): the web layer refuses its
writes (``web/auth.py``), and here it

- gets the status and the audit entry (``AccountService.set_status``), which
  also queues the notice to the user;
- loses its sessions (it may log in again, to a read-only dashboard);
- has its queued generations canceled and their credits released (running
  ones finish, charged only for what they deliver);
- is charged no renewal: its subscription ends at the period end unless the
  account is reinstated first (``SubscriptionService.stop_for_suspension``).

Reinstating restores the renewal (unless the period ended meanwhile or the
customer canceled themselves). Resolving the account's abuse flags is fair
use's part of a reinstatement (``FairUseService.resolve_flags``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from plasmaart.accounts.credentials import CredentialService
from plasmaart.accounts.service import AccountService, User
from plasmaart.billing.service import BillingService
from plasmaart.generation.service import GenerationService


@dataclass(frozen=True)
class Suspended:
    user: User
    queued_canceled: int


class SuspensionService:
    def __init__(
        self,
        accounts: AccountService,
        credentials: CredentialService,
        generations: GenerationService,
        billing: BillingService,
    ) -> None:
        self.accounts = accounts
        self.credentials = credentials
        self.generations = generations
        self.billing = billing

    def suspend(self, conn: Connection, user: User, *, actor: str, reason: str) -> Suspended:
        """Suspend ``user`` for ``reason`` (kept in the audit log and shown to them)."""
        suspended = self.accounts.set_status(conn, user, "suspended", actor=actor, reason=reason)
        self.credentials.close_all_sessions(conn, user.id)
        canceled = self.generations.cancel_queued_of(conn, user.id, f"account suspended: {reason}")
        self.billing.subscriptions.stop_for_suspension(conn, user.id)
        return Suspended(suspended, canceled)

    def reinstate(self, conn: Connection, user: User, *, actor: str) -> User:
        """Make ``user`` active again; their subscription renews as before."""
        active = self.accounts.set_status(conn, user, "active", actor=actor, reason=None)
        self.billing.subscriptions.resume_after_suspension(conn, user.id)
        return active

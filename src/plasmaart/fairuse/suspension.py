"""What suspending an account does, and what reinstating it undoes: the one
home of both, whoever decides (an admin through the API, the command line,
fair use's automatic suspension). Every door calls ``suspend`` or
``reinstate`` here, in its own transaction, and does nothing else of it.

A suspended account is read-only (DESIGN.md §5): the web layer refuses its
writes (``web/auth.py``), and here it

- gets the status and the audit entry (``AccountService.set_status``), which
  also queues the notice to the user;
- loses its sessions (it may log in again, to a read-only dashboard); its
  API keys stay, and read;
- has its queued generations canceled and their credits released (running
  ones finish, charged only for what they deliver);
- is charged no renewal: its subscription ends at the period end unless the
  account is reinstated first (``SubscriptionService.stop_for_suspension``).

No one suspends themselves (an admin would lock out the person who could
undo it). Reinstating restores the renewal (unless the period ended
meanwhile or the customer canceled themselves) and resolves the account's
abuse flags: the review is over (``fairuse.flags.resolve_flags``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from plasmaart.accounts.credentials import CredentialService
from plasmaart.accounts.service import AccountService, User
from plasmaart.billing.service import BillingService
from plasmaart.clock import Clock
from plasmaart.errors import InvalidInput
from plasmaart.fairuse.flags import resolve_flags
from plasmaart.generation.service import GenerationService


@dataclass(frozen=True)
class Suspended:
    user: User
    queued_canceled: int


class SuspensionService:
    def __init__(
        self,
        clock: Clock,
        accounts: AccountService,
        credentials: CredentialService,
        generations: GenerationService,
        billing: BillingService,
    ) -> None:
        self.clock = clock
        self.accounts = accounts
        self.credentials = credentials
        self.generations = generations
        self.billing = billing

    def suspend(self, conn: Connection, user_id: str, *, actor: str, reason: str) -> Suspended:
        """Suspend the account for ``reason`` (kept in the audit log and shown
        to them), by ``actor`` (a user id, ``cli``, ``system:fairuse``)."""
        user = self.accounts.get(conn, user_id)
        if user.id == actor:
            raise InvalidInput("admins cannot suspend themselves", field="user_id")
        suspended = self.accounts.set_status(conn, user, "suspended", actor=actor, reason=reason)
        self.credentials.close_all_sessions(conn, user.id)
        canceled = self.generations.cancel_queued_of(conn, user.id, f"account suspended: {reason}")
        self.billing.subscriptions.stop_for_suspension(conn, user.id)
        return Suspended(suspended, canceled)

    def reinstate(self, conn: Connection, user_id: str, *, actor: str) -> User:
        """Make the account active again: its subscription renews as before,
        and its abuse flags are resolved by ``actor``."""
        user = self.accounts.get(conn, user_id)
        active = self.accounts.set_status(conn, user, "active", actor=actor, reason=None)
        self.billing.subscriptions.resume_after_suspension(conn, user.id)
        resolve_flags(conn, user.id, actor=actor, now=self.clock.now())
        return active

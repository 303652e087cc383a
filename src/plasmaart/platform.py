"""The platform: every service of one process, built once by ``bootstrap``.

This is the container the entry points (``web``, ``worker``, ``cli``) hold; it
builds nothing itself. ``bootstrap.py``, the composition root, is the one
place that chooses the adapters and constructs the services in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from plasmaart.accounts.addresses import AddressService
from plasmaart.accounts.credentials import CredentialService
from plasmaart.accounts.password_service import PasswordService
from plasmaart.accounts.principals import Principals
from plasmaart.accounts.second_factor import SecondFactor
from plasmaart.accounts.service import AccountService
from plasmaart.accounts.tokens import AccountTokens, Throttle
from plasmaart.billing.sandbox_clock import SandboxTestClock
from plasmaart.billing.service import BillingService
from plasmaart.caches import CacheHub
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.changes.service import CatalogChangeService
from plasmaart.clock import Clock
from plasmaart.config import Settings
from plasmaart.controls.alerts import BalanceAlerts
from plasmaart.controls.limits import SpendLimits
from plasmaart.controls.topup import AutoTopupService
from plasmaart.controls.watch import WalletWatch
from plasmaart.db.engine import Database
from plasmaart.eventbus import EventBus
from plasmaart.fairuse.service import FairUseService
from plasmaart.fairuse.suspension import SuspensionService
from plasmaart.generation.providers.base import Provider
from plasmaart.generation.service import GenerationService
from plasmaart.generation.submission import SubmissionService
from plasmaart.generation.uploads import UploadService
from plasmaart.generation.wakeups import PollWakeups
from plasmaart.leaving.deletion import AccountDeletion
from plasmaart.leaving.export import AccountExport
from plasmaart.ledger.service import LedgerService
from plasmaart.links import Links
from plasmaart.media.storage import Storage
from plasmaart.notify.email import Mailer, MailFolder
from plasmaart.notify.notifications import NotificationService
from plasmaart.outbox import Outbox
from plasmaart.outbox.webhooks import WebhookEvents
from plasmaart.teams.service import TeamService
from plasmaart.webhooks.endpoints import WebhookEndpoints


@dataclass
class Platform:
    settings: Settings
    db: Database
    # The catalog file as loaded (``base``) and the one in force (``now``, ``at``).
    catalogs: Catalogs
    clock: Clock
    # Real elapsed time (the clock passed in, without the sandbox test clock's
    # offset): job leases and deadlines, provider delays, webhook freshness.
    # Billing time (``clock``) may jump; this one never does.
    job_clock: Clock
    ledger: LedgerService
    accounts: AccountService
    credentials: CredentialService
    billing: BillingService
    teams: TeamService
    events: EventBus
    notifications: NotificationService
    generations: GenerationService
    provider: Provider
    storage: Storage
    fairuse: FairUseService
    outbox: Outbox
    # Events for users' webhooks (outbox/webhooks.py), written in their cause's transaction.
    webhook_events: WebhookEvents
    # The credit controls' balance watch, which the ledger calls (controls/watch.py).
    wallet_watch: WalletWatch
    # The owner's balance alerts and expiry notice window (controls/alerts.py).
    balance_alerts: BalanceAlerts
    # Auto top-up: settings, the trigger, off-session charging (controls/topup.py).
    auto_topups: AutoTopupService
    # Spend limits of wallets, API keys and team members (controls/limits.py).
    spend_limits: SpendLimits
    catalog_changes: CatalogChangeService
    mailer: Mailer | None
    # Webhooks wake the worker polling a job (generation/wakeups.py).
    wakeups: PollWakeups
    # Suspending and reinstating accounts (fairuse/suspension.py).
    suspensions: SuspensionService
    # Submissions and quotes as the API makes them (generation/submission.py).
    submissions: SubmissionService
    # Input images users upload (generation/uploads.py).
    uploads: UploadService
    # The per-process caches and their invalidation (caches.py).
    caches: CacheHub
    # API key or session → user, cached (accounts/principals.py).
    principals: Principals
    # Links that leave the server, from PLASMAART_PUBLIC_URL (links.py).
    links: Links
    # Single-use links mailed to an address, and the throttle of the routes
    # that mail them (accounts/tokens.py).
    account_tokens: AccountTokens
    throttle: Throttle
    # TOTP two-factor and recovery codes (accounts/second_factor.py).
    second_factor: SecondFactor
    # Where mail is written when no SMTP server is set (the admin's Mail page).
    mail_folder: MailFolder
    # Proving and changing addresses, the welcome mail (accounts/addresses.py).
    addresses: AddressService
    # Password reset and change, the sessions list (accounts/password_service.py).
    passwords: PasswordService
    # Leaving: the export of an account's data and its deletion (leaving/).
    account_export: AccountExport
    account_deletion: AccountDeletion
    # Users' webhook endpoints, their secrets and delivery logs (webhooks/endpoints.py).
    webhook_endpoints: WebhookEndpoints

    def close(self) -> None:
        self.principals.close()  # writes the keys' last uses it still holds
        self.fairuse.flusher.stop()  # writes the signals still queued
        if isinstance(self.clock, SandboxTestClock):
            self.clock.close()
        self.wakeups.close()
        self.events.close()
        self.caches.close()
        self.db.dispose()

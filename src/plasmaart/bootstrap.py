"""Wires the adapters chosen by the settings into the services, once per process."""

from __future__ import annotations

import logging

from plasmaart.accounts.addresses import AddressService
from plasmaart.accounts.credentials import CredentialService
from plasmaart.accounts.password_service import PasswordService
from plasmaart.accounts.principals import Principals
from plasmaart.accounts.second_factor import SecondFactor
from plasmaart.accounts.self_service import SelfServiceParts
from plasmaart.accounts.service import AccountService
from plasmaart.accounts.tokens import AccountTokens, Throttle
from plasmaart.billing import create_backends
from plasmaart.billing.sandbox_clock import SandboxTestClock
from plasmaart.billing.service import BillingService
from plasmaart.caches import CacheHub
from plasmaart.catalog import load_catalog
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.changes.service import CatalogChangeService
from plasmaart.clock import Clock, SystemClock
from plasmaart.config import Settings, load_settings
from plasmaart.controls.alerts import BalanceAlerts
from plasmaart.controls.limits import SpendLimits
from plasmaart.controls.topup import AutoTopupService
from plasmaart.controls.watch import WalletWatch
from plasmaart.db.engine import create_database
from plasmaart.db.migrate import database_revision, require_migrated, unreachable, upgrade
from plasmaart.eventbus import create_event_bus
from plasmaart.fairuse.counters import create_copy_counter
from plasmaart.fairuse.request_limiter import RequestLimiter
from plasmaart.fairuse.service import FairUsePolicy, FairUseService
from plasmaart.fairuse.suspension import SuspensionService
from plasmaart.generation.event_publisher import GenerationEvents
from plasmaart.generation.providers import create_provider
from plasmaart.generation.service import GenerationService
from plasmaart.generation.submission import SubmissionService
from plasmaart.generation.uploads import UploadService
from plasmaart.generation.wakeups import PollWakeups
from plasmaart.generation.webhook_events import GenerationWebhooks, signed_output_url
from plasmaart.leaving.deletion import AccountDeletion
from plasmaart.leaving.export import AccountExport
from plasmaart.ledger.balance_events import BalanceEvents
from plasmaart.ledger.service import LedgerService
from plasmaart.links import Links
from plasmaart.media.signing import signing_secret
from plasmaart.media.storage import create_storage
from plasmaart.notify.email import MailFolder, create_mailer
from plasmaart.notify.notifications import NotificationService
from plasmaart.notify.texts import render
from plasmaart.outbox import Outbox
from plasmaart.outbox.webhooks import WebhookEvents
from plasmaart.platform import Platform
from plasmaart.teams.service import TeamService
from plasmaart.webhooks.endpoints import WebhookEndpoints

log = logging.getLogger(__name__)


def bootstrap(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    migrate: bool | None = None,
    require_schema: bool = False,
) -> Platform:
    """Build the platform. Raises ``ConfigError`` or ``CatalogError`` with a
    message that names what is wrong, before anything starts.

    ``migrate`` None: as ``PLASMAART_AUTO_MIGRATE`` says (on SQLite only by
    default). Without migrating, ``require_schema`` refuses a database that is
    not at the migrations' head (``SchemaNotMigrated``); an unreachable one
    is ``DatabaseUnreachable`` when it is asked either.
    """
    settings = settings or load_settings()
    catalog = load_catalog(settings.catalog_file)
    try:
        db = create_database(
            settings.database_url,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pool_size=settings.db_pool_size,
            group_commit=settings.group_commit,
            timeout_s=settings.db_timeout_s,
        )
    except OSError as exc:  # the SQLite file's folder cannot be made
        raise unreachable(settings.database_url, exc) from None
    if migrate is None:
        migrate = settings.auto_migrate if settings.auto_migrate is not None else db.is_sqlite
    try:
        if migrate:
            database_revision(db)  # an unreachable database: one clear line
            upgrade(db)
        elif require_schema:
            require_migrated(db)
    except BaseException:
        db.dispose()
        raise
    clock = clock or SystemClock()
    job_clock = clock
    # Under sandbox billing the whole platform runs on the test clock, whose
    # offset (moved by /v1/admin/clock/advance) every process reads from the
    # database; tests can still move the clock passed in.
    # Its moves reach the other processes on the event bus (billing/sandbox_clock.py).
    events = create_event_bus(db)
    test_clock = (
        SandboxTestClock(clock, db, events=events) if settings.billing == "sandbox" else None
    )
    if test_clock is not None:
        test_clock.now()  # the first read of its offset, outside any transaction
    clock = test_clock or clock
    # The credit controls' balance watch; its sources are built on the ledger.
    wallet_watch = WalletWatch()
    ledger = LedgerService(clock, balance_listeners=[BalanceEvents(db, events)], watch=wallet_watch)
    caches = CacheHub(db)
    # The one catalog service: the file as loaded, and the catalog in force.
    catalogs = Catalogs(catalog, clock, caches=caches)
    # The services that cause notifications queue them in the transaction of
    # their cause, as facts that notify's texts put into words.
    outbox = Outbox(clock, render)
    # Events for the users' webhooks, written like notices in their cause's transaction.
    webhook_events = WebhookEvents(clock)
    # Links that leave the server; single-use links and the account routes'
    # throttle (accounts/tokens.py): one of each, for every service.
    links = Links(settings.public_base_url)
    account_tokens = AccountTokens(clock)
    throttle = Throttle(clock)
    billing = BillingService(
        clock,
        catalogs,
        ledger,
        backends=create_backends(settings, clock, currency=catalog.currency),
        default_backend=settings.billing,
        grace_days=settings.payment_grace_days,
        purchased_credits_expire_days=settings.purchased_credits_expire_days,
        test_clock=test_clock,
        outbox=outbox,
        links=links,
        caches=caches,
        webhook_events=webhook_events,
    )
    # The owner's balance alerts (controls/alerts.py): a source of the balance watch.
    balance_alerts = BalanceAlerts(
        clock,
        billing.plans,
        outbox,
        webhook_events,
        wallet_watch,
        default_expiry_notice_days=settings.expiry_notice_days,
        billing_hooks=billing.hooks,
    )
    auto_topups = AutoTopupService(
        clock, catalogs, billing, outbox, webhook_events, links, wallet_watch, events=events
    )
    # The balance watch's sources: what each control wants to see of a balance.
    wallet_watch.watch_with([balance_alerts, auto_topups])
    teams = TeamService(
        clock,
        catalogs,
        ledger,
        billing.plans,
        outbox=outbox,
        links=links,
        throttle=throttle,
        caches=caches,
    )
    spend_limits = SpendLimits(clock)
    generations = GenerationService(
        clock,
        catalogs,
        ledger,
        billing.plans,
        teams,
        settings.provider,
        limits=spend_limits,
        listeners=[GenerationEvents(events, db, teams)],
        webhooks=GenerationWebhooks(
            webhook_events,
            signed_output_url(links, clock, lambda: signing_secret(settings)),
            allow_private=settings.webhooks_allow_private,
        ),
    )
    credentials = CredentialService(clock)
    # Codes are checked against wall time, never the sandbox test clock.
    second_factor = SecondFactor(job_clock, outbox)
    accounts = AccountService(
        clock,
        ledger,
        credentials,
        catalogs,
        outbox,
        plan_of=billing.plans.plan_of,
        second_factor=second_factor,
    )
    suspensions = SuspensionService(clock, accounts, credentials, generations, billing)
    # Fair use listens to billing's clawbacks and payments and to the
    # database's invalidations, and writes its queued signals off the
    # request path with a flusher of its own (fairuse/service.py).
    fairuse = FairUseService(
        clock,
        FairUsePolicy.from_settings(settings),
        RequestLimiter(settings.redis_url),
        db=db,
        billing=billing,
        teams=teams,
        accounts=accounts,
        suspensions=suspensions,
        copies=create_copy_counter(settings.redis_url),
    )
    catalog_changes = CatalogChangeService(
        clock, catalogs, ledger, billing.plans, teams, outbox, notice_days=settings.notice_days
    )
    storage = create_storage(settings)
    # The flows a customer runs alone: password reset and change, the
    # sessions; proving and changing an address, and the welcome.
    self_service = SelfServiceParts(
        clock,
        accounts,
        credentials,
        account_tokens,
        throttle,
        second_factor,
        outbox,
        links,
        support_email=settings.support_email,
    )
    passwords = PasswordService(self_service)
    addresses = AddressService(
        self_service, catalogs, required=settings.email_verification_required
    )
    return Platform(
        settings=settings,
        db=db,
        catalogs=catalogs,
        clock=clock,
        job_clock=job_clock,
        ledger=ledger,
        accounts=accounts,
        credentials=credentials,
        billing=billing,
        teams=teams,
        events=events,
        notifications=NotificationService(clock, events),
        generations=generations,
        provider=create_provider(settings, job_clock),
        storage=storage,
        fairuse=fairuse,
        outbox=outbox,
        webhook_events=webhook_events,
        wallet_watch=wallet_watch,
        balance_alerts=balance_alerts,
        auto_topups=auto_topups,
        spend_limits=spend_limits,
        catalog_changes=catalog_changes,
        mailer=create_mailer(settings),
        wakeups=PollWakeups(events),
        suspensions=suspensions,
        submissions=SubmissionService(db, generations, fairuse),
        uploads=UploadService(db, storage, clock),
        caches=caches,
        principals=Principals(caches, db, accounts, credentials, clock),
        links=links,
        account_tokens=account_tokens,
        throttle=throttle,
        second_factor=second_factor,
        mail_folder=MailFolder(settings.mail_dir),
        addresses=addresses,
        passwords=passwords,
        account_export=AccountExport(
            clock,
            ledger,
            billing,
            storage,
            links,
            lambda: signing_secret(settings),
            settings.support_email,
        ),
        account_deletion=AccountDeletion(
            clock,
            accounts,
            credentials,
            ledger,
            billing,
            generations,
            outbox,
            storage,
        ),
        webhook_endpoints=WebhookEndpoints(
            clock, accounts, allow_private=settings.webhooks_allow_private
        ),
    )

"""Auto top-up (docs/credits.md): when a hold or a capture leaves a wallet's
available balance below the owner's threshold, one credit pack is bought
off-session, at most one at a time, within a monthly cap on what top-ups
spend, and the feature turns itself off after 3 failures in a row.

* **Settings** (``configure``): enabled, threshold (credits), pack, monthly
  cap (cents). Enabling needs a payment method the backend can charge with
  the customer away (``BillingBackend.has_payment_method``).
* **Trigger** (``seen``, a ``WatchSource`` of the ledger's balance watch):
  called in the transaction of the ledger operation that left the balance
  below the threshold, under the wallet's lock. A run starts only through a
  conditional UPDATE of ``auto_topups.run_id`` (NULL → the new run): one run
  in flight per wallet, whatever the number of concurrent holds. While one
  is in flight ``bounds`` wants no balance below, so holds cost nothing more;
  when it ends the threshold is watched again.
* **Charging** (``charge_pending``, the worker's task, off the request
  path): each pending run is charged through the billing backend's
  ``charge_off_session`` with the run's idempotency key (a run left pending
  by a dead worker is charged again under the same key: never twice), then
  ended once (``finish``: a conditional UPDATE from ``pending``).
  Paid: the pack is granted through ``PackService.paid`` (a lot added, a
  ``pack`` payment, its receipt). Declined: a failure. The bank asking for
  authentication (SCA): ``action_required``, the customer is mailed a link
  to pay the pack themselves, and the wallet's top-up waits (the run stays
  its run in flight) until they pay a pack or change the settings.
* Every run ends with a ``topup.succeeded`` / ``topup.failed`` webhook event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from plasmaart.billing.backends import ActionRequired, Customer, Declined, OffSessionOutcome
from plasmaart.billing.repository import Payment
from plasmaart.billing.service import BillingService
from plasmaart.billing.stripe.errors import BillingProviderError
from plasmaart.catalog import CreditPack
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.controls import topup_repository as repo
from plasmaart.controls.limits import month_start
from plasmaart.controls.topup_notices import (
    TopupActionRequired,
    TopupCapReached,
    TopupDisabled,
    TopupFailed,
)
from plasmaart.controls.topup_repository import AutoTopup, TopupRun
from plasmaart.controls.watch import Bounds, WalletWatch
from plasmaart.db.engine import Database, after_commit
from plasmaart.errors import DomainError, InvalidInput
from plasmaart.eventbus import RESYNC, Event, EventBus, InProcessEventBus
from plasmaart.ids import new_id
from plasmaart.links import Links
from plasmaart.outbox import Outbox
from plasmaart.outbox.webhooks import WebhookEvents

log = logging.getLogger(__name__)

# Failed runs in a row after which the auto top-up turns itself off.
FAILURE_LIMIT = 3
# Where the customer changes the settings, or pays a pack the bank wants
# them to confirm (the Credits page's auto top-up section).
SETTINGS_PATH = "/credits#auto-topup"
# Pending runs charged per pass of the worker.
BATCH = 50
# Where a started run is announced on the event bus (no user's address):
# the worker of every process hears it (PostgreSQL: NOTIFY) and charges now.
WAKEUP_ADDRESS = "worker:topup"
STARTED_EVENT = "topup.started"


class _WakeOnStart:
    """The event bus listener that wakes this process's worker."""

    address = WAKEUP_ADDRESS

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def __call__(self, event: Event) -> None:
        if event.type in (STARTED_EVENT, RESYNC):
            self.wake.set()


class PaymentMethodRequired(DomainError):
    """Enabling an auto top-up needs a card the backend can charge with the
    customer away (Stripe: one saved by an earlier Checkout)."""

    code = "payment_method_required"
    status = 422
    title = "No payment method on file"


@dataclass(frozen=True)
class TopupView:
    """A wallet's auto top-up as ``GET /v1/auto-topup`` shows it."""

    wallet_id: str
    enabled: bool
    threshold: int
    pack: str | None
    monthly_cap_cents: int
    currency: str
    spent_this_month_cents: int
    failures: int
    disabled_reason: str | None
    # The run in flight now (pending, or waiting for the customer).
    in_flight: bool
    last_run: TopupRun | None


@dataclass(frozen=True)
class ChargeTick:
    """One pass of the worker: runs charged and how they ended."""

    succeeded: int = 0
    failed: int = 0
    action_required: int = 0
    # Runs the backend could not be asked about now (left pending).
    deferred: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.action_required


class AutoTopupService:
    """The auto top-up's use cases, and its ``WatchSource`` (``seen``,
    ``bounds``) registered with the ledger's balance watch in bootstrap."""

    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        billing: BillingService,
        outbox: Outbox,
        webhook_events: WebhookEvents,
        links: Links,
        watch: WalletWatch,
        events: EventBus | None = None,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.billing = billing
        self.outbox = outbox
        self.webhook_events = webhook_events
        self.links = links
        self.watch = watch
        # Set after a transaction that started a run commits, in this process
        # or (through the event bus) another: the worker's loop charges it at
        # once instead of at its next clock tick.
        self.wake = threading.Event()
        self.events = events
        if isinstance(events, InProcessEventBus):
            events.add_listener(_WakeOnStart(self.wake))
        # A pack the customer pays themselves ends a wait for authentication.
        billing.hooks.listen_to_payments(self._payment_recorded)

    # -- settings ------------------------------------------------------------

    def view(self, conn: Connection, wallet_id: str) -> TopupView:
        settings = repo.settings_of(conn, wallet_id)
        spent = repo.spent_since(conn, wallet_id, month_start(self.clock.now()))
        currency = self.catalogs.base.currency
        last = repo.last_run(conn, wallet_id)
        if settings is None:
            return TopupView(wallet_id, False, 0, None, 0, currency, spent, 0, None, False, last)
        return TopupView(
            wallet_id=wallet_id,
            enabled=settings.enabled,
            threshold=settings.threshold,
            pack=settings.pack_id,
            monthly_cap_cents=settings.monthly_cap_cents,
            currency=currency,
            spent_this_month_cents=spent,
            failures=settings.failures,
            disabled_reason=settings.disabled_reason,
            in_flight=settings.run_id is not None,
            last_run=last,
        )

    def configure(
        self,
        conn: Connection,
        *,
        wallet_id: str,
        user_id: str,
        enabled: bool,
        threshold: int,
        pack_id: str,
        monthly_cap_cents: int,
    ) -> TopupView:
        """Save the wallet's settings (``user_id``: who sets them, the
        wallet's owner). Turning it on, or changing it, forgets earlier
        failures; a wait for the customer's authentication ends. A run
        already being charged carries on. With the balance already below the
        threshold, a run starts now."""
        if threshold < 0:
            raise InvalidInput("the threshold cannot be negative", field="threshold")
        if monthly_cap_cents < 0:
            raise InvalidInput("the cap cannot be negative", field="monthly_cap_cents")
        try:
            pack = self.catalogs.now(conn).pack(pack_id)
        except KeyError:
            raise InvalidInput(f"unknown credit pack {pack_id!r}", field="pack") from None
        if enabled:
            if monthly_cap_cents < pack.price_cents:
                currency = self.catalogs.base.currency.upper()
                raise InvalidInput(
                    f"a monthly cap of {monthly_cap_cents / 100:,.2f} {currency} is below "
                    f"the price of the pack ({pack.price_cents / 100:,.2f} {currency}): "
                    "no top-up could ever run",
                    field="monthly_cap_cents",
                )
            customer = self.billing.customer(conn, user_id)
            if not self.billing.backend.has_payment_method(conn, customer=customer):
                raise PaymentMethodRequired(
                    "no saved card to charge: buy a credit pack or subscribe once "
                    "(the card you pay with is saved for auto top-ups), then enable it"
                )
        available = repo.lock_wallet(conn, wallet_id)
        current = repo.settings_of(conn, wallet_id)
        values: dict[str, Any] = {
            "enabled": enabled,
            "threshold": threshold,
            "pack_id": pack.id,
            "monthly_cap_cents": monthly_cap_cents,
            "set_by": user_id,
            "updated_at": self.clock.now(),
            "failures": 0,
            "disabled_reason": None,
        }
        if current is None:
            values["run_id"] = None
        repo.save_settings(conn, wallet_id, **values)
        if current is not None and current.run_id is not None:
            run = repo.run_by_id(conn, current.run_id)
            if run is not None and run.status == "action_required":
                repo.release_run(conn, wallet_id, run.id)
        if enabled:
            self.seen(conn, wallet_id, available)
        self.watch.recompute(conn, wallet_id)
        return self.view(conn, wallet_id)

    # -- the trigger (WatchSource) ---------------------------------------------

    def bounds(self, conn: Connection, wallet_id: str) -> Bounds:
        """The threshold, while on and no run is in flight; else nothing."""
        settings = repo.settings_of(conn, wallet_id)
        if settings is None or not settings.enabled or settings.run_id is not None:
            return Bounds()
        return Bounds(below=settings.threshold)

    def seen(self, conn: Connection, wallet_id: str, available: int) -> None:
        """Start a run when ``available`` is below the threshold, none is in
        flight and the month's cap allows the pack."""
        settings = repo.settings_of(conn, wallet_id)
        if (
            settings is None
            or not settings.enabled
            or settings.run_id is not None
            or available >= settings.threshold
        ):
            return
        self._start(conn, settings)

    def _start(self, conn: Connection, settings: AutoTopup) -> str | None:
        wallet_id = settings.wallet_id
        payer = repo.payer_of_wallet(conn, wallet_id)
        try:
            pack = self.catalogs.base.pack(settings.pack_id)
        except KeyError:
            pack = None
        if payer is None or pack is None:
            repo.save_settings(
                conn,
                wallet_id,
                enabled=False,
                disabled_reason=f"the credit pack {settings.pack_id!r} is no longer sold",
                updated_at=self.clock.now(),
            )
            return None
        now = self.clock.now()
        since = month_start(now)
        spent = repo.spent_since(conn, wallet_id, since)
        currency = self.catalogs.base.currency
        if spent + pack.price_cents > settings.monthly_cap_cents:
            month = f"{since:%Y-%m}"
            self.outbox.enqueue(
                conn,
                cause_key=f"topup.cap:{wallet_id}:{month}",
                user_id=payer,
                fact=TopupCapReached(
                    wallet_id=wallet_id,
                    month=month,
                    spent_cents=spent,
                    cap_cents=settings.monthly_cap_cents,
                    price_cents=pack.price_cents,
                    currency=currency,
                    settings_url=self.links.url(SETTINGS_PATH),
                ),
            )
            return None
        run_id = new_id("tur")
        if not repo.claim_run(conn, wallet_id, run_id):
            return None  # another run is in flight
        repo.insert_run(
            conn,
            id=run_id,
            wallet_id=wallet_id,
            user_id=payer,
            pack_id=pack.id,
            credits=pack.credits,
            amount_cents=pack.price_cents,
            currency=currency,
            status="pending",
            idempotency_key=f"topup:{run_id}",
            created_at=now,
        )
        after_commit(conn, self._announce)
        return run_id

    def _announce(self) -> None:
        """A run started: wake the workers (best effort: the clock's tick
        charges it anyway)."""
        self.wake.set()
        if self.events is not None:
            self.events.publish([WAKEUP_ADDRESS], STARTED_EVENT, {})

    # -- charging (the worker) -----------------------------------------------------

    def charge_pending(self, db: Database, *, limit: int = BATCH) -> ChargeTick:
        """Charge the pending runs off-session, each in its own steps: the
        backend asked outside any write transaction, the outcome applied in
        one. Safe in several workers at once: a run ends once, and the
        backend's idempotency key charges it once."""
        self.wake.clear()
        with db.read() as conn:
            runs = repo.pending_runs(conn, limit)
        counts = {"succeeded": 0, "failed": 0, "action_required": 0, "deferred": 0}
        for run in runs:
            try:
                with db.read() as conn:
                    outcome = self.charge(conn, run)
            except BillingProviderError as exc:
                log.warning("auto top-up %s: the provider could not be asked: %s", run.id, exc)
                counts["deferred"] += 1
                continue
            except Exception:
                # One run that cannot be charged now must not hold up the others.
                log.exception("auto top-up %s could not be charged", run.id)
                counts["deferred"] += 1
                continue
            with db.write() as conn:
                status = self.finish(conn, run.id, outcome)
            if status is not None:
                counts[status] += 1
        return ChargeTick(**counts)

    def charge(self, conn: Connection, run: TopupRun) -> OffSessionOutcome:
        """Ask the billing backend to charge ``run`` off-session."""
        if repo.user_is_suspended(conn, run.user_id):
            # A suspended account is never charged (as its renewals are not).
            return Declined("the account is suspended: nothing was charged")
        customer = Customer(run.user_id, run.wallet_id, repo.user_email(conn, run.user_id))
        pack = CreditPack(id=run.pack_id, credits=run.credits, price_cents=run.amount_cents)
        return self.billing.backend.charge_off_session(
            conn,
            customer=customer,
            pack=pack,
            idempotency_key=run.idempotency_key,
            cards_as_of=run.created_at,
        )

    def finish(self, conn: Connection, run_id: str, outcome: OffSessionOutcome) -> str | None:
        """End the pending run ``run_id`` with the backend's ``outcome``, in
        the caller's transaction; its status, or None if it had ended
        already (another worker, a repeat)."""
        run = repo.run_by_id(conn, run_id)
        if run is None or run.status != "pending":
            return None
        now = self.clock.now()
        if isinstance(outcome, ActionRequired):
            url = self.links.url(SETTINGS_PATH)
            if not repo.finish_run(
                conn,
                run.id,
                status="action_required",
                now=now,
                failure_reason=outcome.reason,
                action_url=url,
            ):
                return None
            # The run stays the wallet's run in flight: no new run (no
            # retry loop) until the customer pays or changes the settings.
            self.outbox.enqueue(
                conn,
                cause_key=f"topup.action:{run.id}",
                user_id=run.user_id,
                fact=TopupActionRequired.about(run, url=url),
            )
            self._emit(conn, run, "action_required", outcome.reason, url)
            return "action_required"
        if isinstance(outcome, Declined):
            if not repo.finish_run(
                conn, run.id, status="failed", now=now, failure_reason=outcome.reason
            ):
                return None
            self._failed(conn, run, outcome.reason)
            self._emit(conn, run, "failed", outcome.reason, None)
            return "failed"
        if not repo.finish_run(conn, run.id, status="succeeded", now=now):
            return None
        # Granted while the run is still in flight: the grant's balance wakes
        # no second run.
        purchase = self.billing.packs.paid(
            conn,
            user_id=run.user_id,
            wallet_id=run.wallet_id,
            pack_id=run.pack_id,
            backend=self.billing.backend.name,
            idempotency_key=run.idempotency_key,
            external_id=outcome.external_id,
            invoice_url=outcome.invoice_url,
        )
        repo.link_payment(conn, run.id, purchase.payment_id)
        repo.release_run(conn, run.wallet_id, run.id, failures=0)
        self.watch.recompute(conn, run.wallet_id)
        self._emit(conn, run, "succeeded", None, None)
        return "succeeded"

    def _failed(self, conn: Connection, run: TopupRun, reason: str) -> None:
        settings = repo.settings_of(conn, run.wallet_id)
        failures = (0 if settings is None else settings.failures) + 1
        url = self.links.url(SETTINGS_PATH)
        if failures >= FAILURE_LIMIT:
            disabled = f"{failures} failed top-ups in a row; the last: {reason}"
            released = repo.release_run(
                conn,
                run.wallet_id,
                run.id,
                failures=failures,
                enabled=False,
                disabled_reason=disabled,
            )
            if released:
                self.outbox.enqueue(
                    conn,
                    cause_key=f"topup.disabled:{run.id}",
                    user_id=run.user_id,
                    fact=TopupDisabled.about(
                        run, reason=reason, failures=failures, settings_url=url
                    ),
                )
        else:
            released = repo.release_run(conn, run.wallet_id, run.id, failures=failures)
            if released:
                self.outbox.enqueue(
                    conn,
                    cause_key=f"topup.failed:{run.id}",
                    user_id=run.user_id,
                    fact=TopupFailed.about(
                        run,
                        reason=reason,
                        failures=failures,
                        limit=FAILURE_LIMIT,
                        settings_url=url,
                    ),
                )
        self.watch.recompute(conn, run.wallet_id)

    def _emit(
        self,
        conn: Connection,
        run: TopupRun,
        status: str,
        reason: str | None,
        action_url: str | None,
    ) -> None:
        self.webhook_events.emit(
            conn,
            cause_key=f"topup:{run.id}",
            user_id=run.user_id,
            type="topup.succeeded" if status == "succeeded" else "topup.failed",
            data={
                "run_id": run.id,
                "wallet_id": run.wallet_id,
                "pack": run.pack_id,
                "credits": run.credits,
                "amount_cents": run.amount_cents,
                "currency": run.currency,
                "status": status,
                "failure_reason": reason,
                "action_url": action_url,
            },
        )

    # -- the customer acts -----------------------------------------------------------

    def _payment_recorded(self, conn: Connection, payment: Payment) -> None:
        """A pack the customer paid for the wallet ends its wait for an
        authentication: the threshold is watched again."""
        if payment.kind != "pack" or payment.status != "succeeded":
            return
        settings = repo.settings_of(conn, payment.wallet_id)
        if settings is None or settings.run_id is None:
            return
        run = repo.run_by_id(conn, settings.run_id)
        if run is None or run.status != "action_required":
            return
        repo.release_run(conn, payment.wallet_id, run.id)
        self.watch.recompute(conn, payment.wallet_id)


def turn_off_for_deletion(conn: Connection, wallet_id: str, now: datetime) -> None:
    """The account is being deleted and its wallet forfeited: its auto
    top-up goes off, and a run not charged yet ends unpaid (in the
    deletion's transaction, before the forfeit moves the balance)."""
    settings = repo.settings_of(conn, wallet_id)
    if settings is None:
        return
    if settings.run_id is not None:
        repo.finish_run(
            conn, settings.run_id, status="failed", now=now, failure_reason="account deleted"
        )
        repo.release_run(conn, wallet_id, settings.run_id)
    repo.save_settings(
        conn, wallet_id, enabled=False, disabled_reason="account deleted", updated_at=now
    )

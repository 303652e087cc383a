"""Balance alerts: a wallet owner's own low-balance thresholds, and the
expiry notice's window (docs/credits.md, "Balance alerts").

A wallet has up to ``MAX_ALERTS`` alerts, each a number of credits or a
percent of the wallet's monthly allocation (its plan's monthly credits,
resolved when the alert is looked at: an alert set in percent follows the
plan). An alert is **armed** while the available balance is at or above its
threshold; the ledger operation that takes the balance below it fires it,
in that operation's transaction: a notice (``credits.low``: in the app and
by mail) and a webhook event ``credits.low``, each under the cause key of
that alert's crossing, so it fires once. It is armed again once the balance
is back at or above it (a grant, a released hold).

``BalanceAlerts`` is a ``WatchSource`` of the balance watch
(``controls.watch``): it asks to see a balance below its highest armed
threshold and one back at or above its lowest fired threshold, so wallets
whose balance stays between the two cost the ledger nothing.

An alert set above the balance the wallet already has starts disarmed: it
fires at the first crossing after the balance has been at or above it, never
at once for a balance that was already low when it was saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from plasmaart.billing.hooks import BillingHooks
from plasmaart.billing.plans import PlanService
from plasmaart.billing.repository import Payment
from plasmaart.clock import Clock
from plasmaart.controls import alerts_repository as repo
from plasmaart.controls.alerts_notices import BalanceAlertFired
from plasmaart.controls.watch import Bounds, WalletWatch
from plasmaart.errors import InvalidInput, NotFound
from plasmaart.ids import new_id
from plasmaart.outbox import Outbox
from plasmaart.outbox.webhooks import WebhookEvents

# Alerts one wallet may have.
MAX_ALERTS = 5
# The largest threshold in credits (far above any balance; keeps the column's range).
MAX_ALERT_CREDITS = 1_000_000_000
# The expiry notice's window a wallet may choose, in days (0: no notice).
MAX_EXPIRY_NOTICE_DAYS = 30


@dataclass(frozen=True)
class AlertSpec:
    """One alert as its owner sets it: ``credits`` or ``percent``."""

    credits: int | None = None
    percent: int | None = None


@dataclass(frozen=True)
class ExpiryNotice:
    """The wallet's expiry notice window: days, 0 for none, None for the
    operator's default."""

    days: int | None


@dataclass(frozen=True)
class AlertView:
    id: str
    credits: int | None
    percent: int | None
    # The threshold in credits now; None for a percent alert while the
    # wallet has no monthly allocation (a Free plan): it cannot fire then.
    threshold: int | None
    armed: bool
    crossings: int
    fired_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class AlertSettings:
    wallet_id: str
    available: int
    # The wallet's plan's monthly credits, which percents are of (0: none).
    monthly_credits: int
    alerts: list[AlertView]
    # As set (None: the operator's default), the default, and the one in force.
    expiry_notice_days: int | None
    default_expiry_notice_days: int

    @property
    def expiry_notice_days_in_force(self) -> int:
        if self.expiry_notice_days is None:
            return self.default_expiry_notice_days
        return self.expiry_notice_days


def resolve(credits: int | None, percent: int | None, monthly_credits: int) -> int | None:
    """An alert's threshold in credits: its credits, or its percent of the
    monthly allocation rounded up (so any percent of an allocation is at
    least one credit); None for a percent without an allocation."""
    if credits is not None:
        return credits
    if percent is None or monthly_credits <= 0:
        return None
    return -(-monthly_credits * percent // 100)


def checked_alerts(specs: Sequence[AlertSpec]) -> list[AlertSpec]:
    """The alerts if they may be saved; else ``InvalidInput`` naming the
    field (``alerts.<i>.credits`` …)."""
    if len(specs) > MAX_ALERTS:
        raise InvalidInput(
            f"a wallet has at most {MAX_ALERTS} balance alerts; {len(specs)} were given",
            field="alerts",
        )
    seen: dict[AlertSpec, int] = {}
    for index, spec in enumerate(specs):
        where = f"alerts.{index}"
        if (spec.credits is None) == (spec.percent is None):
            raise InvalidInput("give either credits or percent", field=where)
        if spec.credits is not None and not 1 <= spec.credits <= MAX_ALERT_CREDITS:
            raise InvalidInput(
                f"must be between 1 and {MAX_ALERT_CREDITS:,} credits", field=f"{where}.credits"
            )
        if spec.percent is not None and not 1 <= spec.percent <= 100:
            raise InvalidInput("must be between 1 and 100", field=f"{where}.percent")
        if spec in seen:
            name = "credits" if spec.credits is not None else "percent"
            raise InvalidInput(
                f"the same as alert {seen[spec] + 1} (alerts.{seen[spec]})",
                field=f"{where}.{name}",
            )
        seen[spec] = index
    return list(specs)


def checked_expiry_days(days: int | None) -> int | None:
    if days is not None and not 0 <= days <= MAX_EXPIRY_NOTICE_DAYS:
        raise InvalidInput(
            f"must be between 0 (no notice) and {MAX_EXPIRY_NOTICE_DAYS} days, or null",
            field="expiry_notice_days",
        )
    return days


class BalanceAlerts:
    """The alerts' settings and their watch (``seen``/``bounds``)."""

    def __init__(
        self,
        clock: Clock,
        plans: PlanService,
        outbox: Outbox,
        webhook_events: WebhookEvents,
        watch: WalletWatch,
        *,
        default_expiry_notice_days: int,
        billing_hooks: BillingHooks | None = None,
    ) -> None:
        self.clock = clock
        self.plans = plans
        self.outbox = outbox
        self.webhook_events = webhook_events
        self.watch = watch
        self.default_expiry_notice_days = default_expiry_notice_days
        if billing_hooks is not None:
            # A payment may change the plan, and so what a percent resolves to.
            billing_hooks.listen_to_payments(self._on_payment)

    # -- settings --------------------------------------------------------------

    def read(self, conn: Connection, wallet_id: str) -> AlertSettings:
        wallet = repo.wallet_settings(conn, wallet_id)
        if wallet is None:
            raise NotFound(f"no wallet {wallet_id!r}")
        return self._settings(conn, wallet, repo.alerts_of(conn, wallet_id))

    def replace(
        self,
        conn: Connection,
        wallet_id: str,
        specs: Sequence[AlertSpec],
        expiry: ExpiryNotice | None = None,
    ) -> AlertSettings:
        """Set the wallet's alerts to ``specs`` (and its expiry notice, unless
        None). An alert already set (the same credits or percent) keeps its
        id and its armed or fired state; a new one is armed if the balance is
        at or above it, else it starts disarmed. Nothing fires here."""
        wanted = checked_alerts(specs)
        days = None if expiry is None else checked_expiry_days(expiry.days)
        wallet = repo.lock_wallet(conn, wallet_id)
        if wallet is None:
            raise NotFound(f"no wallet {wallet_id!r}")
        existing = {AlertSpec(a.credits, a.percent): a for a in repo.alerts_of(conn, wallet_id)}
        kept = {spec for spec in wanted if spec in existing}
        repo.delete_alerts(conn, [a.id for spec, a in existing.items() if spec not in kept])
        monthly = self._monthly_credits(conn, wallet_id, wanted)
        now = self.clock.now()
        for spec in wanted:
            if spec in kept:
                continue
            threshold = resolve(spec.credits, spec.percent, monthly)
            repo.insert_alert(
                conn,
                alert_id=new_id("alrt"),
                wallet_id=wallet_id,
                credits=spec.credits,
                percent=spec.percent,
                armed=threshold is not None and wallet.available >= threshold,
                now=now,
            )
        if expiry is not None:
            repo.set_expiry_notice_days(conn, wallet_id, days)
            wallet = repo.LockedWallet(wallet.id, wallet.available, days)
        self.watch.recompute(conn, wallet_id)
        return self._settings(conn, wallet, repo.alerts_of(conn, wallet_id))

    # -- the watch source ------------------------------------------------------

    def seen(self, conn: Connection, wallet_id: str, available: int) -> None:
        """Fire every armed alert ``available`` is below (highest first), and
        re-arm every fired one it is back at or above."""
        alerts = repo.alerts_of(conn, wallet_id)
        if not alerts:
            return
        monthly = self._monthly_credits(conn, wallet_id, alerts)
        resolved = [(resolve(a.credits, a.percent, monthly), a) for a in alerts]
        firing = sorted(
            ((t, a) for t, a in resolved if t is not None and a.armed and available < t),
            key=lambda pair: -pair[0],
        )
        rearmed = [a.id for t, a in resolved if t is not None and not a.armed and available >= t]
        repo.set_armed(conn, rearmed, True)
        if not firing:
            return
        owner = repo.owner_of(conn, wallet_id)
        now = self.clock.now()
        for threshold, alert in firing:
            if not repo.fire(conn, alert.id, now) or owner is None:
                continue
            fact = BalanceAlertFired(
                alert.id,
                wallet_id,
                owner.team_id,
                available,
                threshold,
                alert.credits,
                alert.percent,
            )
            cause_key = f"credits_low:{alert.id}:{alert.crossings + 1}"
            self.outbox.enqueue(conn, cause_key=cause_key, user_id=owner.user_id, fact=fact)
            self.webhook_events.emit(
                conn,
                cause_key=cause_key,
                user_id=owner.user_id,
                type="credits.low",
                data=fact.data(),
            )

    def bounds(self, conn: Connection, wallet_id: str) -> Bounds:
        """Below the highest armed threshold (to fire it); at or above the
        lowest fired one (to re-arm it: ``above`` is exclusive, so one less)."""
        alerts = repo.alerts_of(conn, wallet_id)
        if not alerts:
            return Bounds()
        monthly = self._monthly_credits(conn, wallet_id, alerts)
        armed: list[int] = []
        fired: list[int] = []
        for alert in alerts:
            threshold = resolve(alert.credits, alert.percent, monthly)
            if threshold is not None:
                (armed if alert.armed else fired).append(threshold)
        return Bounds(
            below=max(armed) if armed else None,
            above=min(fired) - 1 if fired else None,
        )

    # -- inside ----------------------------------------------------------------

    def _on_payment(self, conn: Connection, payment: Payment) -> None:
        if any(a.percent is not None for a in repo.alerts_of(conn, payment.wallet_id)):
            self.watch.recompute(conn, payment.wallet_id)

    def _monthly_credits(
        self, conn: Connection, wallet_id: str, alerts: Sequence[AlertSpec | repo.AlertRow]
    ) -> int:
        # The plan is read only when a percent needs it, from this transaction.
        if not any(a.percent is not None for a in alerts):
            return 0
        return self.plans.plan_of(conn, wallet_id, fresh=True).monthly_credits

    def _settings(
        self,
        conn: Connection,
        wallet: repo.LockedWallet,
        alerts: list[repo.AlertRow],
    ) -> AlertSettings:
        monthly = self.plans.plan_of(conn, wallet.id, fresh=True).monthly_credits
        views = [
            AlertView(
                a.id,
                a.credits,
                a.percent,
                resolve(a.credits, a.percent, monthly),
                a.armed,
                a.crossings,
                a.fired_at,
                a.created_at,
            )
            for a in alerts
        ]
        # Highest threshold first (the order they fire in); waiting percents last.
        views.sort(key=lambda v: (v.threshold is None, -(v.threshold or 0), v.percent or 0))
        return AlertSettings(
            wallet_id=wallet.id,
            available=wallet.available,
            monthly_credits=monthly,
            alerts=views,
            expiry_notice_days=wallet.expiry_notice_days,
            default_expiry_notice_days=self.default_expiry_notice_days,
        )

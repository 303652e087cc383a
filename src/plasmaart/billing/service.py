"""Subscribing to a plan. The period's allocation is granted through the
ledger, in the caller's transaction, as a lot that expires at the period end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select

from plasmaart.billing.periods import add_months
from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.clock import Clock, as_utc
from plasmaart.db.tables import subscriptions
from plasmaart.errors import Conflict, InvalidInput
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService


class AlreadySubscribed(Conflict):
    code = "already_subscribed"
    title = "Already subscribed"


@dataclass(frozen=True)
class Subscription:
    id: str
    plan: str
    status: str
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    pending_plan: str | None


def effective_plan(catalog: Catalog, plan_id: str, status: str) -> PlanSpec:
    """The plan a subscription in ``status`` gives: its own while active or past
    due (the grace period), Free once canceled."""
    if status == "canceled":
        return catalog.default_plan
    try:
        return catalog.plan(plan_id)
    except KeyError:
        # A plan the operator removed from the catalog: its subscribers keep
        # nothing they could not be sold today.
        return catalog.default_plan


class BillingService:
    def __init__(self, clock: Clock, catalog: Catalog, ledger: LedgerService) -> None:
        self.clock = clock
        self.catalog = catalog
        self.ledger = ledger

    def subscription(self, conn: Connection, wallet_id: str) -> Subscription | None:
        row = conn.execute(
            select(subscriptions).where(subscriptions.c.wallet_id == wallet_id)
        ).one_or_none()
        if row is None:
            return None
        return Subscription(
            id=row.id,
            plan=row.plan_id,
            status=row.status,
            current_period_start=as_utc(row.current_period_start),
            current_period_end=as_utc(row.current_period_end),
            cancel_at_period_end=bool(row.cancel_at_period_end),
            pending_plan=row.pending_plan,
        )

    def current_plan(self, conn: Connection, wallet_id: str) -> PlanSpec:
        """The plan whose benefits the wallet has now: its subscription's while
        active or past due (within the grace period), else Free."""
        subscription = self.subscription(conn, wallet_id)
        if subscription is None:
            return self.catalog.default_plan
        return effective_plan(self.catalog, subscription.plan, subscription.status)

    def subscribe_paid(
        self, conn: Connection, *, user_id: str, wallet_id: str, plan_id: str, backend: str
    ) -> Subscription:
        """Start a subscription whose first payment has succeeded: active at
        once, this period's monthly credits granted at once."""
        try:
            plan = self.catalog.plan(plan_id)
        except KeyError:
            raise InvalidInput(f"unknown plan {plan_id!r}", field="plan") from None
        if plan.price_cents == 0:
            raise InvalidInput(f"{plan.name} needs no subscription", field="plan")
        existing = self.subscription(conn, wallet_id)
        if existing is not None and existing.status != "canceled":
            raise AlreadySubscribed(
                f"already subscribed to {existing.plan}; change the plan instead"
            )
        now = self.clock.now()
        period_end = add_months(now)
        subscription_id = existing.id if existing else new_id("sub")
        if existing is not None:
            conn.execute(subscriptions.delete().where(subscriptions.c.id == existing.id))
        conn.execute(
            insert(subscriptions).values(
                id=subscription_id,
                wallet_id=wallet_id,
                user_id=user_id,
                plan_id=plan.id,
                status="active",
                current_period_start=now,
                current_period_end=period_end,
                cancel_at_period_end=False,
                backend=backend,
                created_at=now,
                updated_at=now,
            )
        )
        if plan.monthly_credits:
            self.ledger.grant(
                conn,
                wallet_id,
                plan.monthly_credits,
                source="subscription",
                expires_at=period_end,
                reference=f"{subscription_id}:{now.isoformat()}",
                memo=f"{plan.name} monthly credits",
                idempotency_key=f"subscription:{subscription_id}:{now.isoformat()}",
            )
        return Subscription(subscription_id, plan.id, "active", now, period_end, False, None)

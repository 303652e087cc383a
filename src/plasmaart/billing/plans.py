"""The plan of a wallet: the one rule every part of the app asks.

``plan_of(wallet)`` / ``plans_of(wallets)`` say which plan's benefits a wallet
(a user's own, or the owner's wallet a team spends) has now:

* no subscription, or a canceled one: Free (the default plan) as in force now;
* active: its plan, on the terms in force when its period started (a period
  keeps the terms it started with); with ``cancel_at_period_end`` (or
  stopped by a suspension) Free from the period end on, even before the
  billing clock has run;
* past due (its renewal unpaid): its plan until the grace period ends
  (``rules.grace_ends_at``), Free after;
* a plan the operator removed from the catalog: Free.

Every caller (billing, teams, generation, fair use, announced changes, the
API, the dashboard, the admin user list) goes through here. Subscriptions are
cached per process (``caches``) and read in one query for a batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from plasmaart.accounts import repository as accounts_repo
from plasmaart.accounts.repository import UserBalances, UserSearch
from plasmaart.billing import repository as repo
from plasmaart.billing.periods import period_end_after
from plasmaart.billing.repository import Subscription
from plasmaart.billing.rules import grace_ends_at
from plasmaart.caches import CacheHub, TtlLru
from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.db.engine import pending_invalidations


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


def next_period_end(subscription: Subscription) -> datetime:
    """When the period after the current one ends (periods count from the
    subscription's billing anchor)."""
    anchor = subscription.billing_anchor or subscription.current_period_start
    return period_end_after(anchor, subscription.current_period_end)


@dataclass(frozen=True)
class UserOnPlan(UserBalances):
    """A user as the admin lists them: their own wallet's balances and the
    plan it has now (``plan``: the plan's id)."""

    plan: str


class PlanService:
    CACHED_WALLETS = 10_000

    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        *,
        grace_days: int = 7,
        caches: CacheHub | None = None,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.grace_days = grace_days
        # The subscription of each wallet, per process, when given ``caches``:
        # ``plan_of``/``plans_of`` then read the database only on a miss.
        # Writes of subscriptions invalidate ``wallet:<id>`` (a new one) and
        # ``subscription:<id>`` (a changed one); see billing/repository.py.
        self._hub = caches
        self._subscriptions: TtlLru[str, tuple[Subscription | None]] | None = (
            None if caches is None else caches.cache("subscriptions", self.CACHED_WALLETS)
        )

    def subscription(self, conn: Connection, wallet_id: str) -> Subscription | None:
        """The wallet's subscription as stored (any status), if it ever had one."""
        return repo.subscription_of_wallet(conn, wallet_id)

    def plan_of(self, conn: Connection, wallet_id: str, *, fresh: bool = False) -> PlanSpec:
        """The plan whose benefits the wallet has now (the module's rule).

        From the process's cache (``caches``) unless ``fresh``: a write
        that decides by the plan (a team's seats) reads it from its own
        transaction instead."""
        return self.plans_of(conn, [wallet_id], fresh=fresh)[wallet_id]

    def plans_of(
        self, conn: Connection, wallet_ids: Iterable[str], *, fresh: bool = False
    ) -> dict[str, PlanSpec]:
        """``plan_of`` each of ``wallet_ids``, reading the subscriptions and
        the announced changes once for all of them (a queue claim weighs
        dozens of wallets at a time, the admin user list a page of users)."""
        wanted = list(dict.fromkeys(wallet_ids))
        if not wanted:
            return {}
        if fresh:
            found = repo.subscriptions_of_wallets(conn, wanted)
        else:
            found = self._subscriptions_of(conn, wanted)
        now = self.clock.now()
        timeline = self.catalogs.timeline(conn)
        plans: dict[str, PlanSpec] = {}
        for wallet_id in wanted:
            subscription = found.get(wallet_id)
            if subscription is None:
                plans[wallet_id] = timeline.at(now).default_plan
                continue
            status = self.status_now(subscription, now)
            # A period keeps the terms it started with; Free is Free as of now.
            at = now if status == "canceled" else subscription.current_period_start
            plans[wallet_id] = effective_plan(timeline.at(at), subscription.plan, status)
        return plans

    def users_on_plans(self, conn: Connection, search: UserSearch) -> list[UserOnPlan]:
        """The users ``search`` finds (the admin's user list, the API's and
        the dashboard's), each with the plan this module's rule gives their
        wallet, read in one batch for the page: grace, cancellation at the
        period end and the catalog in force count, as everywhere else."""
        found = accounts_repo.users_with_balances(conn, search)
        plans = self.plans_of(conn, [user.wallet_id for user in found if user.wallet_id])
        free = None
        on_plans = []
        for user in found:
            if user.wallet_id is not None:
                plan = plans[user.wallet_id]
            else:  # a wallet never opened: Free, as in force now
                free = free or self.catalogs.now(conn).default_plan
                plan = free
            on_plans.append(UserOnPlan(**vars(user), plan=plan.id))
        return on_plans

    def status_now(self, subscription: Subscription, now: datetime) -> str:
        """The subscription's status as of ``now``, a period end (or a grace
        end) the billing clock has not reached yet already counted: a
        subscription canceled at its period end is ``canceled`` from then on,
        a past-due one from its grace end."""
        status = subscription.status
        if status == "active" and subscription.ends_at_period_end:
            if now >= subscription.current_period_end:
                return "canceled"
        elif status == "past_due" and now >= self.grace_ends_at(subscription):
            return "canceled"
        return status

    def grace_ends_at(self, subscription: Subscription) -> datetime:
        """When a past-due ``subscription`` falls to Free if nobody pays."""
        end = subscription.current_period_end
        return grace_ends_at(end, self.grace_days, next_period_end(subscription))

    def _subscriptions_of(self, conn: Connection, wallet_ids: list[str]) -> dict[str, Subscription]:
        """``repo.subscriptions_of_wallets``, from the cache where it can."""
        hub, cache = self._hub, self._subscriptions
        if hub is None or cache is None or pending_invalidations(conn):
            return repo.subscriptions_of_wallets(conn, wallet_ids)
        ttl = hub.ttl()
        found: dict[str, Subscription] = {}
        missing: list[str] = []
        for wallet_id in wallet_ids:
            hit: tuple[Subscription | None] | None = cache.get(wallet_id, ttl)
            if hit is None:
                missing.append(wallet_id)
            elif hit[0] is not None:
                found[wallet_id] = hit[0]
        if missing:
            epoch, born = cache.epoch, time.monotonic()
            read = repo.subscriptions_of_wallets(conn, missing)
            for wallet_id in missing:
                subscription = read.get(wallet_id)
                tags = [f"wallet:{wallet_id}"]
                if subscription is not None:
                    found[wallet_id] = subscription
                    tags.append(f"subscription:{subscription.id}")
                cache.put(wallet_id, (subscription,), epoch=epoch, born=born, tags=tags)
        return found

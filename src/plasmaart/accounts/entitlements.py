"""What a plan lets an account do beyond its models (remove the watermark,
share a team's seats), and the refusal when it does not: which plan, and the
cheapest plan that would (its id in ``required_plan``, for a program to act on)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

from plasmaart.catalog import Catalog, PlanSpec
from plasmaart.errors import Forbidden

# What accounts asks billing (a layer above, wired in by bootstrap): the plan
# a wallet has now.
PlanOf = Callable[[Connection, str], PlanSpec]


def cheapest_plan(catalog: Catalog, allows: Callable[[PlanSpec], bool]) -> PlanSpec | None:
    """The cheapest plan of ``catalog`` that ``allows``; None if none does."""
    return next((plan for plan in catalog.plans_by_price() if allows(plan)), None)


def watermark_removable(plan: PlanSpec) -> bool:
    return plan.watermark_removable


class NotInPlan(Forbidden):
    """``what`` ("teams are", "watermark removal is") is not part of ``plan``."""

    def __init__(self, what: str, plan: PlanSpec, cheapest: PlanSpec | None, *, it: str) -> None:
        includes = f"; {cheapest.name} includes {it}" if cheapest else ""
        extra = {"required_plan": cheapest.id} if cheapest else {}
        super().__init__(f"{what} not part of the {plan.name} plan{includes}", **extra)

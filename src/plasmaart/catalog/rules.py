"""Pure rules over the catalog: which plan may use which model, what a request
costs, which request params a model takes, and how far a plan jumps the queue.

Plain data in, plain data out; the price in force is whatever catalog the
caller passes, so a job keeps the price quoted when it was submitted.
"""

from __future__ import annotations

from collections.abc import Mapping

from plasmaart.catalog.schema import Catalog, ModelSpec, PlanSpec


def plan_allows_model(plan: PlanSpec, model: ModelSpec) -> bool:
    """Whether subscribers of ``plan`` may generate with ``model``."""
    if not model.available:
        return False
    if model.early_access and not plan.early_access:
        return False
    return model.tier in plan.model_tiers


def plan_models(catalog: Catalog, plan: PlanSpec) -> tuple[ModelSpec, ...]:
    """Every model of ``catalog`` that subscribers of ``plan`` may generate
    with, in catalog order: exactly those ``plan_allows_model`` lets through,
    so what a plan card lists is what a submission accepts."""
    return tuple(model for model in catalog.models if plan_allows_model(plan, model))


def required_plan(catalog: Catalog, model: ModelSpec) -> PlanSpec | None:
    """The cheapest plan that allows ``model``; ``None`` if no plan does."""
    for plan in catalog.plans_by_price():
        if plan_allows_model(plan, model):
            return plan
    return None


def quote_credits(model: ModelSpec, num_outputs: int) -> int:
    """Credits a request for ``num_outputs`` outputs of ``model`` costs.

    The policy charges per output requested. Raises ``ValueError`` when the
    model cannot make that many outputs in one request.
    """
    if not 1 <= num_outputs <= model.max_outputs:
        raise ValueError(
            f"{model.id} makes 1 to {model.max_outputs} outputs per request, {num_outputs} asked"
        )
    return model.credits * num_outputs


def param_errors(model: ModelSpec, params: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(field, message)`` for every request param ``model`` refuses; empty if none.

    Params the model does not know are refused too. Every param is optional:
    one left out takes its default, or the provider's.
    """
    errors: list[tuple[str, str]] = []
    for name, value in params.items():
        spec = model.params.get(name)
        if spec is None:
            errors.append((f"params.{name}", f"is not a parameter of {model.id}"))
            continue
        reason = spec.violation(value)
        if reason is not None:
            errors.append((f"params.{name}", reason))
    return errors


def queue_boost_seconds(catalog: Catalog, plan: PlanSpec) -> int:
    """How many seconds earlier than its enqueue time a job of ``plan`` is scheduled."""
    return catalog.queue.boost_seconds[plan.queue_class]

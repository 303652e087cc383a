"""``/v1/models``, ``/v1/plans``, ``/v1/credit-packs``: the catalog as API.md shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from plasmaart.catalog import Catalog, ModelSpec, PlanSpec
from plasmaart.catalog.rules import plan_allows_model, plan_models, required_plan
from plasmaart.errors import NotFound
from plasmaart.platform import Platform
from plasmaart.web.auth import OptionalPrincipal, Principal
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.pagination import Page, page_of
from plasmaart.web.schemas import shape

router = APIRouter(prefix="/v1", tags=["catalog"])


class ParamOut(BaseModel):
    type: str
    label: str = Field(description="What a form calls the parameter")
    help: str = Field(description="One sentence on what the parameter does")
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    default: Any = None


class ModelInputsOut(BaseModel):
    prompt: Literal["required"] = "required"
    max_prompt_chars: int
    image: Literal["none", "optional", "required"]
    params: dict[str, ParamOut]


class ModelOut(BaseModel):
    id: str
    name: str
    description: str = Field(description="One line on what the model is and what sets it apart")
    kind: Literal["text-to-image", "text-to-video", "image-to-video"]
    credits: int
    max_outputs: int
    tier: Literal["image", "video-medium", "video-premium"]
    inputs: ModelInputsOut
    available: bool
    required_plan: str | None
    early_access: bool
    upcoming_change: dict[str, Any] | None
    aliases: list[str]


class ConcurrencyOut(BaseModel):
    jobs: int
    video_jobs: int


class PlanOut(BaseModel):
    id: str
    name: str
    price_cents: int
    currency: str
    monthly_credits: int
    rollover_cap: int
    model_tiers: list[str]
    models: list[str] = Field(
        description="The ids of every model the plan includes, in catalog order: exactly "
        "the models a subscriber's submission accepts (the catalog in force now)"
    )
    queue_class: str
    features: list[str] = Field(
        description="The plan's benefits in the policy's words; `models` is what access is"
    )
    team_seats: int
    concurrency: ConcurrencyOut
    early_access: bool
    commercial_license: bool
    watermark_removable: bool
    max_queued_jobs: int
    requests_per_minute: int


class CreditPackOut(BaseModel):
    id: str
    credits: int
    price_cents: int
    currency: str
    expires_after_days: int | None


def model_out(
    catalog: Catalog,
    model: ModelSpec,
    plan: PlanSpec,
    upcoming: dict[str, dict[str, Any]] | None = None,
) -> ModelOut:
    cheapest = required_plan(catalog, model)
    return shape(
        ModelOut,
        model,
        inputs=ModelInputsOut(
            max_prompt_chars=model.max_prompt_chars,
            image=model.inputs.image,
            params={
                name: ParamOut.model_validate(spec.model_dump(exclude_none=True))
                for name, spec in model.params.items()
            },
        ),
        available=plan_allows_model(plan, model),
        required_plan=cheapest.id if cheapest else None,
        upcoming_change=(upcoming or {}).get(model.id),
    )


def plan_out(catalog: Catalog, plan: PlanSpec) -> PlanOut:
    return shape(
        PlanOut,
        plan,
        currency=catalog.currency,
        models=[model.id for model in plan_models(catalog, plan)],
    )


@dataclass(frozen=True)
class Offer:
    """The catalog in force as the caller sees it."""

    catalog: Catalog
    plan: PlanSpec  # whose access ``available`` reports: the caller's, Free when anonymous
    upcoming: dict[str, dict[str, Any]]  # each model's next announced change


def offer(platform: Platform, principal: Principal | None) -> Offer:
    """The catalog in force now, the caller's plan and each model's next
    announced change (``GET /v1/catalog/changes`` has them all), read in
    one transaction."""
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
        upcoming = platform.catalog_changes.upcoming(conn)
        if principal is None:
            plan = catalog.default_plan
        else:
            wallet = platform.ledger.wallet_of(conn, "user", principal.user.id)
            plan = platform.billing.plans.plan_of(conn, wallet)
    first: dict[str, dict[str, Any]] = {}
    for change in upcoming:
        if change.target == "model" and change.target_id not in first:
            first[change.target_id] = {
                "id": change.id,
                "field": change.field,
                "from": change.previous,
                "to": change.value,
                "effective_at": change.effective_at.isoformat(),
            }
    return Offer(catalog, plan, first)


@router.get("/models", response_model=Page[ModelOut])
def list_models(
    platform: PlatformDep,
    principal: OptionalPrincipal,
    paging: PageQuery,
) -> Page[ModelOut]:
    """Every model with its credits per output; ``available`` is for the
    caller's plan (Free without authentication)."""
    seen = offer(platform, principal)
    models = [
        model_out(seen.catalog, model, seen.plan, seen.upcoming) for model in seen.catalog.models
    ]
    return page_of(models, paging)


@router.get("/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, platform: PlatformDep, principal: OptionalPrincipal) -> ModelOut:
    """One model, by id or alias (the policy's "Flux Scnell" too)."""
    seen = offer(platform, principal)
    try:
        model = seen.catalog.model(model_id)
    except KeyError:
        raise NotFound(f"no model {model_id!r}") from None
    return model_out(seen.catalog, model, seen.plan, seen.upcoming)


@router.get("/plans", response_model=Page[PlanOut])
def list_plans(platform: PlatformDep, paging: PageQuery) -> Page[PlanOut]:
    """Every plan, cheapest first, as sold now: ``models`` lists what each
    includes, by the rule that gates submissions, beside the policy's words
    (``features``)."""
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
    plans = [plan_out(catalog, plan) for plan in catalog.plans_by_price()]
    return page_of(plans, paging)


@router.get("/credit-packs", response_model=Page[CreditPackOut])
def list_credit_packs(platform: PlatformDep, paging: PageQuery) -> Page[CreditPackOut]:
    catalog = platform.catalogs.base
    packs = [shape(CreditPackOut, pack, currency=catalog.currency) for pack in catalog.credit_packs]
    return page_of(packs, paging)

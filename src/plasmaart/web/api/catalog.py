"""``/v1/models``, ``/v1/plans``, ``/v1/credit-packs``: the catalog as API.md shows it."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from plasmaart.catalog import (
    Catalog,
    ModelSpec,
    PlanSpec,
    plan_allows_model,
    plan_models,
    required_plan,
)
from plasmaart.errors import NotFound
from plasmaart.platform import Platform
from plasmaart.web.auth import OptionalPrincipal, Principal
from plasmaart.web.deps import CursorQuery, LimitQuery, PlatformDep
from plasmaart.web.pagination import DEFAULT_LIMIT, Page, page_of

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
    return ModelOut(
        id=model.id,
        name=model.name,
        description=model.description,
        kind=model.kind,
        credits=model.credits,
        max_outputs=model.max_outputs,
        tier=model.tier,
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
        early_access=model.early_access,
        upcoming_change=(upcoming or {}).get(model.id),
        aliases=list(model.aliases),
    )


def plan_out(catalog: Catalog, plan: PlanSpec) -> PlanOut:
    return PlanOut(
        id=plan.id,
        name=plan.name,
        price_cents=plan.price_cents,
        currency=catalog.currency,
        monthly_credits=plan.monthly_credits,
        rollover_cap=plan.rollover_cap,
        model_tiers=list(plan.model_tiers),
        models=[model.id for model in plan_models(catalog, plan)],
        queue_class=plan.queue_class,
        features=list(plan.features),
        team_seats=plan.team_seats,
        concurrency=ConcurrencyOut(
            jobs=plan.concurrency.jobs, video_jobs=plan.concurrency.video_jobs
        ),
        early_access=plan.early_access,
        commercial_license=plan.commercial_license,
        watermark_removable=plan.watermark_removable,
        max_queued_jobs=plan.max_queued_jobs,
        requests_per_minute=plan.requests_per_minute,
    )


def upcoming_changes(platform: Platform) -> tuple[Catalog, dict[str, dict[str, Any]]]:
    """The catalog in force now, and each model's next announced change
    (``GET /v1/catalog/changes`` has them all)."""
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
        upcoming = platform.catalog_changes.upcoming(conn)
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
    return catalog, first


def caller_plan(platform: Platform, principal: Principal | None) -> PlanSpec:
    """The plan whose access ``available`` reports: the caller's, Free when anonymous."""
    if principal is None:
        with platform.db.read() as conn:
            return platform.catalogs.now(conn).default_plan
    with platform.db.read() as conn:
        wallet = platform.ledger.wallet_of(conn, "user", principal.user.id)
        return platform.billing.plans.plan_of(conn, wallet)


@router.get("/models", response_model=Page[ModelOut])
def list_models(
    platform: PlatformDep,
    principal: OptionalPrincipal,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ModelOut]:
    """Every model with its credits per output; ``available`` is for the
    caller's plan (Free without authentication)."""
    catalog, upcoming = upcoming_changes(platform)
    plan = caller_plan(platform, principal)
    models = [model_out(catalog, model, plan, upcoming) for model in catalog.models]
    return page_of(models, [m.id for m in models], limit, cursor)


@router.get("/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, platform: PlatformDep, principal: OptionalPrincipal) -> ModelOut:
    """One model, by id or alias (the policy's "Flux Scnell" too)."""
    catalog, upcoming = upcoming_changes(platform)
    try:
        model = catalog.model(model_id)
    except KeyError:
        raise NotFound(f"no model {model_id!r}") from None
    return model_out(catalog, model, caller_plan(platform, principal), upcoming)


@router.get("/plans", response_model=Page[PlanOut])
def list_plans(
    platform: PlatformDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> Page[PlanOut]:
    """Every plan, cheapest first, as sold now: ``models`` lists what each
    includes, by the rule that gates submissions, beside the policy's words
    (``features``)."""
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
    plans = [plan_out(catalog, plan) for plan in catalog.plans_by_price()]
    return page_of(plans, [p.id for p in plans], limit, cursor)


@router.get("/credit-packs", response_model=Page[CreditPackOut])
def list_credit_packs(
    platform: PlatformDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> Page[CreditPackOut]:
    catalog = platform.catalogs.base
    packs = [
        CreditPackOut(
            id=pack.id,
            credits=pack.credits,
            price_cents=pack.price_cents,
            currency=catalog.currency,
            expires_after_days=pack.expires_after_days,
        )
        for pack in catalog.credit_packs
    ]
    return page_of(packs, [p.id for p in packs], limit, cursor)

"""The shape of the catalog: models, plans, credit packs and queue settings.

Every number the policy sets lives in the catalog file; these classes say what
a well-formed catalog is, so that a mistake in that file stops the platform at
start-up instead of mispricing a generation later.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Literal, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

ModelKind = Literal["text-to-image", "text-to-video", "image-to-video"]
Tier = Literal["image", "video-medium", "video-premium"]
QueueClass = Literal["standard", "priority", "priority_gpu"]
ImageInput = Literal["none", "optional", "required"]
ParamType = Literal["string", "integer", "number", "boolean"]

TIERS: tuple[Tier, ...] = get_args(Tier)
QUEUE_CLASSES: tuple[QueueClass, ...] = get_args(QueueClass)

FREE_PLAN_ID = "free"

Slug = Annotated[str, Field(pattern=r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$", max_length=64)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr

# The catalog is validated in strict mode so that `credits = "8"` or
# `team_seats = true` is refused rather than coerced. TOML arrays arrive as
# lists, which strict mode would refuse as tuples, so sequence fields relax
# only the container; their items stay strict.
_LIST = Field(strict=False)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _normalize(key: str) -> str:
    # Ids and aliases are matched the way a person types them: "Flux Scnell",
    # "flux scnell" and " flux-scnell" all name the same model.
    return key.strip().casefold()


def _duplicates(values: Iterable[str]) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)


class ParamSpec(_Frozen):
    """One request parameter a model accepts, with its constraints.

    Bounds are inclusive. ``max_length`` applies to strings, ``minimum`` and
    ``maximum`` to numbers, ``enum`` to anything but booleans. ``label`` is what
    a form calls the parameter and ``help`` one sentence on what it does; both
    are required, so no form falls back to the parameter's name.
    """

    type: ParamType
    label: Annotated[str, Field(min_length=1, max_length=40)]
    help: Text
    enum: Annotated[tuple[Scalar, ...], _LIST, Field(min_length=1)] | None = None
    minimum: StrictInt | StrictFloat | None = None
    maximum: StrictInt | StrictFloat | None = None
    max_length: PositiveInt | None = None
    default: Scalar | None = None

    @model_validator(mode="after")
    def _constraints_fit_type(self) -> Self:
        numeric = self.type in ("integer", "number")
        if (self.minimum is not None or self.maximum is not None) and not numeric:
            raise ValueError(f"minimum and maximum apply to numbers, not to {self.type}")
        if self.max_length is not None and self.type != "string":
            raise ValueError(f"max_length applies to strings, not to {self.type}")
        if self.enum is not None and self.type == "boolean":
            raise ValueError("enum does not apply to boolean")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        for value in self.enum or ():
            # The enum is checked member by member against the other
            # constraints, so a value in the enum is always a valid value.
            reason = self._type_or_bound_violation(value)
            if reason is not None:
                raise ValueError(f"enum value {value!r} {reason}")
        if self.default is not None:
            reason = self.violation(self.default)
            if reason is not None:
                raise ValueError(f"default {self.default!r} {reason}")
        return self

    def violation(self, value: object) -> str | None:
        """Why ``value`` is refused for this parameter, or ``None`` if it is valid."""
        reason = self._type_or_bound_violation(value)
        if reason is None and self.enum is not None and value not in self.enum:
            reason = "must be one of " + ", ".join(repr(v) for v in self.enum)
        return reason

    def _type_or_bound_violation(self, value: object) -> str | None:
        # bool is a subclass of int, so it is excluded explicitly from numbers.
        if self.type == "boolean":
            return None if isinstance(value, bool) else "must be true or false"
        if self.type == "string":
            if not isinstance(value, str):
                return "must be a string"
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
            return None
        if self.type == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
            return "must be an integer"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "must be a number"
        # Only floats can be infinite or NaN; isfinite would overflow on a huge int.
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum}"
        return None


class ModelInputs(_Frozen):
    """Which inputs besides the prompt a model takes."""

    image: ImageInput = "none"


class ModelSpec(_Frozen):
    """One generative model as sold: its price per output and who may use it."""

    id: Slug
    name: Text
    # One line on what the model is and what sets it apart from its neighbours.
    description: Text
    kind: ModelKind
    credits: PositiveInt
    tier: Tier
    max_outputs: PositiveInt
    aliases: Annotated[tuple[Text, ...], _LIST] = ()
    early_access: bool = False
    available: bool = True
    provider_model: Text
    inputs: ModelInputs = ModelInputs()
    max_prompt_chars: PositiveInt
    params: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ParamSpec] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _kind_fits_tier_and_inputs(self) -> Self:
        if (self.kind == "text-to-image") != (self.tier == "image"):
            raise ValueError(f"a {self.kind} model cannot be in tier {self.tier!r}")
        if self.kind == "image-to-video" and self.inputs.image != "required":
            raise ValueError('image-to-video models need inputs.image = "required"')
        if self.kind != "image-to-video" and self.inputs.image == "required":
            raise ValueError(f"a {self.kind} model cannot require an input image")
        return self

    def lookup_keys(self) -> tuple[str, ...]:
        """The normalized names this model answers to: its id, then its aliases."""
        return tuple(_normalize(key) for key in (self.id, *self.aliases))


class Concurrency(_Frozen):
    """How many of a wallet's jobs may run at once, and how many of them video."""

    jobs: PositiveInt
    video_jobs: NonNegativeInt

    @model_validator(mode="after")
    def _video_within_jobs(self) -> Self:
        if self.video_jobs > self.jobs:
            raise ValueError(f"video_jobs {self.video_jobs} is more than jobs {self.jobs}")
        return self


class PlanSpec(_Frozen):
    """A subscription plan and every benefit it carries."""

    id: Slug
    name: Text
    price_cents: NonNegativeInt
    monthly_credits: NonNegativeInt
    model_tiers: Annotated[tuple[Tier, ...], _LIST, Field(min_length=1)]
    queue_class: QueueClass
    early_access: bool
    commercial_license: bool
    watermark_removable: bool
    team_seats: PositiveInt
    concurrency: Concurrency
    max_queued_jobs: PositiveInt
    requests_per_minute: PositiveInt
    rollover_cap: NonNegativeInt
    features: Annotated[tuple[Text, ...], _LIST] = ()

    @field_validator("model_tiers")
    @classmethod
    def _tiers_unique(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        repeated = _duplicates(tiers)
        if repeated:
            raise ValueError(f"tier listed twice: {', '.join(repeated)}")
        return tiers

    @model_validator(mode="after")
    def _video_tiers_can_run(self) -> Self:
        # A plan sold with video models but no video slot would take the
        # credits of jobs the scheduler never starts.
        sells_video = any(tier != "image" for tier in self.model_tiers)
        if sells_video and self.concurrency.video_jobs == 0:
            raise ValueError("a plan with video tiers needs concurrency.video_jobs >= 1")
        return self


class CreditPack(_Frozen):
    """Credits bought once, on any plan, added to the balance."""

    id: Slug
    credits: PositiveInt
    price_cents: NonNegativeInt
    # None: the credits never expire, as the policy promises by default.
    expires_after_days: PositiveInt | None = None


class QueueConfig(_Frozen):
    """How the scheduler favours higher plans without starving lower ones."""

    # A job's virtual start time is its enqueue time minus this boost, so a
    # higher class goes first by a bounded margin only.
    boost_seconds: dict[QueueClass, NonNegativeInt]
    # Worker slots only the priority_gpu class may take.
    reserved_gpu_slots: NonNegativeInt

    @field_validator("boost_seconds")
    @classmethod
    def _every_class_ordered(cls, boosts: dict[QueueClass, int]) -> dict[QueueClass, int]:
        missing = [queue_class for queue_class in QUEUE_CLASSES if queue_class not in boosts]
        if missing:
            raise ValueError(f"no boost for queue class {', '.join(missing)}")
        ordered = [boosts[queue_class] for queue_class in QUEUE_CLASSES]
        if ordered != sorted(ordered):
            got = ", ".join(f"{queue_class} {boosts[queue_class]}" for queue_class in QUEUE_CLASSES)
            raise ValueError(f"boosts must not decrease from class to class, got {got}")
        return boosts


class Catalog(_Frozen):
    """Everything sold: models, plans, credit packs, and the queue they share."""

    currency: Annotated[str, Field(pattern=r"^[a-z]{3}$")]
    models: Annotated[tuple[ModelSpec, ...], _LIST, Field(min_length=1)]
    plans: Annotated[tuple[PlanSpec, ...], _LIST, Field(min_length=1)]
    queue: QueueConfig
    credit_packs: Annotated[tuple[CreditPack, ...], _LIST] = ()

    @field_validator("models")
    @classmethod
    def _model_names_unique(cls, models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        # A name shared by two models would make a lookup depend on file
        # order, so every id and alias must be unique across all models.
        owners: dict[str, int] = {}
        clashes: list[str] = []
        for index, model in enumerate(models):
            for key in dict.fromkeys(model.lookup_keys()):
                first = owners.setdefault(key, index)
                if first != index:
                    clashes.append(
                        f"id or alias {key!r} is used twice: by models[{first}] "
                        f"({models[first].id}) and models[{index}] ({model.id})"
                    )
        if clashes:
            raise ValueError("; ".join(clashes))
        return models

    @field_validator("plans")
    @classmethod
    def _plans_unique_with_one_free(cls, plans: tuple[PlanSpec, ...]) -> tuple[PlanSpec, ...]:
        repeated = _duplicates(plan.id for plan in plans)
        if repeated:
            raise ValueError(f"duplicate plan id: {', '.join(repeated)}")
        # Everyone without a subscription is on the free plan, so it must
        # exist and be the only one that costs nothing.
        free = [plan.id for plan in plans if plan.price_cents == 0]
        if free != [FREE_PLAN_ID]:
            found = ", ".join(free) if free else "none"
            raise ValueError(
                f"exactly one plan must cost 0 and have id {FREE_PLAN_ID!r}; found: {found}"
            )
        return plans

    @field_validator("credit_packs")
    @classmethod
    def _packs_unique(cls, packs: tuple[CreditPack, ...]) -> tuple[CreditPack, ...]:
        repeated = _duplicates(pack.id for pack in packs)
        if repeated:
            raise ValueError(f"duplicate credit pack id: {', '.join(repeated)}")
        return packs

    def model(self, id_or_alias: str) -> ModelSpec:
        """The model with this id or alias (case and surrounding space ignored).

        Raises ``KeyError`` if none has it.
        """
        key = _normalize(id_or_alias)
        for model in self.models:
            if key in model.lookup_keys():
                return model
        raise KeyError(f"no model {id_or_alias!r}")

    def plan(self, plan_id: str) -> PlanSpec:
        """The plan with this id; raises ``KeyError`` if there is none."""
        for plan in self.plans:
            if plan.id == plan_id:
                return plan
        raise KeyError(f"no plan {plan_id!r}")

    def pack(self, pack_id: str) -> CreditPack:
        """The credit pack with this id; raises ``KeyError`` if there is none."""
        for pack in self.credit_packs:
            if pack.id == pack_id:
                return pack
        raise KeyError(f"no credit pack {pack_id!r}")

    @property
    def default_plan(self) -> PlanSpec:
        """The plan of everyone without a subscription."""
        return self.plan(FREE_PLAN_ID)

    def plans_by_price(self) -> tuple[PlanSpec, ...]:
        """The plans from cheapest to dearest; equal prices in id order."""
        return tuple(sorted(self.plans, key=lambda plan: (plan.price_cents, plan.id)))

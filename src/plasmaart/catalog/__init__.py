"""The catalog: what PlasmaArt sells and on what terms.

It owns the catalog data file (models with their credits per output, plans
with every benefit, credit packs, queue boosts), its schema, the loader that
refuses a bad file at start-up, the pure access and pricing rules over it, and
its plain-text rendering. It imports only the standard library and pydantic.

Announced changes to it (``changes.py``, pure) are stored in the database
(``repository.py``); ``catalogs.py`` is the one service that answers "which
catalog": ``Catalogs.base`` (the file as loaded), ``now`` and ``at`` (the
catalog in force); the ``changes`` package schedules changes and announces
them. Those modules are imported by name, not from here, so reading a catalog
needs no database.
"""

from plasmaart.catalog.loader import (
    DEFAULT_CATALOG_PATH,
    CatalogError,
    catalog_from_dict,
    load_catalog,
)
from plasmaart.catalog.rules import (
    param_errors,
    plan_allows_model,
    plan_models,
    queue_boost_seconds,
    quote_credits,
    required_plan,
)
from plasmaart.catalog.schema import (
    FREE_PLAN_ID,
    QUEUE_CLASSES,
    TIERS,
    Catalog,
    Concurrency,
    CreditPack,
    ImageInput,
    ModelInputs,
    ModelKind,
    ModelSpec,
    ParamSpec,
    ParamType,
    PlanSpec,
    QueueClass,
    QueueConfig,
    Tier,
)
from plasmaart.catalog.text_tables import render_catalog

__all__ = [
    "DEFAULT_CATALOG_PATH",
    "FREE_PLAN_ID",
    "QUEUE_CLASSES",
    "TIERS",
    "Catalog",
    "CatalogError",
    "Concurrency",
    "CreditPack",
    "ImageInput",
    "ModelInputs",
    "ModelKind",
    "ModelSpec",
    "ParamSpec",
    "ParamType",
    "PlanSpec",
    "QueueClass",
    "QueueConfig",
    "Tier",
    "catalog_from_dict",
    "load_catalog",
    "param_errors",
    "plan_allows_model",
    "plan_models",
    "queue_boost_seconds",
    "quote_credits",
    "render_catalog",
    "required_plan",
]

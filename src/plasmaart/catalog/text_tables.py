"""The catalog as plain-text tables, for ``plasmaart catalog show``."""

from __future__ import annotations

from collections.abc import Sequence

from plasmaart.catalog.rules import required_plan
from plasmaart.catalog.schema import Catalog, ModelSpec

_CURRENCY_SYMBOLS = {"usd": "$"}


def render_catalog(catalog: Catalog) -> str:
    """Models, plans and credit packs as three aligned tables, each under a title."""
    currency = catalog.currency
    models = _table(
        "Models (credits per output)",
        ["id", "name", "kind", "credits", "tier", "max outputs", "required plan"],
        [
            [
                model.id,
                model.name,
                model.kind,
                f"{model.credits:,}",
                model.tier,
                str(model.max_outputs),
                _plan_label(catalog, model),
            ]
            for model in catalog.models
        ],
        numeric={"credits", "max outputs"},
    )
    plans = _table(
        "Plans",
        [
            "id",
            "name",
            "price",
            "monthly credits",
            "tiers",
            "queue class",
            "seats",
            "concurrency",
            "queued max",
            "req/min",
            "rollover cap",
        ],
        [
            [
                plan.id,
                plan.name,
                _money(plan.price_cents, currency) + "/month",
                f"{plan.monthly_credits:,}",
                ", ".join(plan.model_tiers),
                plan.queue_class,
                str(plan.team_seats),
                f"{plan.concurrency.jobs} / {plan.concurrency.video_jobs}",
                str(plan.max_queued_jobs),
                str(plan.requests_per_minute),
                f"{plan.rollover_cap:,}",
            ]
            for plan in catalog.plans_by_price()
        ],
        numeric={"price", "monthly credits", "seats", "queued max", "req/min", "rollover cap"},
    )
    packs = _table(
        "Credit packs",
        ["id", "credits", "price", "expires"],
        [
            [
                pack.id,
                f"{pack.credits:,}",
                _money(pack.price_cents, currency),
                "never"
                if pack.expires_after_days is None
                else f"after {pack.expires_after_days} days",
            ]
            for pack in catalog.credit_packs
        ],
        numeric={"credits", "price"},
    )
    return "\n\n".join([models, plans, packs]) + "\n"


def _plan_label(catalog: Catalog, model: ModelSpec) -> str:
    plan = required_plan(catalog, model)
    if plan is not None:
        return plan.id
    return "unavailable" if not model.available else "no plan"


def _money(cents: int, currency: str) -> str:
    amount = f"{cents // 100:,}.{cents % 100:02d}"
    symbol = _CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


def _table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[str]
) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    right = [header in numeric for header in headers]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if align_right else cell.ljust(width)
            for cell, width, align_right in zip(cells, widths, right, strict=True)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([title, line(headers), rule, *(line(row) for row in rows)])

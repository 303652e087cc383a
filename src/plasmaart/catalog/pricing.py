"""The pricing page (``docs/pricing.md``): models, plans, packs and the credit
rules as a customer reads them, generated from a catalog so it cannot drift
from what the platform charges (``plasmaart catalog pricing``)."""

from __future__ import annotations

from collections.abc import Sequence

from plasmaart.catalog.rules import plan_allows_model
from plasmaart.catalog.schema import Catalog, ModelSpec, PlanSpec

REGENERATE = "plasmaart catalog pricing --file > docs/pricing.md"

_CURRENCY_SYMBOLS = {"usd": "$"}
_KINDS = {
    "text-to-image": "text to image",
    "text-to-video": "text to video",
    "image-to-video": "image to video",
}
_QUEUES = {"standard": "standard", "priority": "priority", "priority_gpu": "priority GPU"}


def _money(cents: int, currency: str) -> str:
    amount = f"{cents // 100:,}" if cents % 100 == 0 else f"{cents // 100:,}.{cents % 100:02d}"
    symbol = _CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


def _n(value: int) -> str:
    return f"{value:,}"


def _plural(count: int, word: str) -> str:
    return f"{_n(count)} {word}{'' if count == 1 else 's'}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _model_plans(catalog: Catalog, model: ModelSpec) -> str:
    plans = [plan.name for plan in catalog.plans_by_price() if plan_allows_model(plan, model)]
    if not model.available:
        return "not available"
    return ", ".join(plans) if plans else "no plan"


def _queue(catalog: Catalog, plan: PlanSpec) -> str:
    name = _QUEUES.get(plan.queue_class, plan.queue_class)
    boost = catalog.queue.boost_seconds[plan.queue_class]
    parts = [f"{boost} s ahead"] if boost else []
    if plan.queue_class == "priority_gpu" and catalog.queue.reserved_gpu_slots:
        parts.append(f"{_plural(catalog.queue.reserved_gpu_slots, 'reserved slot')} per worker")
    return name + (f" ({', '.join(parts)})" if parts else "")


def _tiers(catalog: Catalog, plan: PlanSpec) -> str:
    allowed = [model for model in catalog.models if plan_allows_model(plan, model)]
    kinds = []
    for tier, label in (
        ("image", "image"),
        ("video-medium", "medium-tier video"),
        ("video-premium", "premium video"),
    ):
        if any(model.tier == tier for model in allowed):
            kinds.append(label)
    return f"{len(allowed)} ({', '.join(kinds)})" if kinds else "none"


def render_pricing(
    catalog: Catalog,
    *,
    purchased_credits_expire_days: int | None = None,
    payment_grace_days: int = 7,
    notice_days: int = 14,
) -> str:
    """``docs/pricing.md`` for ``catalog`` under these settings, ending in one newline."""
    currency = catalog.currency
    plans = catalog.plans_by_price()
    paid = [plan for plan in plans if plan.price_cents > 0]
    out: list[str] = [
        "# Pricing",
        "",
        "<!-- Generated from the catalog by `" + REGENERATE + "`: do not edit by",
        "hand. tests/unit/test_pricing_page.py fails when it differs from the catalog. -->",
        "",
        "What PlasmaArt sells and on what terms, as a customer reads them. Every",
        "number comes from the catalog (`src/plasmaart/catalog/catalog.toml`); an",
        "operator with a catalog of its own (`PLASMAART_CATALOG_FILE`) makes its own",
        f"page with `{REGENERATE.split(' --file')[0]}`. Prices are in {currency.upper()}; "
        "the API serves the same",
        "data at `/v1/models`, `/v1/plans` and `/v1/credit-packs`.",
        "",
        "## How credits work",
        "",
    ]
    rollover = {plan.name: plan.rollover_cap for plan in paid if plan.rollover_cap}
    if rollover:
        carried = "; ".join(f"{name}: up to {_n(cap)}" for name, cap in rollover.items())
        rollover_rule = (
            f"Unused monthly credits expire at the end of the month, except what your "
            f"plan carries over to the next one ({carried})."
        )
    else:
        rollover_rule = (
            "Unused monthly credits expire at the end of the month: they do not roll over."
        )
    pack_lifetimes = {pack.expires_after_days for pack in catalog.credit_packs}
    if pack_lifetimes == {None} and purchased_credits_expire_days is None:
        purchased_rule = "Purchased credits never expire."
    elif purchased_credits_expire_days is not None:
        purchased_rule = (
            f"Purchased credits expire {_plural(purchased_credits_expire_days, 'day')} after "
            "the purchase, unless the pack says otherwise (below)."
        )
    else:
        purchased_rule = "Purchased credits expire as the pack says (below); others never."
    rules = [
        "**Credits per output.** Each model costs a fixed number of credits per "
        "output (below). A request for several outputs costs that many times "
        "the price: batch generation is charged by the number of outputs "
        "requested.",
        "**Deducted on submission.** The credits are taken from your balance "
        "when a generation is accepted, so you always see what is left. A "
        "request that is refused (not enough credits, a model your plan does "
        "not include, bad input) costs nothing.",
        "**Failures and cancellations are free.** A generation that fails, or "
        "that you cancel before it delivers, gives every credit back. If only "
        "some outputs of a batch arrive, you pay for those only and the rest "
        "comes back.",
        "**The price you were quoted.** A generation is charged the price in "
        "force when it was submitted, even if the price changes while it runs.",
        "**Monthly credits.** A plan grants its monthly credits at the start "
        f"of each billing month. {rollover_rule}",
        f"**Credit packs** add credits to your balance at any time, on any plan, "
        f"Free included. {purchased_rule}",
        "**Spending order.** Credits that expire soonest are spent first, so "
        "monthly credits go before purchased ones.",
        "**Upgrades are prorated.** An upgrade takes effect at once: you pay the "
        "difference in price for the part of the month left and get the "
        "difference in monthly credits for the same part. Downgrades and "
        "cancellations take effect at the end of the month you paid for.",
        f"**A failed payment** keeps your plan for a grace period of "
        f"{_plural(payment_grace_days, 'day')} (at most one month) while you "
        "pay; after it the account moves to Free. Credits already granted "
        "stay until they expire.",
        "**Refunds and disputes.** A refunded or disputed payment takes back "
        "the credits it granted that are not spent yet.",
        "**Fair use.** Each plan has a limit on requests per minute and on "
        "queued and running generations (below). Abuse of credit generation "
        "through automation, spamming, or exploit attempts will result in "
        "account suspension. A suspended account can still sign in, read and "
        "download its work and cancel its subscription, and is never charged "
        "a renewal while suspended.",
        f"**Changes are announced.** Prices, plan benefits and model "
        f"availability change only with at least {_plural(notice_days, 'day')}' "
        "notice, in the app and by e-mail.",
    ]
    out += [f"- {rule}" for rule in rules]

    out += ["", "## Models", ""]
    out += [
        "Credits per output; outputs per request is the largest batch one request may ask for.",
        "",
    ]
    out.append(
        _table(
            ["model", "id", "kind", "credits per output", "outputs per request", "plans"],
            [
                [
                    model.name,
                    f"`{model.id}`",
                    _KINDS.get(model.kind, model.kind),
                    _n(model.credits),
                    str(model.max_outputs),
                    _model_plans(catalog, model),
                ]
                for model in catalog.models
            ],
        )
    )
    aliases = [
        f"{model.name}: " + ", ".join(f'"{alias}"' for alias in model.aliases)
        for model in catalog.models
        if model.aliases
    ]
    if aliases:
        out += ["", "Other names a model answers to: " + "; ".join(aliases) + "."]
    early = [model.name for model in catalog.models if model.early_access]
    if early:
        out += ["", "Early access (plans with early access only): " + ", ".join(early) + "."]

    out += ["", "## Plans", ""]
    out.append(
        _table(
            ["plan", "price", "monthly credits", "models", "queue"],
            [
                [
                    plan.name,
                    (_money(plan.price_cents, currency) + "/month") if plan.price_cents else "free",
                    _n(plan.monthly_credits),
                    _tiers(catalog, plan),
                    _queue(catalog, plan),
                ]
                for plan in plans
            ],
        )
    )
    out += [
        "",
        "Queue: a generation waits behind earlier ones; a priority plan's "
        "generations are placed as if submitted that many seconds earlier, so "
        "they go first by that margin and nobody waits forever.",
        "",
        "### Benefits",
        "",
        "In the policy's words, then the license and the mark. Which models a "
        "plan includes is the Models table above.",
        "",
    ]
    for plan in plans:
        price = (_money(plan.price_cents, currency) + "/month") if plan.price_cents else "free"
        out.append(f"**{plan.name}** ({price}, {_n(plan.monthly_credits)} monthly credits)")
        out.append("")
        benefits = list(plan.features)
        benefits.append(
            "Commercial license for generated content"
            if plan.commercial_license
            else "Personal license for generated content"
        )
        benefits.append(
            "The PlasmaArt mark can be removed from outputs"
            if plan.watermark_removable
            else "Outputs carry a small PlasmaArt mark"
        )
        if plan.team_seats > 1:
            benefits.append(f"A team of up to {_plural(plan.team_seats, 'seat')} sharing credits")
        out += [f"- {benefit}" for benefit in dict.fromkeys(benefits)]
        out.append("")
    out += ["### Limits", ""]
    out.append(
        _table(
            [
                "plan",
                "generations at once",
                "videos at once",
                "queued generations",
                "requests per minute",
                "team seats",
                "monthly credits carried over",
            ],
            [
                [
                    plan.name,
                    str(plan.concurrency.jobs),
                    str(plan.concurrency.video_jobs),
                    str(plan.max_queued_jobs),
                    str(plan.requests_per_minute),
                    str(plan.team_seats),
                    _n(plan.rollover_cap) if plan.rollover_cap else "none",
                ]
                for plan in plans
            ],
        )
    )
    out += ["", "## Credit packs", ""]
    if catalog.credit_packs:
        out.append(
            _table(
                ["pack", "credits", "price", "per 1,000 credits", "credits expire"],
                [
                    [
                        f"`{pack.id}`",
                        _n(pack.credits),
                        _money(pack.price_cents, currency),
                        _money(round(pack.price_cents * 1000 / pack.credits), currency),
                        _pack_expiry(pack.expires_after_days, purchased_credits_expire_days),
                    ]
                    for pack in catalog.credit_packs
                ],
            )
        )
    else:
        out.append("No credit packs are sold.")
    return "\n".join(out).rstrip() + "\n"


def _pack_expiry(pack_days: int | None, default_days: int | None) -> str:
    days = pack_days if pack_days is not None else default_days
    return "never" if days is None else f"after {_plural(days, 'day')}"

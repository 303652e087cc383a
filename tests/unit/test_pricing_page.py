"""docs/pricing.md is generated from the catalog, so it cannot drift from
what the platform charges."""

from __future__ import annotations

from pathlib import Path

from plasmaart.catalog import load_catalog
from plasmaart.catalog.pricing import REGENERATE, render_pricing
from plasmaart.catalog.schema import Catalog
from plasmaart.config import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "pricing.md"


def _defaults() -> dict[str, int | None]:
    fields = Settings.model_fields
    return {
        name: fields[name].default
        for name in ("purchased_credits_expire_days", "payment_grace_days", "notice_days")
    }


def test_docs_pricing_is_what_the_catalog_makes() -> None:
    expected = render_pricing(load_catalog(None), **_defaults())  # type: ignore[arg-type]
    assert PAGE.read_text() == expected, (
        f"docs/pricing.md differs from the catalog: regenerate it with `{REGENERATE}` "
        "(without PLASMAART_CATALOG_FILE set)"
    )


def test_the_page_says_every_price_of_the_catalog() -> None:
    catalog = load_catalog(None)
    page = render_pricing(catalog)
    for model in catalog.models:
        assert f"| {model.name} | `{model.id}` |" in page
    assert "| Studio | $99/month | 11,000 |" in page
    assert "| `pack-3000` | 3,000 | $33 | $11 | never |" in page
    assert "Unused monthly credits expire at the end of the month: they do not roll over." in page
    assert "grace period of 7 days" in page
    assert "at least 14 days' notice" in page


def _with(catalog: Catalog, **changes: object) -> Catalog:
    return catalog.model_copy(update=changes)


def test_a_catalog_change_changes_the_page() -> None:
    catalog = load_catalog(None)
    veo3 = catalog.model("veo3").model_copy(update={"credits": 900})
    studio = catalog.plan("studio").model_copy(update={"rollover_cap": 2000})
    pack = catalog.pack("pack-1000").model_copy(update={"expires_after_days": 365})
    changed = _with(
        catalog,
        models=tuple(veo3 if m.id == "veo3" else m for m in catalog.models),
        plans=tuple(studio if p.id == "studio" else p for p in catalog.plans),
        credit_packs=(pack, *catalog.credit_packs[1:]),
    )
    page = render_pricing(changed, purchased_credits_expire_days=None, payment_grace_days=3)
    assert "| Veo3 | `veo3` | text to video | 900 | 1 | Pro, Studio |" in page
    assert "except what your plan carries over to the next one (Studio: up to 2,000)" in page
    assert "| Studio | 8 | 4 | 100 | 120 | 5 | 2,000 |" in page
    assert "| `pack-1000` | 1,000 | $12 | $12 | after 365 days |" in page
    assert "grace period of 3 days" in page
    assert page != render_pricing(catalog)

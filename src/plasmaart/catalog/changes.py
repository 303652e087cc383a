"""Announced changes to the catalog, as pure rules.

The policy lets PlasmaArt "adjust credit values, subscription benefits, or
model availability" provided users are "notified in advance of any material
changes". A change names one field of one model or plan, its new value and
the instant it takes effect. The catalog in force at a moment is the catalog
file with every change due by then applied, in order of effect
(``apply_changes``); whether a change may be scheduled at all is decided here
too (``change_problems``), by applying it and validating the result with the
catalog's own schema, so a change can never produce a catalog the loader
would have refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from plasmaart.catalog.loader import CatalogError, catalog_from_dict
from plasmaart.catalog.schema import Catalog

ChangeTarget = Literal["model", "plan"]

# What may be changed with notice. For a model, what the policy names: its
# credit value and its availability. For a plan, its price and every benefit a
# subscriber gets. Identity and presentation (ids, names, feature blurbs, the
# provider behind a model) are operator configuration, not announced terms.
CHANGEABLE_FIELDS: dict[ChangeTarget, tuple[str, ...]] = {
    "model": ("credits", "available"),
    "plan": (
        "price_cents",
        "monthly_credits",
        "rollover_cap",
        "model_tiers",
        "queue_class",
        "early_access",
        "commercial_license",
        "watermark_removable",
        "team_seats",
        "concurrency",
        "max_queued_jobs",
        "requests_per_minute",
    ),
}

_SOURCE = "catalog with announced changes"
_PATH = re.compile(r"^(models|plans)\[(\d+)\]\.")

# How long before a change takes effect its affected users hear of it again.
REMINDER_BEFORE = timedelta(days=1)


@dataclass(frozen=True)
class CatalogChange:
    """One scheduled change: ``field`` of the ``target`` ``target_id`` becomes
    ``value`` at ``effective_at``."""

    id: str
    target: ChangeTarget
    target_id: str
    field: str
    value: Any
    effective_at: datetime


def in_force(changes: Iterable[CatalogChange], at: datetime) -> list[CatalogChange]:
    """The changes that have taken effect by ``at``, in the order they apply."""
    return sorted(
        (change for change in changes if change.effective_at <= at),
        key=lambda change: (change.effective_at, change.id),
    )


def apply_changes(catalog: Catalog, changes: Iterable[CatalogChange], at: datetime) -> Catalog:
    """The catalog in force at ``at``: ``catalog`` with every change due by
    then applied, later ones over earlier ones.

    Raises ``CatalogError`` if the result is not a valid catalog (scheduling
    refuses such changes, so this means the catalog file changed under them).
    """
    due = in_force(changes, at)
    if not due:
        return catalog
    data = catalog.model_dump()
    for change in due:
        _set(data, change)
    return catalog_from_dict(data, source=_SOURCE)


def current_value(catalog: Catalog, target: ChangeTarget, target_id: str, field: str) -> Any:
    """The value of ``field`` of the target in ``catalog``, as JSON would carry it."""
    entry = _find(catalog.model_dump(), target, target_id)
    if entry is None:
        raise KeyError(f"no {target} {target_id!r}")
    value = entry[field]
    return list(value) if isinstance(value, tuple) else value


def change_problems(
    catalog: Catalog,
    scheduled: Sequence[CatalogChange],
    change: CatalogChange,
) -> list[tuple[str, str]]:
    """``(field, message)`` for every reason ``change`` cannot be scheduled
    on top of the ``scheduled`` ones; empty if it can.

    The change must name a changeable field of an existing model or plan, and
    the catalog must stay valid at its effective time and at the effective
    time of every change scheduled after it.
    """
    fields = CHANGEABLE_FIELDS.get(change.target)
    if fields is None:
        return [("target", 'must be "model" or "plan"')]
    if _find(catalog.model_dump(), change.target, change.target_id) is None:
        return [("id", f"no {change.target} {change.target_id!r}")]
    if change.field not in fields:
        return [
            (
                "field",
                f"{change.field!r} cannot be changed on a {change.target}; "
                f"changeable: {', '.join(fields)}",
            )
        ]
    before = apply_changes(catalog, scheduled, change.effective_at)
    if _same(current_value(before, change.target, change.target_id, change.field), change.value):
        return [("value", f"{change.field} is already {change.value!r} at that time")]
    together = [*scheduled, change]
    moments = sorted({c.effective_at for c in together if c.effective_at >= change.effective_at})
    for moment in moments:
        try:
            apply_changes(catalog, together, moment)
        except CatalogError as refused:
            return [("value", _reason(catalog, problem)) for problem in refused.problems]
    return []


def _same(current: Any, new: Any) -> bool:
    # True == 1 in Python; a boolean and a number are never the same value here.
    return type(current) is type(new) and current == new


def _reason(catalog: Catalog, problem: str) -> str:
    """A loader problem as an admin reads it: ``plans[2].price_cents: ...``
    becomes ``plan pro: price_cents: ...``."""
    problem = problem.removeprefix(f"catalog file {_SOURCE}: ")

    def _named(match: re.Match[str]) -> str:
        kind, index = match.group(1), int(match.group(2))
        entries = catalog.models if kind == "models" else catalog.plans
        name = entries[index].id if index < len(entries) else index
        return f"{kind[:-1]} {name}: "

    return _PATH.sub(_named, problem, count=1)


def _find(data: dict[str, Any], target: str, target_id: str) -> dict[str, Any] | None:
    for entry in data["models" if target == "model" else "plans"]:
        if entry["id"] == target_id:
            found: dict[str, Any] = entry
            return found
    return None


def _set(data: dict[str, Any], change: CatalogChange) -> None:
    entry = _find(data, change.target, change.target_id)
    if entry is None:
        raise CatalogError(
            _SOURCE,
            [f"change {change.id}: no {change.target} {change.target_id!r}"],
        )
    entry[change.field] = change.value

"""What the announcement of a catalog change tells each affected user, as a
fact for the notification outbox (``plasmaart.outbox``); the words are
``notify.texts``'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from plasmaart.catalog.changes import CatalogChange

Stage = Literal["announced", "reminder", "withdrawn"]


@dataclass(frozen=True)
class CatalogChangeNotice:
    """``change`` of the model or plan called ``name``, from ``previous``
    (both as in the catalog in force just before it); ``stage`` says whether
    this is the announcement, the reminder a day before, or the news that the
    change was withdrawn."""

    kind: ClassVar[str] = "catalog.change"
    change: CatalogChange
    stage: Stage
    name: str
    previous: Any
    # Of the catalog, for prices.
    currency: str

    def data(self) -> dict[str, Any]:
        change = self.change
        if self.stage == "withdrawn":
            return {"change_id": change.id, "stage": self.stage}
        return {
            "change_id": change.id,
            "target": change.target,
            "id": change.target_id,
            "field": change.field,
            "from": self.previous,
            "to": change.value,
            "effective_at": change.effective_at.isoformat(),
            "stage": self.stage,
        }

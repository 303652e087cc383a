"""What the announcement of a catalog change tells each affected user, as a
fact for the notification outbox (``plasmaart.outbox``); the words are
``notify.texts``'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from plasmaart.catalog.changes import ChangeTarget

Stage = Literal["announced", "reminder", "withdrawn"]


@dataclass(frozen=True)
class CatalogChangeNotice:
    """``field`` of the model or plan ``target_id`` (called ``name``) goes
    from ``previous`` to ``value`` at ``effective_at``; ``stage`` says
    whether this is the announcement, the reminder a day before, or the news
    that the change was withdrawn."""

    kind: ClassVar[str] = "catalog.change"
    change_id: str
    stage: Stage
    target: ChangeTarget
    target_id: str
    name: str
    field: str
    previous: Any
    value: Any
    effective_at: datetime
    # Of the catalog, for prices.
    currency: str

    def data(self) -> dict[str, Any]:
        if self.stage == "withdrawn":
            return {"change_id": self.change_id, "stage": self.stage}
        return {
            "change_id": self.change_id,
            "target": self.target,
            "id": self.target_id,
            "field": self.field,
            "from": self.previous,
            "to": self.value,
            "effective_at": self.effective_at.isoformat(),
            "stage": self.stage,
        }

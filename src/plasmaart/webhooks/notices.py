"""What webhook delivery tells an endpoint's owner, as a fact for the
notification outbox; the words are ``notify/letters/webhooks.py``'s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class EndpointDisabled:
    """Every delivery to the endpoint failed for ``failing_for_days`` days:
    it was turned off, and its pending deliveries stopped (in-app and mail)."""

    kind: ClassVar[str] = "webhooks.endpoint_disabled"
    endpoint_id: str
    url: str
    failing_since: datetime
    disabled_at: datetime
    failing_for_days: int
    last_error: str
    # Where its owner sees the delivery log and sets it up again (the dashboard).
    manage_url: str

    def data(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "url": self.url}

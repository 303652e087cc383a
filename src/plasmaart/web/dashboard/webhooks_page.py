"""The Webhooks page (``/webhooks``, docs/dashboard.md): the account's
endpoints with their events and state, the latest deliveries of each with
their attempts, and the account's own secret behind a Reveal button.

Every action (create, edit, enable, disable, rotate, delete, replay, reveal)
is a call to the JSON API from ``static/js/webhooks.js``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from plasmaart.outbox.webhooks import EVENT_TYPES
from plasmaart.platform import Platform
from plasmaart.web.dashboard.views import Frame
from plasmaart.webhooks.endpoints import MAX_ENDPOINTS, Endpoint, LoggedDelivery, secret_hint

# The deliveries each endpoint's log shows (the API pages through all of them).
LOG_ROWS = 20

# What each event means, for the checkboxes.
EVENT_LABELS: dict[str, str] = {
    "generation.succeeded": "A generation finished with its outputs",
    "generation.failed": "A generation failed (its credits released)",
    "generation.canceled": "A generation was canceled",
    "credits.low": "A balance alert crossed its threshold",
    "credits.expiring": "Credits are about to expire",
    "payment.succeeded": "A payment went through",
    "payment.failed": "A payment failed",
    "topup.succeeded": "An auto top-up bought credits",
    "topup.failed": "An auto top-up failed",
}


@dataclass(frozen=True)
class EndpointView:
    endpoint: Endpoint
    secret_hint: str
    deliveries: list[LoggedDelivery]
    more: bool
    # Until when the secret replaced by the last rotation signs too (None: it no longer does).
    overlap_until: datetime | None


def webhooks(conn: Connection, platform: Platform, frame: Frame) -> dict[str, Any]:
    """The page's context: endpoints with their latest deliveries, the event types."""
    service = platform.webhook_endpoints
    now = platform.clock.now()
    views = []
    for endpoint in service.endpoints_of(conn, frame.user.id):
        log = service.deliveries(conn, frame.user.id, endpoint.id, limit=LOG_ROWS)
        expires = endpoint.previous_secret_expires_at
        overlap = expires if expires is not None and expires > now else None
        hint = secret_hint(endpoint.secret)
        views.append(EndpointView(endpoint, hint, log.deliveries, log.more, overlap))
    return {
        "endpoints": views,
        "event_types": [(e, EVENT_LABELS.get(e, e)) for e in EVENT_TYPES],
        "max_endpoints": MAX_ENDPOINTS,
    }

"""Webhook events: what a user's webhooks are told, written in the
transaction of its cause (docs/webhooks.md).

A service that causes an event (a generation ending, a payment, a balance
alert, an auto top-up) calls ``WebhookEvents.emit`` with the event's
``type`` and ``data``. One row is written to ``webhook_events``, unless an
event with the same ``cause_key`` exists: each cause emits once, however
often the code that noticed it runs. The body delivered is fixed here, at
the moment it happened: ``{"type", "timestamp", "data"}``. The webhook
dispatcher (``plasmaart.webhooks``) fans each event out into one delivery
per endpoint of the user that subscribed to its type, plus one to the
event's ``webhook_url`` (a generation's per-request URL), and delivers them
at least once.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection

from plasmaart.clock import Clock
from plasmaart.db.values import WEBHOOK_EVENT_TYPES, WebhookEventType
from plasmaart.ids import new_id
from plasmaart.outbox import repository as repo

EVENT_TYPES: tuple[str, ...] = WEBHOOK_EVENT_TYPES


class WebhookEvents:
    """Writes webhook events in the caller's transaction."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def wanted(self, conn: Connection, user_id: str, type: WebhookEventType) -> bool:
        """Whether ``user_id`` has an enabled endpoint subscribed to ``type``
        (one SELECT): a cause that only endpoints hear of emits only then,
        so nobody's events pile up unheard."""
        return repo.webhook_wanted(conn, user_id, type)

    def emit(
        self,
        conn: Connection,
        *,
        cause_key: str,
        user_id: str,
        type: WebhookEventType,
        data: dict[str, Any],
        webhook_url: str | None = None,
    ) -> str | None:
        """Write the event ``type`` with ``data`` for ``user_id``'s webhooks
        (and for ``webhook_url``, if given); its id (the ``webhook-id`` every
        delivery of it carries), or None when this cause already emitted one."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {type!r}")
        now = self.clock.now()
        event_id = new_id("msg")
        payload = json.dumps(
            {"type": type, "timestamp": now.isoformat(), "data": data},
            separators=(",", ":"),
            sort_keys=True,
            default=str,
        )
        written = repo.insert_webhook_event(
            conn,
            event_id=event_id,
            cause_key=cause_key,
            user_id=user_id,
            type=type,
            payload=payload,
            webhook_url=webhook_url,
            now=now,
        )
        return event_id if written else None

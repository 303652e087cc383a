"""Webhook events are written in their cause's transaction, once per cause,
with the body fixed at that moment (outbox/webhooks.py)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import webhook_events
from plasmaart.outbox.webhooks import WebhookEvents
from plasmaart.platform import Platform
from tests.support.accounts import make_user


def test_an_event_is_written_once_per_cause_with_its_body(
    platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "events@example.com")
    events = WebhookEvents(clock)
    with platform.db.write() as conn:
        first = events.emit(
            conn,
            cause_key="generation:gen_1:succeeded",
            user_id=user.id,
            type="generation.succeeded",
            data={"id": "gen_1", "credits_charged": 4},
            webhook_url="https://example.com/hook",
        )
        again = events.emit(
            conn,
            cause_key="generation:gen_1:succeeded",
            user_id=user.id,
            type="generation.succeeded",
            data={"id": "gen_1", "credits_charged": 999},
        )
    assert first is not None
    assert first.startswith("msg_")
    assert again is None
    with platform.db.read() as conn:
        rows = conn.execute(select(webhook_events)).all()
    assert len(rows) == 1
    assert rows[0].id == first
    assert rows[0].webhook_url == "https://example.com/hook"
    assert rows[0].fanned_out_at is None
    assert json.loads(rows[0].payload) == {
        "type": "generation.succeeded",
        "timestamp": clock.now().isoformat(),
        "data": {"id": "gen_1", "credits_charged": 4},
    }


def test_an_unknown_type_is_refused_before_anything_is_written(
    platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "unknown@example.com")
    with pytest.raises(ValueError, match="unknown webhook event type"), platform.db.write() as conn:
        WebhookEvents(clock).emit(
            conn,
            cause_key="x",
            user_id=user.id,
            type="generation.exploded",  # type: ignore[arg-type]
            data={},
        )
    with platform.db.read() as conn:
        assert conn.execute(select(webhook_events)).all() == []

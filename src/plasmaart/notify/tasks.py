"""The worker's notification step: notice the causes that are found by
looking (announced changes, expiring credits, low balances), then deliver
what the outbox holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from plasmaart.bootstrap import Platform
from plasmaart.notify.notices import queue_expiry_notices, queue_low_balance_notices
from plasmaart.notify.outbox import DeliveryResult, OutboxDelivery


@dataclass(frozen=True)
class NotificationsTick:
    queued: int
    delivery: DeliveryResult


def run_notifications(platform: Platform, worker_id: str) -> NotificationsTick:
    """One pass; safe to run in several workers at once."""
    settings = platform.settings
    queued = platform.catalog_changes.queue_change_notices(platform.db).notices
    with platform.db.write() as conn:
        now = platform.clock.now()
        queued += queue_expiry_notices(
            conn, platform.outbox, now=now, within=timedelta(days=settings.expiry_notice_days)
        )
        queued += queue_low_balance_notices(
            conn, platform.outbox, now=now, threshold=settings.low_balance_credits
        )
    delivery = OutboxDelivery(platform.db, platform.clock, platform.notifications, platform.mailer)
    return NotificationsTick(queued, delivery.run(worker_id))

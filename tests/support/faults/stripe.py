"""Webhook storms: Stripe sending every event of the last hour again, in any
order (``FakeStripe.storm``), to one or more webhook URLs of the platform
under test (API processes, in-process live servers).

``inject`` is one storm: to each URL in turn, every event of the last hour
shuffled by the fault's seeded generator, each freshly signed; what each
delivery was answered is kept in ``storms`` for the test to check (every
answer 2xx). A storm is over when ``inject`` returns: ``heal`` has nothing to
undo.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta

from tests.support.fake_stripe import STORM_WINDOW, FakeStripe, Storm


class WebhookStorm:
    kind = "webhook storm"

    def __init__(
        self,
        fake: FakeStripe,
        webhook_urls: Sequence[str],
        rng: random.Random,
        *,
        within: timedelta = STORM_WINDOW,
        new_ids: bool = False,
    ) -> None:
        if not webhook_urls:
            raise ValueError("a storm needs at least one webhook URL")
        self.fake = fake
        self.webhook_urls = tuple(webhook_urls)
        self.rng = rng
        self.within = within
        self.new_ids = new_ids
        self.storms: list[Storm] = []

    def inject(self) -> None:
        for url in self.webhook_urls:
            self.storms.append(
                self.fake.storm(url, self.rng, within=self.within, new_ids=self.new_ids)
            )

    def heal(self) -> None:
        """Nothing lasts after a storm."""

    @property
    def sent(self) -> int:
        return sum(storm.sent for storm in self.storms)

    def failures(self) -> list[str]:
        """Every delivery not answered 2xx, as ``event type id: status body``."""
        return [
            f"{delivery.event_type} {delivery.event_id}: {delivery.status} {delivery.body}"
            for storm in self.storms
            for delivery in storm.deliveries
            if not 200 <= delivery.status < 300
        ]

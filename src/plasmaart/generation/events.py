"""``generation.updated`` events: a generation's state, to its submitter."""

from __future__ import annotations

from plasmaart.generation.service import Generation
from plasmaart.notify.events import EventBus


class GenerationEvents:
    def __init__(self, events: EventBus) -> None:
        self.events = events

    def __call__(self, generation: Generation) -> None:
        self.events.publish(
            [generation.user_id],
            "generation.updated",
            {
                "id": generation.id,
                "status": generation.status,
                "model": generation.model,
                "credits_held": generation.credits_held,
                "credits_charged": generation.credits_charged,
                "balance_after": generation.balance_after,
                "queue_position": generation.queue_position,
                "error": None
                if generation.error_code is None
                else {"code": generation.error_code, "message": generation.error_message},
            },
        )

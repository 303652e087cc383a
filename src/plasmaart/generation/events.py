"""``generation.updated`` events: a generation's state, to its submitter (and,
when it is queued, to the workers, which claim it at once)."""

from __future__ import annotations

from plasmaart.generation.service import Generation
from plasmaart.generation.wakeups import WAKEUP_ADDRESS
from plasmaart.notify.events import EventBus


class GenerationEvents:
    def __init__(self, events: EventBus) -> None:
        self.events = events

    def __call__(self, generation: Generation) -> None:
        # A newly queued job also wakes idle workers (generation/wakeups.py),
        # in the same message: no extra NOTIFY on the submission's path.
        addresses = [generation.user_id]
        if generation.status == "queued":
            addresses.append(WAKEUP_ADDRESS)
        self.events.publish(
            addresses,
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

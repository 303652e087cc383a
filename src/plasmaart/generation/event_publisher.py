"""``generation.updated`` events: a generation's state, to its submitter and,
for a team generation, to every current member of the team (its owner
included), who all see it in their lists; when it is queued, to the workers
too, which claim it at once."""

from __future__ import annotations

import logging

from plasmaart.db.engine import Database
from plasmaart.eventbus import EventBus
from plasmaart.generation.service import Generation
from plasmaart.generation.wakeups import WAKEUP_ADDRESS
from plasmaart.teams.service import TeamService

log = logging.getLogger(__name__)


class GenerationEvents:
    def __init__(self, events: EventBus, db: Database, teams: TeamService) -> None:
        self.events = events
        self.db = db
        self.teams = teams

    def recipients(self, generation: Generation) -> list[str]:
        """Who hears of ``generation``: its submitter (even one who has left
        the team since) and the team's members as they are now."""
        if generation.team_id is None:
            return [generation.user_id]
        try:
            # Called after commit: membership is read in a transaction of its own.
            with self.db.read() as conn:
                members = self.teams.member_ids(conn, generation.team_id)
        except Exception:
            # Events are best effort: the submitter still hears of it.
            log.exception("could not read the members of team %s", generation.team_id)
            members = []
        return list(dict.fromkeys([generation.user_id, *members]))

    def __call__(self, generation: Generation) -> None:
        # A newly queued job also wakes idle workers (generation/wakeups.py),
        # in the same message: no extra NOTIFY on the submission's path.
        addresses = self.recipients(generation)
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

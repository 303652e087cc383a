"""``generation.updated`` events: a generation's state, to its submitter and,
for a team generation, to every current member of the team (its owner
included), who all see it in their lists; when it is queued, to the workers
too, which claim it at once.

A final state is published as part of the transaction that ended the job
(``EventBus.publish_in``): on PostgreSQL its NOTIFY commits with it, so a
worker killed right after that commit cannot take the event with it; the
other states go out after commit, as before."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from sqlalchemy import Connection

from plasmaart.db.engine import Database, after_commit
from plasmaart.eventbus import EventBus
from plasmaart.generation.service import Generation
from plasmaart.generation.wakeups import WAKEUP_ADDRESS
from plasmaart.teams.service import TeamService

log = logging.getLogger(__name__)

EVENT = "generation.updated"
FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


class GenerationEvents:
    def __init__(self, events: EventBus, db: Database, teams: TeamService) -> None:
        self.events = events
        self.db = db
        self.teams = teams

    def recipients_in(self, conn: Connection, generation: Generation) -> list[str]:
        """``recipients``, read in the transaction that changed the job."""
        if generation.team_id is None:
            return [generation.user_id]
        members = self.teams.member_ids(conn, generation.team_id)
        return list(dict.fromkeys([generation.user_id, *members]))

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

    def __call__(self, conn: Connection, generation: Generation) -> None:
        """Announce ``generation``'s new state, which ``conn``'s open
        transaction wrote."""
        if generation.status in FINAL_STATES:
            self.events.publish_in(
                conn, self.recipients_in(conn, generation), EVENT, event_data(generation)
            )
        else:
            after_commit(conn, partial(self.publish, generation))

    def publish(self, generation: Generation) -> None:
        # A newly queued job also wakes idle workers (generation/wakeups.py),
        # in the same message: no extra NOTIFY on the submission's path.
        addresses = self.recipients(generation)
        if generation.status == "queued":
            addresses.append(WAKEUP_ADDRESS)
        self.events.publish(addresses, EVENT, event_data(generation))


def event_data(generation: Generation) -> dict[str, Any]:
    return {
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
    }

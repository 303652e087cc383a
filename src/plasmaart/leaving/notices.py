"""What leaving tells people, as facts for the notification outbox; the
words are ``notify/letters/leaving.py``'s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class AccountDeleted:
    """The goodbye letter, mailed to the address the account had."""

    kind: ClassVar[str] = "account.deleted"
    email: str
    at: datetime
    # Credits left in the wallet, forfeited by the deletion.
    forfeited: int
    generations: int
    files: int
    subscription_ended: bool
    # The name of the team the account owned, dissolved with it.
    team_dissolved: str | None

    def data(self) -> dict[str, Any]:
        return {"forfeited": self.forfeited, "generations": self.generations}


@dataclass(frozen=True)
class TeamDissolved:
    """A member's team is gone: its owner deleted their account."""

    kind: ClassVar[str] = "team.dissolved"
    team_id: str
    team_name: str

    def data(self) -> dict[str, Any]:
        return {"team_id": self.team_id}

"""The words of leaving: the goodbye letter of a deleted account, and the
notice to the members of a team its owner's deletion dissolved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.leaving.notices import AccountDeleted, TeamDissolved
from plasmaart.outbox import Text


def _credits(n: int) -> str:
    return f"{n:,} credit{'s' if n != 1 else ''}"


def account_deleted(fact: AccountDeleted) -> Text:
    deleted = [
        "your sign-in: your password, sessions and API keys no longer work, and your "
        "two-factor secret and recovery codes are gone",
        f"the prompts and parameters of your {fact.generations} generation(s), and "
        f"{fact.files} file(s) of yours (outputs and uploads) from our storage",
        "your notifications, and any mail to you we had not sent yet",
    ]
    if fact.subscription_ended:
        deleted.insert(0, "your subscription: it ended today, and nothing more will be charged")
    if fact.team_dissolved is not None:
        deleted.append(f"your team {fact.team_dissolved!r}: its members were told it is dissolved")
    if fact.forfeited:
        deleted.append(f"the {_credits(fact.forfeited)} left in your wallet")
    lines = "\n".join(f"- {item}" for item in deleted)
    when = f"{fact.at:%Y-%m-%d at %H:%M} UTC"
    body = f"""Your PlasmaArt account {fact.email} was deleted on {when}, as you asked.

We deleted:
{lines}

We kept, without your address (the account is now only a number):
- the journal of your credits, so that our books still balance;
- your payments and receipts, which tax law requires us to keep;
- the audit log of what was done on the account, for security.

This address is free again: you can sign up with it any time, as a new account.

If you did not ask for this, write to us at once."""
    return Text("Your PlasmaArt account was deleted", body)


def team_dissolved(fact: TeamDissolved) -> Text:
    body = (
        f"The team {fact.team_name!r} no longer exists: its owner deleted their account.\n\n"
        "You are no longer a member. Your own account, credits and generations are "
        "unchanged; generations of yours that were waiting in the team's queue were "
        "canceled, and charged nothing."
    )
    return Text(f"The team {fact.team_name} was dissolved", body)


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    AccountDeleted: account_deleted,
    TeamDissolved: team_dissolved,
}

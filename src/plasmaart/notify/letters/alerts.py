"""The words of a balance alert (``controls.alerts_notices``): the wallet's
available credits fell below a threshold its owner set. The notice says
which threshold, how it was set, and what to do about it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.controls.alerts_notices import BalanceAlertFired
from plasmaart.outbox import Text


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def balance_alert_fired(fact: BalanceAlertFired) -> Text:
    if fact.percent is not None:
        how = (
            f"the alert you set at {fact.percent}% of your monthly credits "
            f"({_plural(fact.threshold, 'credit')})"
        )
    else:
        how = f"the alert you set at {_plural(fact.threshold, 'credit')}"
    whose = "Your team's wallet" if fact.team_id is not None else "Your wallet"
    return Text(
        f"Your balance fell below {_plural(fact.threshold, 'credit')}",
        f"{whose} has {_plural(fact.available, 'credit')} available, below {how}.\n\n"
        "Buy a credit pack or change your plan to keep generating. This alert "
        "tells you again only after your balance has been back at or above "
        f"{_plural(fact.threshold, 'credit')}.\n\n"
        "You can change your alerts on the Credits page of your dashboard.",
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {BalanceAlertFired: balance_alert_fired}

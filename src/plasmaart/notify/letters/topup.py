"""The words of the auto top-up's notices (docs/credits.md, Auto top-up): a
declined run, the auto top-up turned off, a charge the bank wants
authenticated, the monthly cap reached. A run that succeeds is told by its
receipt (``receipts.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.controls.topup_notices import (
    TopupActionRequired,
    TopupCapReached,
    TopupDisabled,
    TopupFailed,
)
from plasmaart.errors import credits_text
from plasmaart.notify.letters.receipts import money
from plasmaart.outbox import Text


def topup_failed(fact: TopupFailed) -> Text:
    left = fact.limit - fact.failures
    return Text(
        "Your auto top-up failed",
        f"Your balance went below your auto top-up threshold, but buying "
        f"{credits_text(fact.credits)} for {money(fact.amount_cents, fact.currency)} "
        f"failed: {fact.reason}. Nothing was charged.\n\n"
        f"The auto top-up is still on and tries again the next time your balance "
        f"drops below the threshold. After {left} more failure"
        f"{'' if left == 1 else 's'} in a row it turns itself off. "
        "Check your payment method, or change the settings:\n"
        f"{fact.settings_url}",
    )


def topup_disabled(fact: TopupDisabled) -> Text:
    return Text(
        "Your auto top-up is off",
        f"Your auto top-up failed {fact.failures} times in a row, so it turned "
        f"itself off: no more credits will be bought automatically. The last "
        f"failure: {fact.reason}.\n\n"
        "Once your payment method works, turn it on again on the Credits page:\n"
        f"{fact.settings_url}",
    )


def topup_action_required(fact: TopupActionRequired) -> Text:
    return Text(
        "Your bank asks you to confirm an auto top-up",
        f"Your balance went below your auto top-up threshold, and we tried to buy "
        f"{credits_text(fact.credits)} for {money(fact.amount_cents, fact.currency)}. "
        "Your bank wants you to confirm this payment yourself, so nothing was "
        "charged and we will not try again on our own.\n\n"
        "To get the credits, buy the pack yourself here (your bank may ask you "
        "to confirm it):\n"
        f"{fact.url}\n\n"
        "Your auto top-up waits until you do, or until you change its settings.",
    )


def topup_cap_reached(fact: TopupCapReached) -> Text:
    return Text(
        "Your auto top-up reached its monthly cap",
        f"Your balance is below your auto top-up threshold, but another pack "
        f"({money(fact.price_cents, fact.currency)}) would take this month's auto "
        f"top-ups past your cap of {money(fact.cap_cents, fact.currency)} "
        f"({money(fact.spent_cents, fact.currency)} spent in {fact.month}). "
        "No more credits are bought automatically this month. You can raise the "
        "cap or buy credits yourself:\n"
        f"{fact.settings_url}",
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    TopupFailed: topup_failed,
    TopupDisabled: topup_disabled,
    TopupActionRequired: topup_action_required,
    TopupCapReached: topup_cap_reached,
}

"""The words of two-factor's security notices: turned on, turned off (by the
owner or by an operator), a recovery code used, new recovery codes made.
Each tells the owner what happened and what to do if it was not them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.accounts.second_factor_notices import (
    RecoveryCodesRegenerated,
    RecoveryCodeUsed,
    TwoFactorDisabled,
    TwoFactorEnabled,
)
from plasmaart.outbox import Text

_NOT_YOU = (
    "If this was not you, someone else can log in to your account: change your "
    "password at once and write to support."
)
# Below this many recovery codes, the notice says to make new ones.
FEW_CODES = 3


def _when(fact: TwoFactorEnabled | TwoFactorDisabled | RecoveryCodeUsed) -> str:
    return f"{fact.at:%Y-%m-%d at %H:%M} UTC"


def enabled(fact: TwoFactorEnabled) -> Text:
    return Text(
        "Two-factor authentication is on",
        f"Two-factor authentication was turned on for your PlasmaArt account on "
        f"{_when(fact)}. From now on, logging in asks for a code from your "
        "authenticator app after your password.\n\n"
        f"Keep the {fact.recovery_codes} recovery codes you were shown somewhere "
        "safe, away from your phone: each lets you in once if you lose the phone.\n\n" + _NOT_YOU,
    )


def disabled(fact: TwoFactorDisabled) -> Text:
    who = (
        "by our support team, at your request"
        if fact.by_operator
        else "from your account's settings"
    )
    return Text(
        "Two-factor authentication is off",
        f"Two-factor authentication was turned off for your PlasmaArt account on "
        f"{_when(fact)}, {who}. Logging in now needs only your password, and your "
        "recovery codes no longer work.\n\n"
        "You can turn it on again from Settings at any time.\n\n" + _NOT_YOU,
    )


def recovery_code_used(fact: RecoveryCodeUsed) -> Text:
    left = fact.codes_left
    count = f"{left} recovery code{'s' if left != 1 else ''}"
    advice = (
        f"You have {count} left. Make new ones from Settings soon: when none "
        "are left, a lost phone locks you out."
        if left < FEW_CODES
        else f"You have {count} left; each works once."
    )
    return Text(
        "A recovery code was used",
        f"One of your two-factor recovery codes was used on {_when(fact)} in place "
        f"of a code from your authenticator app. That code no longer works.\n\n"
        f"{advice}\n\n" + _NOT_YOU,
    )


def regenerated(fact: RecoveryCodesRegenerated) -> Text:
    return Text(
        "New two-factor recovery codes",
        f"{fact.recovery_codes} new recovery codes were made for your PlasmaArt "
        f"account on {fact.at:%Y-%m-%d at %H:%M} UTC; the old ones no longer work. "
        "Keep the new ones somewhere safe, away from your phone.\n\n" + _NOT_YOU,
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    TwoFactorEnabled: enabled,
    TwoFactorDisabled: disabled,
    RecoveryCodeUsed: recovery_code_used,
    RecoveryCodesRegenerated: regenerated,
}

"""The words of the password reset link and of the "password changed" notice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.accounts.password_notices import PasswordChanged, PasswordResetLink
from plasmaart.outbox import Text


def password_reset_link(fact: PasswordResetLink) -> Text:
    return Text(
        "Reset your PlasmaArt password",
        f"Someone (we hope you) asked to reset the password of the PlasmaArt "
        f"account of {fact.email}. Open this link to choose a new one:\n\n"
        f"{fact.url}\n\n"
        f"The link works once, for {fact.minutes} minutes. Using it logs out "
        "every browser signed in to your account.\n\n"
        "If you did not ask for it, ignore this message: your password stays "
        "as it is, and nobody can use the link without access to this mailbox.",
    )


def password_changed(fact: PasswordChanged) -> Text:
    how = (
        "with a password reset link sent to this address"
        if fact.how == "reset"
        else "from the account's settings"
    )
    ended = (
        "Every browser that was signed in was logged out."
        if fact.how == "reset"
        else "Every other browser that was signed in was logged out."
    )
    return Text(
        "Your PlasmaArt password was changed",
        f"The password of the PlasmaArt account of {fact.email} was changed "
        f"{how}, on {fact.at:%Y-%m-%d at %H:%M} UTC, from the address {fact.address}. "
        f"{ended} API keys keep working; you can see when each was last used, "
        "and revoke it, under Settings, Security.\n\n"
        "If this was you, there is nothing more to do.\n\n"
        "If it was not you, someone else knows your password or can read your "
        "mail. Reset your password at once here:\n\n"
        f"{fact.forgot_url}\n\n"
        "then revoke the sessions and API keys you do not recognise, turn on "
        "two-factor authentication, and write to "
        f"{fact.support_email} so that we can help you secure the account.",
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    PasswordResetLink: password_reset_link,
    PasswordChanged: password_changed,
}

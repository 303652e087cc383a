"""The words of proving and changing an address, and of the welcome mail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.accounts.address_notices import (
    AddressChanged,
    AddressChangeLink,
    AddressChangeRequested,
    AddressInUse,
    VerificationLink,
    Welcome,
)
from plasmaart.outbox import Text


def _price(cents: int, currency: str) -> str:
    symbol = "$" if currency.lower() == "usd" else currency.upper() + " "
    return f"{symbol}{cents / 100:,.0f}" if cents % 100 == 0 else f"{symbol}{cents / 100:,.2f}"


def _credits(n: int) -> str:
    return f"{n:,} credit" + ("" if n == 1 else "s")


def verification_link(fact: VerificationLink) -> Text:
    return Text(
        "Confirm your e-mail address",
        f"Please confirm that {fact.email} is your address by opening this link:\n"
        f"{fact.url}\n\n"
        f"The link works once, for {fact.valid_days} days. Until the address is "
        "confirmed you can log in and look around, but not subscribe, buy "
        "credits, join a team or create API keys.\n\n"
        "If you did not create a PlasmaArt account, do not open the link: "
        "ignore this message and nothing will happen.",
    )


def welcome(fact: Welcome) -> Text:
    allowance = (
        f"The {fact.plan_name} plan gives you {_credits(fact.monthly_credits)} a month."
        if fact.monthly_credits
        else f"You are on the {fact.plan_name} plan: it has no monthly credits, "
        "so you buy credits when you need them."
    )
    first = (
        "First, confirm your address with the link we sent in a separate mail. Then:\n\n"
        if fact.verify_first
        else "Your first steps:\n\n"
    )
    return Text(
        "Welcome to PlasmaArt",
        f"Welcome to PlasmaArt, {fact.email}. {first}"
        "1. Credits. Every generation costs credits, set by the model: "
        f"{fact.cheapest_model} costs {_credits(fact.cheapest_model_credits)} an "
        "output. Credits are taken only when a generation succeeds; failed or "
        f"canceled ones cost nothing. {allowance}\n\n"
        "2. Buy credits or subscribe on the Plan & billing page: a pack of "
        f"{_credits(fact.pack_credits)} costs {_price(fact.pack_price_cents, fact.pack_currency)}, "
        "and the plans add monthly credits and more models:\n"
        f"{fact.billing_url}\n\n"
        "3. Generate: write a prompt, choose a model and the number of outputs "
        "on the Create page:\n"
        f"{fact.create_url}\n\n"
        "4. Use the API or the Python client with an API key, made on the "
        "Settings page:\n"
        f"{fact.settings_url}\n\n"
        "The API's reference:\n"
        f"{fact.docs_url}\n\n"
        f"Questions about credits or billing? Write to {fact.support_email}.",
    )


def address_change_link(fact: AddressChangeLink) -> Text:
    return Text(
        "Confirm your new e-mail address",
        f"You asked to change the address of your PlasmaArt account from "
        f"{fact.old_email} to {fact.new_email}. Open this link to confirm it:\n"
        f"{fact.url}\n\n"
        f"The link works once, for {fact.valid_days} days. Until it is used the "
        f"account keeps {fact.old_email}.\n\n"
        "If you did not ask for this, ignore this message: nothing changes.",
    )


def address_change_requested(fact: AddressChangeRequested) -> Text:
    return Text(
        "A change of your e-mail address was requested",
        f"On {fact.at:%Y-%m-%d at %H:%M} UTC someone signed in to your PlasmaArt "
        f"account asked to change its address from {fact.old_email} to "
        f"{fact.new_email}. Nothing changes until the link mailed to the new "
        "address is used.\n\n"
        "If it was not you, change your password now and write to support: "
        "someone knows your password.",
    )


def address_changed(fact: AddressChanged) -> Text:
    return Text(
        "Your e-mail address was changed",
        f"The address of your PlasmaArt account changed from {fact.old_email} to "
        f"{fact.new_email} on {fact.at:%Y-%m-%d at %H:%M} UTC. Mail about the "
        "account, receipts and password resets now go to the new address.\n\n"
        "If it was not you, write to support at once from this address.",
    )


def address_in_use(fact: AddressInUse) -> Text:
    return Text(
        "Someone asked to use your address",
        f"On {fact.at:%Y-%m-%d at %H:%M} UTC another PlasmaArt account asked to "
        f"take {fact.email} as its address. This address already has an account, "
        "so nothing was changed, and your account is untouched. You do not need "
        "to do anything.",
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    VerificationLink: verification_link,
    Welcome: welcome,
    AddressChangeLink: address_change_link,
    AddressChangeRequested: address_change_requested,
    AddressChanged: address_changed,
    AddressInUse: address_in_use,
}

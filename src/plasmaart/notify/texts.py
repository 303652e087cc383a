"""Every word PlasmaArt's notices say: one function per fact, and ``render``,
the renderer ``bootstrap`` gives the outbox (``plasmaart.outbox``).

The services that cause a notice hand the outbox a fact (``accounts.notices``,
``billing.notices``, ``changes.notices``, ``notify.notices``); its title and
body are written here, in the policy's words, and stored with the message.
Account mail (links, receipts, invitations) is written in ``notify.letters``.
"""

from __future__ import annotations

from typing import Any

from plasmaart.accounts.notices import AccountReinstated, AccountSuspended, SignupAttempt
from plasmaart.billing.notices import RenewalDeclined, RenewalPaid
from plasmaart.changes.notices import CatalogChangeNotice
from plasmaart.notify.letters import TEXTS as LETTERS
from plasmaart.notify.letters.receipts import receipt_lines
from plasmaart.notify.notices import CreditsExpiring, LowBalance
from plasmaart.outbox import Fact, Text


def render(fact: Fact) -> Text:
    """The title and body of ``fact``'s notice."""
    match fact:
        case SignupAttempt():
            return signup_attempt(fact)
        case AccountSuspended():
            return account_suspended(fact)
        case AccountReinstated():
            return account_reinstated(fact)
        case RenewalPaid():
            return renewal_paid(fact)
        case RenewalDeclined():
            return renewal_declined(fact)
        case CatalogChangeNotice():
            return catalog_change(fact)
        case CreditsExpiring():
            return credits_expiring(fact)
        case LowBalance():
            return low_balance(fact)
    letter = LETTERS.get(type(fact))
    if letter is not None:
        return letter(fact)
    raise TypeError(f"no text for a {type(fact).__name__} ({fact.kind}) notice")


# -- accounts ------------------------------------------------------------------


def signup_attempt(fact: SignupAttempt) -> Text:
    return Text(
        "Someone tried to sign up with your address",
        f"Someone tried to create a new PlasmaArt account with {fact.email} "
        f"on {fact.at:%Y-%m-%d at %H:%M} UTC. This address already has an "
        "account, so nothing was created and your account is unchanged. "
        "If it was you, log in with your password instead. If it was "
        "not you, you can ignore this message.",
    )


def account_suspended(fact: AccountSuspended) -> Text:
    return Text(
        "Your account is suspended",
        f"Your account was suspended: {fact.reason}. It is read-only: you can still "
        "log in, see your balance, payments and generations, download your "
        "outputs and cancel your subscription, but not generate or buy. Queued "
        "generations were canceled with their credits released, and your "
        "subscription will not renew while the account is suspended. "
        "Contact support if you think this is a mistake.",
    )


def account_reinstated(_fact: AccountReinstated) -> Text:
    return Text(
        "Your account is reinstated",
        "Your account is active again; you can generate as before. A "
        "subscription still in its period renews as usual, unless you canceled it.",
    )


# -- billing -------------------------------------------------------------------


def renewal_paid(fact: RenewalPaid) -> Text:
    """The renewal's notice, which is its receipt too (billing/receipts.py)."""
    body = (
        f"{fact.credits} credits were added for the period ending "
        f"{fact.period_end:%Y-%m-%d}; {_money(fact.plan.price_cents, fact.currency)} was charged."
    )
    if fact.receipt is not None:
        body += "\n\n" + receipt_lines(fact.receipt)
    return Text(f"Your {fact.plan.name} subscription renewed", body)


def renewal_declined(fact: RenewalDeclined) -> Text:
    return Text(
        f"Payment for your {fact.plan.name} subscription failed",
        f"The renewal payment was declined ({fact.reason}). Pay within "
        f"{fact.grace_days} days to keep your plan; no new monthly credits "
        "are granted until then.",
    )


# -- credits -------------------------------------------------------------------


def credits_expiring(fact: CreditsExpiring) -> Text:
    return Text(
        f"{fact.credits} credits expire on {fact.expires_at:%Y-%m-%d}",
        f"{fact.credits} of your credits expire at {fact.expires_at:%Y-%m-%d %H:%M} UTC. "
        "Credits are spent soonest-expiring first, so generating before then uses them.",
    )


def low_balance(fact: LowBalance) -> Text:
    return Text(
        f"Your balance is low: {fact.available} credits",
        f"You have {fact.available} credits available, below {fact.threshold}. "
        "Buy a credit pack or change your plan to keep generating.",
    )


# -- catalog changes -----------------------------------------------------------


def catalog_change(fact: CatalogChangeNotice) -> Text:
    """The change in the policy's words; the reminder a day before and the
    withdrawal say which they are in their title."""
    title, body = _change(fact)
    if fact.stage == "reminder":
        return Text(f"Tomorrow: {_lower_first(title)}", body)
    if fact.stage == "withdrawn":
        return Text(
            f"Withdrawn: {_lower_first(title)}",
            "The change announced for "
            f"{fact.change.effective_at:%Y-%m-%d %H:%M} UTC will not happen; nothing changes.",
        )
    return Text(title, body)


def _change(fact: CatalogChangeNotice) -> Text:
    change, name = fact.change, fact.name
    when = change.effective_at.strftime("%Y-%m-%d %H:%M UTC")
    if change.target == "model":
        if change.field == "credits":
            return Text(
                f"{name} will cost {change.value} credits per output",
                f"From {when}, {name} costs {change.value} credits per output "
                f"(now {fact.previous}). Generations submitted before then keep the price "
                "they were quoted.",
            )
        if change.value:
            return Text(
                f"{name} becomes available again",
                f"From {when}, {name} can be used again on the plans that include it.",
            )
        return Text(
            f"{name} will be withdrawn",
            f"From {when}, {name} takes no new generations. Generations submitted "
            "before then still run, at the price they were quoted.",
        )
    label = change.field.replace("_", " ")
    old = _shown(change.field, fact.previous, fact.currency)
    new = _shown(change.field, change.value, fact.currency)
    return Text(
        f"The {name} plan changes: {label}",
        f"The {name} plan's {label} changes from {old} to {new} on {when}. "
        "Subscribers keep the current terms until the end of the billing period "
        "running then; the new terms apply from their next period.",
    )


def _shown(field: str, value: Any, currency: str) -> str:
    if field == "price_cents" and isinstance(value, int):
        return f"{_money(value, currency)} a month"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return str(value)


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency.upper()}"


def _lower_first(title: str) -> str:
    return f"{title[0].lower()}{title[1:]}"

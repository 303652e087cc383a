"""The words of account mail (single-use links, security notices, receipts,
invitations, welcome, goodbye): one module per feature, each with ``TEXTS``,
which maps the feature's fact types to the function that writes them.

``notify.texts.render`` looks a fact up here after the notices of its own.
A letter's body is plain text in paragraphs, with each link on a line of
its own; ``notify.email`` makes the HTML part from it and adds the support
address to both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.notify.letters import (
    addresses,
    alerts,
    invitations,
    leaving,
    passwords,
    receipts,
    twofa,
)
from plasmaart.notify.letters import topup as topup_letters
from plasmaart.notify.letters import webhooks as webhook_letters
from plasmaart.outbox import Text

# Each feature's module adds its TEXTS here: TEXTS.update(module.TEXTS).
TEXTS: dict[type[Any], Callable[[Any], Text]] = {}
TEXTS.update(twofa.TEXTS)
TEXTS.update(addresses.TEXTS)
TEXTS.update(passwords.TEXTS)
TEXTS.update(receipts.TEXTS)
TEXTS.update(invitations.TEXTS)
TEXTS.update(leaving.TEXTS)
TEXTS.update(alerts.TEXTS)
TEXTS.update(webhook_letters.TEXTS)
TEXTS.update(topup_letters.TEXTS)

"""The notification outbox's writer: what the platform has to tell a user,
queued in the same transaction as its cause.

A service that causes a notice (a renewal, a suspension, the announcement of
a catalog change) hands ``Outbox.enqueue`` a *fact*: what happened, as a small
frozen dataclass of its own package with the notification's ``kind`` and the
``data`` it carries. The service builds no words. The outbox turns the fact
into a title and a body with the renderer it was built with (all user-facing
text lives in ``notify``: ``notify.texts.render``, given by ``bootstrap``),
and stores them with the message, so the notice says what was true when it
happened however late it is delivered (``notify.delivery``).

Most messages are notices: shown in the app and mailed to the user's address.
A *letter* (``in_app=False``) is mail only: a single-use link, a receipt.
``to`` sends it to another address than the user's (a new address to verify;
an invitation, where there may be no user at all), and ``sensitive`` marks a
body that carries a secret, which delivery blanks once the mail is out.

Each message has a unique ``cause_key`` (say
``renewal:<subscription>:<period end>``); a second one for the same cause
writes nothing, so each cause notifies at most once however often, and in
however many workers, the code that noticed it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection

from plasmaart.clock import Clock
from plasmaart.ids import new_id
from plasmaart.outbox import repository as repo

TITLE_LENGTH = 200  # notification_outbox.title and notifications.title are VARCHAR(200)


class Fact(Protocol):
    """What happened, in the words of the package that caused it."""

    @property
    def kind(self) -> str:
        """The notification's kind, as ``GET /v1/notifications`` shows it."""

    def data(self) -> dict[str, Any]:
        """The notification's ``data``: ids and values a client can act on."""


class Text(NamedTuple):
    title: str
    body: str


Renderer = Callable[[Fact], Text]


def short_title(title: str) -> str:
    """``title`` cut to the column's length. Titles may quote user-chosen
    names; a long one must not fail the transaction that wanted to tell the
    user something."""
    if len(title) > TITLE_LENGTH:
        return title[: TITLE_LENGTH - 1] + "…"
    return title


class Outbox:
    """Queues notifications in the caller's transaction."""

    def __init__(self, clock: Clock, render: Renderer) -> None:
        self.clock = clock
        self.render = render

    def enqueue(
        self,
        conn: Connection,
        *,
        cause_key: str,
        user_id: str | None,
        fact: Fact,
        to: str | None = None,
        in_app: bool = True,
        sensitive: bool = False,
    ) -> bool:
        """Queue the notice of ``fact`` for ``user_id``; False if this cause
        already queued one (nothing is written then). ``to``: mail this
        address instead of the user's; ``in_app`` False: mail only;
        ``sensitive``: the body holds a secret (blanked after delivery)."""
        if user_id is None and (to is None or in_app):
            raise ValueError("a message without a user is a letter to an address")
        text = self.render(fact)
        return repo.insert_message(
            conn,
            message_id=new_id("obx"),
            cause_key=cause_key,
            user_id=user_id,
            kind=fact.kind,
            title=short_title(text.title),
            body=text.body,
            data=json.dumps(fact.data(), separators=(",", ":"), sort_keys=True),
            now=self.clock.now(),
            to_address=to,
            in_app=in_app,
            sensitive=sensitive,
        )

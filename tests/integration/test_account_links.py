"""Single-use links, the account routes' throttle and mail-only letters, on
SQLite and PostgreSQL: a token works once, for its purpose, until it expires;
the throttle refuses the request over the limit without counting it; a letter
reaches an address with no account, and a body that carried a secret is
blanked once sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from plasmaart.accounts.tokens import Throttled
from plasmaart.clock import ManualClock
from plasmaart.db.tables import account_tokens, auth_throttle, notification_outbox
from plasmaart.errors import InvalidToken
from plasmaart.notify.letters import TEXTS
from plasmaart.notify.repository import SCRUBBED_BODY
from plasmaart.outbox import Text
from plasmaart.platform import Platform
from plasmaart.worker import outbox_delivery
from tests.support.accounts import make_user


def rows(platform: Platform, table: Any) -> list[Any]:
    with platform.db.read() as conn:
        return list(conn.execute(select(table)))


def test_a_token_works_once_for_its_purpose(platform: Platform) -> None:
    ada = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        token = platform.account_tokens.issue(
            conn, "password_reset", user_id=ada.id, email=ada.email
        )
    [stored] = rows(platform, account_tokens)
    assert token not in stored.token_hash
    assert len(stored.token_hash) == 64
    with platform.db.write() as conn, pytest.raises(InvalidToken):
        platform.account_tokens.use(conn, "email_verification", token)
    with platform.db.write() as conn:
        assert platform.account_tokens.peek(conn, "password_reset", token).user_id == ada.id
        grant = platform.account_tokens.use(conn, "password_reset", token)
    assert (grant.user_id, grant.email) == (ada.id, ada.email)
    with platform.db.write() as conn, pytest.raises(InvalidToken):
        platform.account_tokens.use(conn, "password_reset", token)
    with platform.db.write() as conn, pytest.raises(InvalidToken):
        platform.account_tokens.use(conn, "password_reset", token[:-1] + "x")


def test_a_token_expires_and_a_newer_one_voids_the_older(
    platform: Platform, clock: ManualClock
) -> None:
    ada = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        old = platform.account_tokens.issue(conn, "password_reset", user_id=ada.id, email=ada.email)
        new = platform.account_tokens.issue(conn, "password_reset", user_id=ada.id, email=ada.email)
    with platform.db.write() as conn, pytest.raises(InvalidToken):
        platform.account_tokens.use(conn, "password_reset", old)
    clock.advance(timedelta(minutes=30))
    with platform.db.write() as conn, pytest.raises(InvalidToken):
        platform.account_tokens.use(conn, "password_reset", new)
    # Expired a day ago: the worker's clock forgets it.
    clock.advance(timedelta(days=1, seconds=1))
    with platform.db.write() as conn:
        assert platform.account_tokens.purge(conn) == 2
    assert rows(platform, account_tokens) == []


def test_the_throttle_refuses_over_the_limit_without_counting(
    platform: Platform, clock: ManualClock
) -> None:
    def take(subject: str = "ada@example.com") -> None:
        with platform.db.write() as conn:
            platform.throttle.take(
                conn,
                "reset",
                ((subject, 2), ("127.0.0.1", 3)),
                window=timedelta(minutes=15),
                what="reset requests",
            )

    take()
    clock.advance(timedelta(minutes=5))
    take()
    with pytest.raises(Throttled) as refused:
        take()
    assert refused.value.retry_after == 10 * 60
    assert refused.value.code == "rate_limited"
    assert len(rows(platform, auth_throttle)) == 4  # the refusal counted nothing
    take("bo@example.com")  # the client's third of three
    with pytest.raises(Throttled):
        take("cy@example.com")  # over the client's limit
    clock.advance(timedelta(minutes=10, seconds=1))
    take()  # the first request left the window


@dataclass(frozen=True)
class Invite:
    link: str
    kind: str = "test.invite"

    def data(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def invite_text() -> Any:
    TEXTS[Invite] = lambda fact: Text("You are invited", f"Join us:\n\n{fact.link}")
    yield
    del TEXTS[Invite]


def test_a_sensitive_letter_to_an_address_is_blanked_once_sent(
    platform: Platform, invite_text: Any
) -> None:
    ada = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        queued = platform.outbox.enqueue(
            conn,
            cause_key="invite:1",
            user_id=None,
            fact=Invite("http://127.0.0.1:8000/invitations?token=SECRET"),
            to="newcomer@example.com",
            in_app=False,
            sensitive=True,
        )
        again = platform.outbox.enqueue(
            conn,
            cause_key="invite:1",
            user_id=None,
            fact=Invite("http://127.0.0.1:8000/invitations?token=OTHER"),
            to="newcomer@example.com",
            in_app=False,
            sensitive=True,
        )
    assert (queued, again) == (True, False)
    result = outbox_delivery(platform).run("w")
    assert (result.claimed, result.delivered) == (1, 1)
    [mail] = platform.mail_folder.messages()
    assert mail.to == "newcomer@example.com"
    assert "token=SECRET" in mail.text
    [row] = rows(platform, notification_outbox)
    assert (row.email_status, row.body, row.data) == ("sent", SCRUBBED_BODY, "{}")
    # A letter is not an in-app notice.
    with platform.db.read() as conn:
        assert platform.notifications.list(conn, ada.id).items == []


def test_a_message_without_a_user_must_be_a_letter(platform: Platform, invite_text: Any) -> None:
    with platform.db.write() as conn, pytest.raises(ValueError, match="letter"):
        platform.outbox.enqueue(conn, cause_key="x", user_id=None, fact=Invite("l"))
    assert rows(platform, notification_outbox) == []

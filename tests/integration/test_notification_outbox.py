"""The notification outbox, on SQLite and PostgreSQL: each cause queued once
in its own transaction, delivered in-app and by e-mail to a real SMTP server
(aiosmtpd on a loopback port), retried with backoff while the server is down,
and never lost or doubled when a worker dies between claim and delivery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.clock import ManualClock
from plasmaart.db.tables import notification_outbox
from plasmaart.notify.delivery import LEASE, OutboxDelivery, retry_delay
from plasmaart.notify.email import SmtpMailer
from plasmaart.notify.notices import LowBalance, queue_expiry_notices, queue_low_balance_notices
from plasmaart.platform import Platform
from plasmaart.worker import Worker, run_notifications
from tests.support.accounts import TestUser, make_user
from tests.support.mail import Inbox, SmtpServer, free_port, text_of

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def smtp(port: int) -> Iterator[Inbox]:
    with SmtpServer(port) as inbox:
        yield inbox


def delivery(platform: Platform, port: int) -> OutboxDelivery:
    mailer = SmtpMailer("127.0.0.1", port, starttls=False, timeout_s=5)
    return OutboxDelivery(
        platform.db,
        platform.clock,
        platform.notifications,
        mailer,
        sender="noreply@plasmaart.test",
        support_email=platform.settings.support_email,
    )


def suspend(platform: Platform, user: TestUser, reason: str = "spam floods") -> None:
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, user.id)
        platform.accounts.set_status(conn, account, "suspended", actor="admin", reason=reason)


def in_app(platform: Platform, user: TestUser) -> list[tuple[str, str]]:
    with platform.db.read() as conn:
        page = platform.notifications.list(conn, user.id, limit=100)
    return [(n.kind, n.title) for n in reversed(page.items)]


def outbox_rows(platform: Platform) -> list[Any]:
    with platform.db.read() as conn:
        return list(conn.execute(select(notification_outbox).order_by(notification_outbox.c.id)))


def test_delivered_in_app_and_by_smtp(
    platform: Platform, port: int, smtp: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[list[str], str, Any]] = []
    monkeypatch.setattr(
        platform.events,
        "publish",
        lambda user_ids, kind, data: published.append((list(user_ids), kind, data)),
    )
    kai = make_user(platform, "kai@example.com")
    suspend(platform, kai)
    suspend(platform, kai, "again")  # already suspended: no new cause
    assert published == []  # queued, not delivered yet
    sender = delivery(platform, port)
    result = sender.run("worker-1")
    assert (result.claimed, result.delivered) == (1, 1)
    assert in_app(platform, kai) == [("account.suspended", "Your account is suspended")]
    # The live ``notification`` event of GET /v1/events, after the commit.
    [(to, kind, event)] = [p for p in published if p[1] == "notification"]
    assert (to, kind, event["kind"]) == ([kai.id], "notification", "account.suspended")
    [mail] = smtp.messages
    assert mail["To"] == "kai@example.com"
    assert mail["From"] == "noreply@plasmaart.test"
    assert mail["Subject"] == "Your account is suspended"
    assert "spam floods" in text_of(mail)
    [row] = outbox_rows(platform)
    assert (row.email_status, row.attempts, row.claimed_by) == ("sent", 1, None)
    assert row.delivered_at is not None
    # Nothing left: a second pass sends nothing.
    assert sender.run("worker-2").claimed == 0
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, kai.id)
        platform.accounts.set_status(conn, account, "active", actor="admin", reason=None)
    sender.run("worker-1")
    assert [kind for kind, _ in in_app(platform, kai)] == [
        "account.suspended",
        "account.reinstated",
    ]
    assert [m["Subject"] for m in smtp.messages] == [
        "Your account is suspended",
        "Your account is reinstated",
    ]


def test_each_cause_is_queued_once(platform: Platform) -> None:
    kai = make_user(platform, "kai@example.com")
    with platform.db.write() as conn:
        first = platform.outbox.enqueue(
            conn, cause_key="test:1", user_id=kai.id, fact=LowBalance(10, 50)
        )
        second = platform.outbox.enqueue(
            conn, cause_key="test:1", user_id=kai.id, fact=LowBalance(20, 50)
        )
    assert (first, second) == (True, False)
    assert [row.title for row in outbox_rows(platform)] == ["Your balance is low: 10 credits"]


def test_retried_with_backoff_while_the_smtp_server_is_down(
    platform: Platform, clock: ManualClock, port: int
) -> None:
    kai = make_user(platform, "kai@example.com")
    suspend(platform, kai)
    sender = delivery(platform, port)  # nothing listens on the port yet
    result = sender.run("worker-1")
    assert (result.claimed, result.retrying, result.delivered) == (1, 1, 0)
    [row] = outbox_rows(platform)
    assert (row.email_status, row.attempts, row.delivered_at) == ("pending", 1, None)
    assert row.last_error
    # In-app does not wait for e-mail.
    assert len(in_app(platform, kai)) == 1
    with SmtpServer(port) as inbox:
        assert sender.run("worker-1").claimed == 0  # not due before the backoff
        clock.advance(retry_delay(1))
        result = sender.run("worker-1")
        assert (result.claimed, result.delivered) == (1, 1)
        assert [m["Subject"] for m in inbox.messages] == ["Your account is suspended"]
    [row] = outbox_rows(platform)
    assert (row.email_status, row.attempts) == ("sent", 2)
    assert len(in_app(platform, kai)) == 1
    assert retry_delay(1) < retry_delay(2) < retry_delay(3)
    assert retry_delay(100) == retry_delay(50)


def test_a_down_smtp_server_ends_the_pass_after_one_attempt(platform: Platform, port: int) -> None:
    users = [make_user(platform, f"u{i}@example.com") for i in range(3)]
    for user in users:
        suspend(platform, user)
    result = delivery(platform, port).run("worker-1")  # nothing listens
    assert (result.claimed, result.retrying) == (1, 1)
    rows = outbox_rows(platform)
    assert sorted(row.attempts for row in rows) == [0, 0, 1]
    assert {row.claimed_by for row in rows} == {None}


def test_a_crash_between_claim_and_delivery_loses_nothing(
    platform: Platform, clock: ManualClock, port: int, smtp: Inbox
) -> None:
    kai = make_user(platform, "kai@example.com")
    suspend(platform, kai)
    sender = delivery(platform, port)
    [claimed] = sender.claim("worker-1")  # ... and worker-1 dies here
    assert sender.run("worker-2").claimed == 0  # leased to worker-1
    clock.advance(LEASE + timedelta(seconds=1))
    result = sender.run("worker-2")
    assert (result.claimed, result.delivered) == (1, 1)
    # worker-1 coming back to life finds its lease gone and does nothing.
    assert sender.deliver(claimed, "worker-1") == "lost_lease"
    assert len(in_app(platform, kai)) == 1
    assert len(smtp.messages) == 1


def test_a_crash_after_the_in_app_notification_sends_the_mail_only(
    platform: Platform, clock: ManualClock, port: int, smtp: Inbox
) -> None:
    kai = make_user(platform, "kai@example.com")
    suspend(platform, kai)
    down = delivery(platform, free_port())  # worker-1's SMTP send fails ...
    down.run("worker-1")
    assert len(in_app(platform, kai)) == 1
    clock.advance(retry_delay(1))
    assert delivery(platform, port).run("worker-2").delivered == 1
    assert len(in_app(platform, kai)) == 1
    assert len(smtp.messages) == 1


def test_renewal_and_failed_payment_are_notified_once(
    platform: Platform, clock: ManualClock
) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    clock.set(FEB_1)
    Worker(platform).run_once()
    Worker(platform).run_once()
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, kai.id, declines=True)
    clock.set(MAR_1)
    Worker(platform).run_once()
    Worker(platform).run_once()
    kinds = [kind for kind, _ in in_app(platform, kai)]
    assert kinds.count("billing.renewed") == 1
    assert kinds.count("billing.payment_failed") == 1
    # Without SMTP, each mail is written to the mail folder, once.
    assert {row.email_status for row in outbox_rows(platform)} == {"sent"}
    subjects = sorted(mail.subject for mail in platform.mail_folder.messages())
    assert subjects == sorted(row.title for row in outbox_rows(platform))
    assert all(
        mail.to == "kai@example.com" and mail.html for mail in platform.mail_folder.messages()
    )


def test_credits_about_to_expire_once_per_lot(platform: Platform, clock: ManualClock) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")  # 2000, expiring Feb 1
    make_user(platform, "pat@example.com", credits=500)  # purchased: never expire
    clock.set(FEB_1 - timedelta(days=4))
    with platform.db.write() as conn:
        assert (
            queue_expiry_notices(conn, platform.outbox, now=clock.now(), within=timedelta(3)) == 0
        )
    clock.set(FEB_1 - timedelta(days=3))
    for _ in range(2):
        run_notifications(platform, "worker-1")
    assert in_app(platform, kai) == [("credits.expiring", "2000 credits expire on 2026-02-01")]
    # One notice (beside the subscription's receipt, a letter).
    assert sorted(row.kind for row in outbox_rows(platform)) == [
        "billing.receipt",
        "credits.expiring",
    ]


def test_low_balance_once_per_crossing(platform: Platform) -> None:
    kai = make_user(platform, "kai@example.com", credits=100)
    make_user(platform, "zed@example.com")  # never had credits: never told it is low

    def spend(credits: int, key: str) -> str:
        with platform.db.write() as conn:
            return platform.ledger.hold(conn, kai.wallet_id, credits, idempotency_key=key).hold_id

    def notice_pass() -> int:
        with platform.db.write() as conn:
            return queue_low_balance_notices(
                conn, platform.outbox, now=platform.clock.now(), threshold=50
            )

    assert notice_pass() == 0  # 100: armed
    hold = spend(60, "first")  # 40 left: below
    assert notice_pass() == 1
    assert notice_pass() == 0
    with platform.db.write() as conn:
        platform.ledger.release(conn, hold, idempotency_key="back")
    assert notice_pass() == 0  # back to 100: armed again
    spend(70, "second")
    assert notice_pass() == 1
    run_notifications(platform, "worker-1")
    assert [kind for kind, _ in in_app(platform, kai)] == ["credits.low_balance"] * 2


def test_two_workers_share_the_outbox_without_doubles(
    platform: Platform, port: int, smtp: Inbox
) -> None:
    users = [make_user(platform, f"u{i}@example.com") for i in range(6)]
    for user in users:
        suspend(platform, user)
    sender = delivery(platform, port)
    barrier = threading.Barrier(2)
    delivered: list[int] = []
    failures: list[BaseException] = []

    def one_worker(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            delivered.append(sender.run(name, limit=4).delivered)
            delivered.append(sender.run(name, limit=4).delivered)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=one_worker, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert sum(delivered) == len(users)
    assert sorted(m["To"] for m in smtp.messages) == sorted(u.email for u in users)
    for user in users:
        assert len(in_app(platform, user)) == 1

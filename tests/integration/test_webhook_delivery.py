"""Webhook delivery (docs/webhooks.md): fan-out, signed POSTs to a receiver on
loopback, retries on the schedule, the endpoints' health, rotation overlaps,
per-request URLs, replays, the address rule at delivery time, concurrent
workers, and the events of generations and payments, on SQLite and PostgreSQL.

Every signature the receiver gets is checked by ``verify`` below, written
from the Standard Webhooks specification with hmac and base64 alone (not
with plasmaart's signing module)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.billing.tasks import run_billing_clock
from plasmaart.client import Client
from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    generations,
    notification_outbox,
    payments,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
    webhook_secrets,
)
from plasmaart.ids import new_id
from plasmaart.platform import Platform
from plasmaart.webhooks import transport
from plasmaart.webhooks.dispatcher import (
    FAILING_FOR,
    LEASE,
    MAX_ATTEMPTS,
    RETRY_SCHEDULE,
    WebhookDispatcher,
)
from plasmaart.worker import Worker, outbox_delivery, webhook_delivery
from tests.support.accounts import TestUser, make_user
from tests.support.http_fake import Answer, HttpFake
from tests.support.live_server import WAIT_S, live_server
from tests.support.pgserver import free_port
from tests.support.platforms import api_client, running_platform, settings_for
from tests.support.statements import Counts, StatementCounter

WORKER = "test-worker"
AT_ONCE = {"sandbox": {"delay_s": 0}}
# A receiver that hangs answers after this; the dispatcher under test gives up sooner.
HANG_S = 1.5
SHORT_TIMEOUT_S = 0.4


# -- the receiver, and signatures checked by hand ---------------------------------------


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver(HttpFake):
    """Records every POST; answers each with the next of ``answers`` (a
    status, or "hang"), then with ``default``."""

    name = "webhook-receiver"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self.answers: list[int | str] = []
        self.default: int | str = 200
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.in_flight: set[str] = set()
        self.overlaps = 0

    def wrap(self, context: ssl.SSLContext) -> None:
        """Serve https with ``context`` (before the server starts)."""
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = self.url.replace("http://", "https://")

    def respond(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        with self.lock:
            self.received.append(Received(method, target, dict(headers), body))
            answer = self.answers.pop(0) if self.answers else self.default
            message = headers.get("webhook-id", "")
            if message in self.in_flight:
                self.overlaps += 1
            self.in_flight.add(message)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if answer == "hang":
                time.sleep(HANG_S)
                return 200, {"late": True}, {}
            if answer == 302:
                return 302, b"", {"Location": f"{self.url}/elsewhere"}
            return int(answer), {"ok": answer == 200}, {}
        finally:
            with self.lock:
                self.in_flight.discard(message)


def verify(secret: str, received: Received) -> list[bool]:
    """Whether each ``v1`` signature of the request is the HMAC-SHA256, under
    ``secret``'s key, of ``id.timestamp.body`` (Standard Webhooks)."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_") :])
    message = (
        received.headers["webhook-id"].encode()
        + b"."
        + received.headers["webhook-timestamp"].encode()
        + b"."
        + received.body
    )
    expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
    results = []
    for part in received.headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        assert version == "v1"
        results.append(hmac.compare_digest(signature, expected))
    return results


def new_secret() -> str:
    return "whsec_" + base64.b64encode(hashlib.sha256(new_id("k").encode()).digest()).decode()


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def platform(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    """Deliveries to loopback allowed: the receiver listens there."""
    settings = settings_for(database_url, tmp_path / "var", webhooks_allow_private=True)
    with running_platform(settings, clock) as built:
        yield built


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as fake:
        yield fake


def dispatcher(platform: Platform, **options: Any) -> WebhookDispatcher:
    defaults: dict[str, Any] = {
        "allow_private": True,
        "connect_timeout_s": SHORT_TIMEOUT_S,
        "read_timeout_s": SHORT_TIMEOUT_S,
    }
    return WebhookDispatcher(
        platform.db,
        platform.clock,
        platform.outbox,
        platform.links,
        wall_clock=platform.job_clock,
        **{**defaults, **options},
    )


def add_endpoint(
    platform: Platform,
    user_id: str,
    url: str,
    events: list[str],
    *,
    secret: str | None = None,
    enabled: bool = True,
    previous_secret: str | None = None,
    previous_expires: datetime | None = None,
) -> tuple[str, str]:
    """An endpoint row, as the endpoints API writes it; (id, secret)."""
    endpoint_id = new_id("we")
    secret = secret or new_secret()
    now = platform.clock.now()
    with platform.db.write() as conn:
        conn.execute(
            insert(webhook_endpoints).values(
                id=endpoint_id,
                user_id=user_id,
                url=url,
                events=json.dumps(events),
                secret=secret,
                previous_secret=previous_secret,
                previous_secret_expires_at=previous_expires,
                enabled=enabled,
                created_at=now,
                updated_at=now,
            )
        )
    return endpoint_id, secret


def emit(
    platform: Platform,
    user_id: str,
    *,
    type: Any = "generation.succeeded",
    cause: str | None = None,
    webhook_url: str | None = None,
) -> str:
    with platform.db.write() as conn:
        event_id = platform.webhook_events.emit(
            conn,
            cause_key=cause or new_id("cause"),
            user_id=user_id,
            type=type,
            data={"id": "gen_test", "status": "succeeded"},
            webhook_url=webhook_url,
        )
    assert event_id is not None
    return event_id


def deliveries(platform: Platform, event_id: str | None = None) -> list[Any]:
    query = select(webhook_deliveries).order_by(webhook_deliveries.c.created_at)
    if event_id is not None:
        query = query.where(webhook_deliveries.c.event_id == event_id)
    with platform.db.read() as conn:
        return list(conn.execute(query))


def attempts(platform: Platform, delivery_id: str) -> list[Any]:
    with platform.db.read() as conn:
        return list(
            conn.execute(
                select(webhook_attempts)
                .where(webhook_attempts.c.delivery_id == delivery_id)
                .order_by(webhook_attempts.c.id)
            )
        )


def endpoint(platform: Platform, endpoint_id: str) -> Any:
    with platform.db.read() as conn:
        return conn.execute(
            select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
        ).one()


def count(platform: Platform, table: Any) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- delivery and signatures -----------------------------------------------------------------


def test_an_event_reaches_each_subscribed_endpoint_signed(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, secret = add_endpoint(platform, ana.id, f"{receiver.url}/a", ["generation.succeeded"])
    add_endpoint(platform, ana.id, f"{receiver.url}/other", ["payment.succeeded"])
    add_endpoint(platform, ana.id, f"{receiver.url}/off", ["generation.succeeded"], enabled=False)
    bob = make_user(platform, "bob@example.com")
    add_endpoint(platform, bob.id, f"{receiver.url}/bob", ["generation.succeeded"])

    event_id = emit(platform, ana.id)
    result = dispatcher(platform).run(WORKER)

    assert (result.events, result.created, result.succeeded) == (1, 1, 1)
    assert [(r.method, r.path) for r in receiver.received] == [("POST", "/a")]
    got = receiver.received[0]
    with platform.db.read() as conn:
        payload = conn.execute(
            select(webhook_events.c.payload).where(webhook_events.c.id == event_id)
        ).scalar_one()
    assert got.body == payload.encode()  # the stored bytes, exactly
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == event_id
    assert got.headers["webhook-timestamp"] == str(int(clock.now().timestamp()))
    assert verify(secret, got) == [True]
    assert verify(new_secret(), got) == [False]
    assert got.event["type"] == "generation.succeeded"
    assert set(got.event) == {"type", "timestamp", "data"}

    [delivery] = deliveries(platform, event_id)
    assert (delivery.endpoint_id, delivery.status, delivery.attempts) == (hook, "succeeded", 1)
    [attempt] = attempts(platform, delivery.id)
    assert (attempt.status_code, attempt.error) == (200, None)
    assert attempt.duration_ms >= 0
    # Fanned out once: another pass finds nothing.
    again = dispatcher(platform).run(WORKER)
    assert (again.events, again.claimed) == (0, 0)
    assert len(receiver.received) == 1


def test_retries_back_off_then_success_clears_the_failure(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, secret = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.answers = [500, "hang", 200]
    event_id = emit(platform, ana.id)
    started = clock.now()
    run = dispatcher(platform)

    assert run.run(WORKER).retrying == 1
    [delivery] = deliveries(platform, event_id)
    assert delivery.status == "pending"
    assert delivery.next_attempt_at.replace(tzinfo=None) == (started + RETRY_SCHEDULE[0]).replace(
        tzinfo=None
    )
    assert endpoint(platform, hook).failing_since is not None
    # Not due yet: nothing is sent.
    clock.advance(RETRY_SCHEDULE[0] - timedelta(seconds=1))
    assert run.run(WORKER).claimed == 0
    clock.advance(timedelta(seconds=1))
    assert run.run(WORKER).retrying == 1  # the receiver hung past the timeout
    clock.advance(RETRY_SCHEDULE[1])
    assert run.run(WORKER).succeeded == 1

    [delivery] = deliveries(platform, event_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 3, 200)
    logged = attempts(platform, delivery.id)
    assert [a.status_code for a in logged] == [500, None, 200]
    assert logged[0].error == "HTTP 500"
    assert "timed out" in logged[1].error
    assert endpoint(platform, hook).failing_since is None
    # Every attempt: the same webhook-id, its own timestamp, a valid signature.
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {event_id}
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3
    assert all(verify(secret, r) == [True] for r in receiver.received)


def test_a_delivery_fails_after_the_whole_schedule(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.default = 503
    event_id = emit(platform, ana.id)
    run = dispatcher(platform)
    started = clock.now()
    for delay in RETRY_SCHEDULE:
        assert run.run(WORKER).retrying == 1
        clock.advance(delay)
    assert run.run(WORKER).failed == 1
    [delivery] = deliveries(platform, event_id)
    assert (delivery.status, delivery.attempts) == ("failed", MAX_ATTEMPTS)
    assert len(attempts(platform, delivery.id)) == MAX_ATTEMPTS == 8
    # The schedule spans a day and more.
    assert clock.now() - started == sum(RETRY_SCHEDULE, timedelta())
    assert clock.now() - started > timedelta(hours=24)
    clock.advance(timedelta(days=2))
    assert run.run(WORKER).claimed == 0
    assert len(receiver.received) == MAX_ATTEMPTS


def test_a_redirect_is_not_followed(platform: Platform, receiver: Receiver) -> None:
    ana = make_user(platform, "ana@example.com")
    add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.answers = [302]
    event_id = emit(platform, ana.id)
    assert dispatcher(platform).run(WORKER).retrying == 1
    [delivery] = deliveries(platform, event_id)
    assert (delivery.last_status_code, delivery.last_error) == (302, "HTTP 302")
    assert [r.path for r in receiver.received] == ["/"]


def test_three_days_of_failures_disable_the_endpoint_and_tell_its_owner(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, _ = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.default = 500
    run = dispatcher(platform)
    first = emit(platform, ana.id)
    assert run.run(WORKER).retrying == 1
    failing_since = endpoint(platform, hook).failing_since
    assert failing_since is not None
    # Failures for less than three days leave it on (and failing since the first).
    clock.advance(FAILING_FOR - timedelta(minutes=1))
    emit(platform, ana.id)
    result = run.run(WORKER)
    assert result.disabled == []
    assert endpoint(platform, hook).enabled
    assert endpoint(platform, hook).failing_since == failing_since
    pending_before = [d.id for d in deliveries(platform) if d.status == "pending"]
    assert len(pending_before) == 2
    # Three days after the first failure, the next failure turns it off.
    clock.advance(timedelta(minutes=1))
    third = emit(platform, ana.id)
    result = run.run(WORKER)
    assert result.disabled == [hook]
    row = endpoint(platform, hook)
    assert not row.enabled
    assert row.disabled_at is not None
    assert "3 days" in row.disabled_reason
    # Its pending deliveries stopped; nothing more is sent.
    assert {d.status for d in deliveries(platform)} == {"failed"}
    stopped = next(d for d in deliveries(platform) if d.event_id == first)
    assert stopped.last_error == "the endpoint is disabled"
    sent = len(receiver.received)
    clock.advance(timedelta(days=1))
    emit(platform, ana.id)  # a later event: no delivery for a disabled endpoint
    assert run.run(WORKER).claimed == 0
    assert len(receiver.received) == sent
    assert len(deliveries(platform)) == 3
    assert third in {d.event_id for d in deliveries(platform)}
    # Its owner is told, in the app and by mail.
    with platform.db.read() as conn:
        notice = conn.execute(
            select(notification_outbox).where(
                notification_outbox.c.kind == "webhooks.endpoint_disabled"
            )
        ).one()
    assert notice.user_id == ana.id
    assert notice.title == "A webhook endpoint was turned off"
    assert receiver.url in notice.body
    assert "HTTP 500" in notice.body
    assert json.loads(notice.data) == {"endpoint_id": hook, "url": receiver.url}
    outbox_delivery(platform).run(WORKER)
    client_notices = platform.notifications
    with platform.db.read() as conn:
        shown = client_notices.list(conn, ana.id, limit=10)
    assert [n.kind for n in shown.items if n.kind.startswith("webhooks.")] == [
        "webhooks.endpoint_disabled"
    ]


def test_a_success_between_failures_starts_the_count_again(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, _ = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    run = dispatcher(platform)
    receiver.answers = [500]
    emit(platform, ana.id)
    run.run(WORKER)
    clock.advance(timedelta(days=2))
    emit(platform, ana.id)
    receiver.answers = [200, 200]
    run.run(WORKER)
    assert endpoint(platform, hook).failing_since is None
    receiver.default = 500
    clock.advance(timedelta(days=2))
    emit(platform, ana.id)
    assert run.run(WORKER).disabled == []
    assert endpoint(platform, hook).enabled  # failing for minutes, not days


# -- secrets: rotation, the account's own, replays ---------------------------------------


def test_both_secrets_sign_during_a_rotation_overlap(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    old = new_secret()
    _, secret = add_endpoint(
        platform,
        ana.id,
        receiver.url,
        ["generation.succeeded"],
        previous_secret=old,
        previous_expires=clock.now() + timedelta(hours=24),
    )
    emit(platform, ana.id)
    dispatcher(platform).run(WORKER)
    assert verify(secret, receiver.received[0]) == [True, False]
    assert verify(old, receiver.received[0]) == [False, True]
    # Once the overlap is over, the new secret signs alone.
    clock.advance(timedelta(hours=24))
    emit(platform, ana.id)
    dispatcher(platform).run(WORKER)
    assert verify(secret, receiver.received[1]) == [True]
    assert verify(old, receiver.received[1]) == [False]


def test_a_per_request_url_is_signed_with_the_account_secret(
    platform: Platform, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com")
    # No endpoint at all: the event's own URL is delivered.
    event_id = emit(platform, ana.id, webhook_url=f"{receiver.url}/job")
    assert count(platform, webhook_secrets) == 0
    dispatcher(platform).run(WORKER)
    with platform.db.read() as conn:
        secret = conn.execute(
            select(webhook_secrets.c.secret).where(webhook_secrets.c.user_id == ana.id)
        ).scalar_one()
    [got] = receiver.received
    assert got.path == "/job"
    assert got.headers["webhook-id"] == event_id
    assert verify(secret, got) == [True]
    [delivery] = deliveries(platform, event_id)
    assert delivery.endpoint_id is None
    # The secret made then is kept: the next delivery is signed with it too.
    emit(platform, ana.id, webhook_url=f"{receiver.url}/job")
    dispatcher(platform).run(WORKER)
    assert verify(secret, receiver.received[1]) == [True]
    assert count(platform, webhook_secrets) == 1


def test_a_per_request_url_uses_an_existing_account_secret(
    platform: Platform, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com")
    mine = new_secret()
    with platform.db.write() as conn:
        conn.execute(
            insert(webhook_secrets).values(
                user_id=ana.id, secret=mine, created_at=platform.clock.now()
            )
        )
    emit(platform, ana.id, webhook_url=receiver.url)
    dispatcher(platform).run(WORKER)
    assert verify(mine, receiver.received[0]) == [True]


def test_a_replay_is_delivered_with_the_same_webhook_id(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, secret = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    event_id = emit(platform, ana.id)
    dispatcher(platform).run(WORKER)
    clock.advance(timedelta(hours=3))
    # A replay, as the endpoints API writes it: a new pending delivery of the event.
    replay_id = new_id("wd")
    with platform.db.write() as conn:
        conn.execute(
            insert(webhook_deliveries).values(
                id=replay_id,
                event_id=event_id,
                endpoint_id=hook,
                url=receiver.url,
                status="pending",
                next_attempt_at=clock.now(),
                created_at=clock.now(),
            )
        )
    assert dispatcher(platform).run(WORKER).succeeded == 1
    first, replayed = receiver.received
    assert replayed.headers["webhook-id"] == first.headers["webhook-id"] == event_id
    assert replayed.body == first.body
    assert int(replayed.headers["webhook-timestamp"]) - int(
        first.headers["webhook-timestamp"]
    ) == int(timedelta(hours=3).total_seconds())
    assert verify(secret, replayed) == [True]
    assert [a.status_code for a in attempts(platform, replay_id)] == [200]


# -- addresses: the rule at delivery, and pinning ------------------------------------------------


def test_loopback_is_refused_at_delivery_without_a_request(
    platform: Platform, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com")
    port = urlsplit(receiver.url).port
    add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    # A name that resolves to 127.0.0.1 is refused too.
    add_endpoint(platform, ana.id, f"http://localhost:{port}/", ["generation.succeeded"])
    event_id = emit(platform, ana.id)
    result = dispatcher(platform, allow_private=False).run(WORKER)
    assert (result.claimed, result.retrying) == (2, 2)
    assert receiver.received == []
    for delivery in deliveries(platform, event_id):
        [attempt] = attempts(platform, delivery.id)
        assert attempt.status_code is None
        assert attempt.error.startswith("address refused:")
        assert "127.0.0.1" in attempt.error or "::1" in attempt.error


def test_the_request_goes_to_the_address_the_check_returned(
    platform: Platform, receiver: Receiver
) -> None:
    """The name is never resolved again after the check: a host that resolves
    to nothing at all (``.invalid``) is reached at the address the check
    returned, and the request still names the host."""
    ana = make_user(platform, "ana@example.com")
    port = urlsplit(receiver.url).port
    url = f"http://hooks.rebind.invalid:{port}/pinned"
    _, secret = add_endpoint(platform, ana.id, url, ["generation.succeeded"])
    checked: list[str] = []

    def resolve(target: str) -> list[ipaddress.IPv4Address]:
        checked.append(target)
        return [ipaddress.IPv4Address("127.0.0.1")]

    emit(platform, ana.id)
    assert dispatcher(platform, resolve=resolve).run(WORKER).succeeded == 1
    assert checked == [url]
    [got] = receiver.received
    assert got.path == "/pinned"
    assert got.headers["host"] == f"hooks.rebind.invalid:{port}"
    assert verify(secret, got) == [True]


def test_an_unresolvable_host_is_a_failed_attempt(platform: Platform) -> None:
    ana = make_user(platform, "ana@example.com")
    add_endpoint(platform, ana.id, "http://nothing.invalid/hook", ["generation.succeeded"])
    event_id = emit(platform, ana.id)
    assert dispatcher(platform).run(WORKER).retrying == 1
    [delivery] = deliveries(platform, event_id)
    assert "does not resolve" in delivery.last_error


# -- workers -----------------------------------------------------------------------------------


def test_two_workers_never_deliver_one_delivery_twice(
    platform: Platform, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com")
    add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.delay_s = 0.05
    sent = {emit(platform, ana.id) for _ in range(16)}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            run = dispatcher(platform)
            for _ in range(20):
                if not run.run(name, limit=4).busy:
                    break
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    got = [r.headers["webhook-id"] for r in receiver.received]
    assert sorted(got) == sorted(sent)  # each once
    assert receiver.overlaps == 0
    assert {d.status for d in deliveries(platform)} == {"succeeded"}
    assert count(platform, webhook_attempts) == len(sent)


def test_the_worker_delivers_in_its_own_loop(platform: Platform, receiver: Receiver) -> None:
    ana = make_user(platform, "ana@example.com")
    _, secret = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    emit(platform, ana.id)
    worker = Worker(platform, concurrency=1)
    thread = worker.start_thread()
    try:
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(receiver.received) == 1
    assert verify(secret, receiver.received[0]) == [True]
    assert webhook_delivery(platform).run(WORKER).claimed == 0


# -- generation events ----------------------------------------------------------------------------


def submit(client: TestClient, user: TestUser, **body: Any) -> Any:
    return client.post(
        "/v1/generations",
        json={"model": "flux-schnell", "prompt": "a red fox in snow", "params": AT_ONCE, **body},
        headers=user.auth,
    )


def run_jobs(platform: Platform) -> None:
    worker = Worker(platform, concurrency=2)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() >= 1


def test_a_generation_with_a_webhook_url_end_to_end(
    platform: Platform, client: TestClient, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com", plan="studio")
    answer = submit(client, ana, webhook_url=f"{receiver.url}/done", num_outputs=2)
    assert answer.status_code == 201, answer.text
    generation_id = answer.json()["id"]
    with platform.db.read() as conn:
        stored = conn.execute(
            select(generations.c.webhook_url).where(generations.c.id == generation_id)
        ).scalar_one()
    assert stored == f"{receiver.url}/done"
    run_jobs(platform)
    assert webhook_delivery(platform).run(WORKER).succeeded == 1

    [got] = receiver.received
    with platform.db.read() as conn:
        secret = conn.execute(
            select(webhook_secrets.c.secret).where(webhook_secrets.c.user_id == ana.id)
        ).scalar_one()
    assert verify(secret, got) == [True]
    event = got.event
    assert event["type"] == "generation.succeeded"
    data = event["data"]
    shown = client.get(f"/v1/generations/{generation_id}", headers=ana.auth).json()
    for name in ("id", "status", "model", "num_outputs", "credits_charged", "balance_after"):
        assert data[name] == shown[name]
    assert data["status"] == "succeeded"
    assert data["credits_charged"] == 2
    assert data["error"] is None
    assert len(data["outputs"]) == 2
    # The output links work without credentials, for whoever receives them.
    base = platform.settings.public_base_url
    for output in data["outputs"]:
        assert output["url"].startswith(f"{base}/v1/outputs/{output['id']}/content?")
        fetched = client.get(output["url"].removeprefix(base))
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == output["content_type"]


def test_failed_and_canceled_generations_tell_subscribed_endpoints(
    platform: Platform, client: TestClient, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com", plan="studio")
    _, secret = add_endpoint(
        platform, ana.id, receiver.url, ["generation.failed", "generation.canceled"]
    )
    failing = submit(client, ana, params={"sandbox": {"fail": True, "delay_s": 0}}).json()
    run_jobs(platform)
    queued = submit(client, ana).json()
    canceled = client.post(f"/v1/generations/{queued['id']}/cancel", headers=ana.auth)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    # A success nobody subscribed to writes no event.
    ok = submit(client, ana).json()
    run_jobs(platform)
    assert client.get(f"/v1/generations/{ok['id']}", headers=ana.auth).json()["status"] == (
        "succeeded"
    )
    assert webhook_delivery(platform).run(WORKER).succeeded == 2
    events = {r.event["type"]: r.event["data"] for r in receiver.received}
    assert set(events) == {"generation.failed", "generation.canceled"}
    assert events["generation.failed"]["id"] == failing["id"]
    assert events["generation.failed"]["error"]["code"]
    assert events["generation.failed"]["credits_charged"] == 0
    assert events["generation.canceled"]["id"] == queued["id"]
    assert events["generation.canceled"]["error"]["code"] == "canceled"
    assert all(verify(secret, r) == [True] for r in receiver.received)
    assert count(platform, webhook_events) == 2


def test_no_listener_no_event(platform: Platform, client: TestClient) -> None:
    ana = make_user(platform, "ana@example.com", plan="studio")
    # An endpoint of someone else, and a disabled one of hers.
    bob = make_user(platform, "bob@example.com")
    add_endpoint(platform, bob.id, "http://127.0.0.1:9/", ["generation.succeeded"])
    add_endpoint(platform, ana.id, "http://127.0.0.1:9/", ["generation.succeeded"], enabled=False)
    assert submit(client, ana).status_code == 201
    run_jobs(platform)
    assert count(platform, webhook_events) == 0


def test_a_webhook_url_is_checked_at_submission(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "var")  # the address rule on
    with running_platform(settings, clock) as strict, api_client(strict) as client:
        ana = make_user(strict, "ana@example.com", plan="studio")
        for url, words in (
            ("http://127.0.0.1:8080/hook", "private, loopback"),
            ("http://localhost/hook", "private, loopback"),
            ("ftp://example.com/hook", "https://"),
            ("not a url", "https://"),
        ):
            refused = submit(client, ana, webhook_url=url)
            assert refused.status_code == 422, refused.text
            problem = refused.json()
            assert problem["code"] == "invalid_input"
            assert problem["errors"][0]["field"] == "webhook_url"
            assert words in problem["errors"][0]["message"]
        with strict.db.read() as conn:
            assert conn.execute(select(func.count()).select_from(generations)).scalar_one() == 0
        balance = client.get("/v1/balance", headers=ana.auth).json()
        assert balance["held"] == 0


# -- payment events -------------------------------------------------------------------------------


def test_a_pack_purchase_tells_subscribed_endpoints(
    platform: Platform, client: TestClient, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com")
    _, secret = add_endpoint(platform, ana.id, receiver.url, ["payment.succeeded"])
    bought = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=ana.auth)
    assert bought.status_code == 201, bought.text
    payment_id = bought.json()["payment_id"]
    assert webhook_delivery(platform).run(WORKER).succeeded == 1
    [got] = receiver.received
    assert verify(secret, got) == [True]
    assert got.event["type"] == "payment.succeeded"
    data = got.event["data"]
    listed = client.get("/v1/payments", headers=ana.auth).json()["data"]
    shown = next(p for p in listed if p["id"] == payment_id)
    assert data["id"] == payment_id
    assert data["kind"] == "pack"
    assert data["pack"] == "pack-1000"
    for name in ("amount_cents", "currency", "credits", "receipt_number", "status"):
        assert data[name] == shown[name]
    assert data["receipt_number"].startswith("PA-")


def test_a_declined_renewal_is_a_payment_failed_event(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com", plan="starter")
    _, secret = add_endpoint(
        platform, ana.id, receiver.url, ["payment.succeeded", "payment.failed"]
    )
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, ana.id, declines=True)
    clock.advance(timedelta(days=31))
    assert run_billing_clock(platform.db, platform.billing)["payment_failed"] == 1
    assert webhook_delivery(platform).run(WORKER).succeeded == 1
    [got] = receiver.received
    assert verify(secret, got) == [True]
    assert got.event["type"] == "payment.failed"
    data = got.event["data"]
    assert (data["kind"], data["status"], data["credits"]) == ("renewal", "failed", 0)
    assert data["receipt_number"] is None
    assert data["failure_reason"]
    with platform.db.read() as conn:
        assert (
            conn.execute(select(payments.c.status).where(payments.c.id == data["id"])).scalar_one()
            == "failed"
        )


def test_payments_nobody_listens_to_write_no_event(platform: Platform, client: TestClient) -> None:
    ana = make_user(platform, "ana@example.com", plan="starter")
    # Subscribed to something else only.
    add_endpoint(platform, ana.id, "http://127.0.0.1:9/", ["generation.succeeded"])
    bought = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=ana.auth)
    assert bought.status_code == 201, bought.text
    assert count(platform, webhook_events) == 0
    with platform.db.write() as conn:
        conn.execute(update(webhook_endpoints).values(events=json.dumps(["payment.succeeded"])))
    again = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=ana.auth)
    assert again.status_code == 201
    assert count(platform, webhook_events) == 1


def test_a_lease_left_by_a_dead_worker_is_taken_again(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    _, secret = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    event_id = emit(platform, ana.id)
    dead = dispatcher(platform)
    dead.fan_out()
    [claimed] = dead.claim("dead-worker")
    # While the lease lasts nobody else takes it.
    assert dispatcher(platform).run("other").claimed == 0
    clock.advance(LEASE)
    assert dispatcher(platform).run("other").succeeded == 1
    # The dead worker's late attempt finds its lease gone: it changes nothing.
    assert dead.attempt(claimed, "dead-worker")[0] == "lost"
    [delivery] = deliveries(platform, event_id)
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert [r.headers["webhook-id"] for r in receiver.received] == [event_id, event_id]
    assert all(verify(secret, r) == [True] for r in receiver.received)


def test_a_retry_goes_to_the_endpoint_url_as_it_is_now(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, _ = add_endpoint(platform, ana.id, f"{receiver.url}/old", ["generation.succeeded"])
    receiver.answers = [500]
    emit(platform, ana.id)
    dispatcher(platform).run(WORKER)
    with platform.db.write() as conn:
        conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == hook)
            .values(url=f"{receiver.url}/new")
        )
    clock.advance(RETRY_SCHEDULE[0])
    assert dispatcher(platform).run(WORKER).succeeded == 1
    assert [r.path for r in receiver.received] == ["/old", "/new"]


def test_an_endpoint_deleted_during_an_attempt_is_left_alone(
    platform: Platform, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, _ = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    emit(platform, ana.id)
    run = dispatcher(platform)
    run.fan_out()
    [claimed] = run.claim(WORKER)
    # Deleted with its log, as the endpoints API deletes it.
    with platform.db.write() as conn:
        conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.endpoint_id == hook))
        conn.execute(webhook_endpoints.delete().where(webhook_endpoints.c.id == hook))
    assert run.attempt(claimed, WORKER)[0] == "lost"
    assert count(platform, webhook_attempts) == 0
    assert count(platform, webhook_deliveries) == 0


def test_an_endpoint_disabled_by_its_owner_gets_nothing_more(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    ana = make_user(platform, "ana@example.com")
    hook, _ = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.answers = [500]
    event_id = emit(platform, ana.id)
    dispatcher(platform).run(WORKER)
    with platform.db.write() as conn:
        conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == hook)
            .values(enabled=False, disabled_reason="disabled by you")
        )
    clock.advance(RETRY_SCHEDULE[0])
    assert dispatcher(platform).run(WORKER).failed == 1
    [delivery] = deliveries(platform, event_id)
    assert (delivery.status, delivery.last_error) == ("failed", "the endpoint is disabled")
    assert len(receiver.received) == 1
    assert len(attempts(platform, delivery.id)) == 1


def test_a_suspension_cancels_queued_jobs_with_their_events(
    platform: Platform, client: TestClient, receiver: Receiver
) -> None:
    ana = make_user(platform, "ana@example.com", plan="studio")
    add_endpoint(platform, ana.id, receiver.url, ["generation.canceled"])
    queued = submit(client, ana, webhook_url=f"{receiver.url}/job").json()
    with platform.db.write() as conn:
        platform.suspensions.suspend(conn, ana.id, actor="cli", reason="testing")
    assert webhook_delivery(platform).run(WORKER).succeeded == 2
    assert sorted(r.path for r in receiver.received) == ["/", "/job"]
    for got in receiver.received:
        assert got.event["type"] == "generation.canceled"
        assert got.event["data"]["id"] == queued["id"]
        assert got.event["data"]["error"]["code"] == "account_suspended"
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1


def test_a_hanging_endpoint_holds_up_no_other(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    """A pass claims at most PER_DESTINATION deliveries of one endpoint: a
    receiver that hangs holds two of the pass's threads, and the other
    endpoint's deliveries go on in the others."""
    ana = make_user(platform, "ana@example.com")
    add_endpoint(platform, ana.id, f"{receiver.url}/slow", ["generation.succeeded"])
    fast, _ = add_endpoint(platform, ana.id, f"{receiver.url}/fast", ["generation.succeeded"])
    for _ in range(6):
        emit(platform, ana.id)

    def respond(method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        with receiver.lock:
            receiver.received.append(Received(method, target, dict(headers), body))
        if target == "/slow":
            time.sleep(HANG_S)
        return 200, {}, {}

    receiver.respond = respond  # type: ignore[method-assign]
    result = dispatcher(platform).run(WORKER, limit=8)
    assert result.claimed == 4  # 2 of the slow endpoint's, 2 of the fast one's
    assert (result.succeeded, result.retrying) == (2, 2)
    fast_done = [
        d for d in deliveries(platform) if d.endpoint_id == fast and d.status == "succeeded"
    ]
    assert len(fast_done) == 2
    # The next passes deliver the rest of the fast endpoint's.
    for _ in range(3):
        dispatcher(platform).run(WORKER, limit=8)
    fast_done = [
        d for d in deliveries(platform) if d.endpoint_id == fast and d.status == "succeeded"
    ]
    assert len(fast_done) == 6


def self_signed(host: str, directory: Path) -> tuple[Path, Path]:
    """A certificate for ``host`` and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("certified", "succeeds"), [("hooks.example.test", True), ("other.example.test", False)]
)
def test_https_to_a_pinned_address_names_the_host(
    platform: Platform, tmp_path: Path, certified: str, succeeds: bool
) -> None:
    """Over https the connection goes to the checked address, while the TLS
    server name (SNI) and the certificate's check are the URL's host's: a
    certificate for another name is refused."""
    cert, key = self_signed(certified, tmp_path)
    names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def heard(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(name)

    server_context.sni_callback = heard  # type: ignore[assignment]
    client_context = ssl.create_default_context(cafile=str(cert))
    ana = make_user(platform, "ana@example.com")
    receiver = Receiver()
    receiver.wrap(server_context)
    with receiver:
        port = urlsplit(receiver.url).port
        url = f"https://hooks.example.test:{port}/tls"
        _, secret = add_endpoint(platform, ana.id, url, ["generation.succeeded"])
        emit(platform, ana.id)
        run = dispatcher(
            platform,
            resolve=lambda _url: [ipaddress.IPv4Address("127.0.0.1")],
            post=partial(transport.post, ssl_context=client_context),
        )
        result = run.run(WORKER)
    assert names == ["hooks.example.test"]
    if succeeds:
        assert result.succeeded == 1
        [got] = receiver.received
        assert got.headers["host"] == f"hooks.example.test:{port}"
        assert verify(secret, got) == [True]
    else:
        assert result.retrying == 1
        assert receiver.received == []
        [delivery] = deliveries(platform)
        assert "certificate" in delivery.last_error.lower()


def test_the_python_client_asks_for_a_webhook_and_the_worker_delivers_it(
    database_url: str, clock: ManualClock, tmp_path: Path, receiver: Receiver
) -> None:
    """Over real HTTP: the client submits with ``webhook_url``, the worker
    (its job slots and its webhook loop) runs the job and POSTs the event,
    and the receiver downloads an output from the link in it."""
    port = free_port()
    settings = settings_for(
        database_url,
        tmp_path / "var",
        webhooks_allow_private=True,
        public_url=f"http://127.0.0.1:{port}",
    )
    with running_platform(settings, clock) as live:
        ana = make_user(live, "ana@example.com", plan="studio")
        worker = Worker(live, concurrency=2)
        thread = worker.start_thread()
        try:
            with (
                live_server(live, port=port) as base_url,
                Client(base_url, ana.api_key, timeout=WAIT_S, backoff=0.05) as client,
            ):
                done = client.generate(
                    "flux-schnell",
                    "a red fox in snow",
                    params=AT_ONCE,
                    webhook_url=f"{receiver.url}/client",
                    timeout=30,
                )
                assert done.status == "succeeded"
                deadline = time.monotonic() + 15
                while not receiver.received and time.monotonic() < deadline:
                    time.sleep(0.05)
                [got] = receiver.received
                event = got.event
                assert event["type"] == "generation.succeeded"
                assert event["data"]["id"] == done.id
                with live.db.read() as conn:
                    secret = conn.execute(
                        select(webhook_secrets.c.secret).where(webhook_secrets.c.user_id == ana.id)
                    ).scalar_one()
                assert verify(secret, got) == [True]
                link = event["data"]["outputs"][0]["url"]
                assert link.startswith(f"http://127.0.0.1:{port}/v1/outputs/")
                fetched = httpx.get(link, timeout=WAIT_S)  # no credentials
                assert fetched.status_code == 200
                assert fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            worker.stop()
            thread.join(timeout=30)
        assert not thread.is_alive()


def test_the_end_of_a_job_gains_one_insert_only_when_someone_listens(
    platform: Platform, client: TestClient
) -> None:
    """The statement budget of a job (tests/integration/test_statement_budgets.py)
    holds without listeners; with a subscribed endpoint, or a webhook_url, the
    job's end sends exactly one statement more (the event's INSERT), in the
    same transactions."""
    ana = make_user(platform, "ana@example.com", plan="studio")
    worker = Worker(platform, concurrency=4)
    worker.runner.sleep = lambda _seconds: None

    def one_job(**body: Any) -> Counts:
        assert submit(client, ana, **body).status_code == 201
        claimed = worker.claim()
        assert claimed is not None
        with StatementCounter(platform.db.engine) as counts:
            worker.runner.run(claimed)
        return counts

    one_job()  # warm-up
    quiet = one_job()
    with_url = one_job(webhook_url="http://127.0.0.1:9/hook")
    add_endpoint(platform, ana.id, "http://127.0.0.1:9/", ["generation.succeeded"])
    with_endpoint = one_job()
    for heard in (with_url, with_endpoint):
        assert (heard.transactions, heard.writes) == (quiet.transactions, quiet.writes)
        assert heard.statements == quiet.statements + 1, heard.listing()
    assert count(platform, webhook_events) == 2


def test_the_sandbox_test_clock_moves_schedules_not_the_signed_timestamp(
    platform: Platform, receiver: Receiver, clock: ManualClock
) -> None:
    """Under sandbox billing the platform runs on the test clock (moved by
    /v1/admin/clock/advance): a retry falls due by it, as a replay or a
    rotation's overlap does, but webhook-timestamp stays real time, which
    receivers check against theirs."""
    ana = make_user(platform, "ana@example.com")
    _, secret = add_endpoint(platform, ana.id, receiver.url, ["generation.succeeded"])
    receiver.answers = [500]
    emit(platform, ana.id)
    run = webhook_delivery(platform)
    assert run.run(WORKER).retrying == 1
    test_clock = platform.billing.test_clock
    assert test_clock is not None
    with platform.db.write() as conn:
        test_clock.advance(conn, timedelta(days=1))
    assert run.run(WORKER).succeeded == 1
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps == [int(clock.now().timestamp())] * 2
    assert all(verify(secret, r) == [True] for r in receiver.received)


def test_an_endless_answer_is_not_read(platform: Platform) -> None:
    """Of an answer only its status counts: a 2xx whose body never ends
    succeeds, and the connection is dropped after the first 64 KiB (the
    server sees it closed long before it could write 256 MiB)."""
    ana = make_user(platform, "ana@example.com")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    written: list[int] = []
    chunk = b"x" * 65536

    def serve() -> None:
        connection, _ = listener.accept()
        sent = 0
        with connection:
            connection.settimeout(10)
            connection.recv(65536)  # the request (small)
            try:
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                while sent < 256 * 1024 * 1024:
                    connection.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
        written.append(sent)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    add_endpoint(platform, ana.id, f"http://127.0.0.1:{port}/", ["generation.succeeded"])
    emit(platform, ana.id)
    try:
        assert dispatcher(platform).run(WORKER).succeeded == 1
        thread.join(timeout=20)
    finally:
        listener.close()
    assert not thread.is_alive()
    assert written[0] < 256 * 1024 * 1024
    [delivery] = deliveries(platform)
    [attempt] = attempts(platform, delivery.id)
    assert (attempt.status_code, attempt.error) == (200, None)

"""``POST /v1/webhooks/fal`` on SQLite and PostgreSQL, against the local fake
of fal (which signs its deliveries as fal does and serves the JWKS): genuine
deliveries recorded once and waking the job's worker, everything else
refused with ``invalid_signature`` and nothing written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import fal_webhooks, generations
from plasmaart.generation.providers.fal.client import FalProvider
from plasmaart.generation.providers.fal.webhooks import FalWebhook, FalWebhooks
from plasmaart.generation.runner import JobRunner
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from plasmaart.web.problems import PROBLEM_JSON
from plasmaart.worker import Worker
from tests.support.accounts import make_user
from tests.support.fake_fal import Behaviour, Delivery, FakeFal
from tests.support.live_server import live_server
from tests.support.matrix import changes, snapshot
from tests.support.pgserver import free_port
from tests.support.platforms import api_client, running_platform, settings_for

T = TypeVar("T")
URL = "/v1/webhooks/fal"
# Far longer than any test may take: a job that finishes in time was woken.
LONG_POLL_S = 120.0
WAIT_S = 15.0
PARAMS = {"seed": 7, "aspect_ratio": "1:1"}


def fal_settings(database_url: str, tmp_path: Path, fake: FakeFal, **extra: Any) -> Settings:
    values = {**fake.platform_settings(), "fal_webhook_url": fake.webhook_sink_url, **extra}
    return settings_for(database_url, tmp_path / "var", **values)


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeFal]:
    with FakeFal(clock) as server:
        # Requests wait in fal's queue until a test completes them.
        server.default = Behaviour(stuck_in_queue=True)
        yield server


@pytest.fixture
def platform(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeFal
) -> Iterator[Platform]:
    """With the fal provider (conftest's ``client`` serves this platform)."""
    with running_platform(fal_settings(database_url, tmp_path, fake), clock) as built:
        yield built


def wait_for(value: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = value()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def generation_row(platform: Platform, generation_id: str) -> Any:
    with platform.db.read() as conn:
        return conn.execute(select(generations).where(generations.c.id == generation_id)).one()


def finished(platform: Platform, generation_id: str) -> Any:
    row = generation_row(platform, generation_id)
    return row if row.finished_at is not None else None


def recorded(platform: Platform) -> list[Any]:
    with platform.db.read() as conn:
        return list(conn.execute(select(fal_webhooks)).all())


def signed_body(fake: FakeFal, request_id: str, **fields: Any) -> tuple[dict[str, str], bytes]:
    """A webhook body as fal sends it, and fal's signed headers for it."""
    webhook = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK",
        "payload": {"images": [{"url": "https://fal.media/0.png"}], "seed": 1},
        **fields,
    }
    body = json.dumps(webhook).encode()
    return fake.signed_headers(request_id, body), body


def post(client: TestClient, delivery: Delivery) -> Any:
    return client.post(URL, content=delivery.body, headers=delivery.headers)


@contextmanager
def running_job(
    platform: Platform, fake: FakeFal, webhook_url: str | None = None
) -> Iterator[tuple[str, str]]:
    """A generation running in a worker thread, submitted to fal (asking for
    a call to ``webhook_url``, by default the fake's sink) and waiting out a
    long poll interval; yields its id and fal's request id."""
    email = "sam@example.com"
    make_user(platform, email, plan="starter")
    with platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        queued = platform.generations.submit(
            conn,
            user,
            GenerationRequest("flux-schnell", "a red fox", params=PARAMS),
        )
    worker = Worker(platform, 1)
    assert worker.runner.wakeups is platform.wakeups
    worker.runner.poll_interval_s = LONG_POLL_S
    if webhook_url is not None:
        worker.runner.webhook_url = webhook_url
    # Listening before the job starts: a wake-up is best effort, and this
    # test is about it arriving.
    platform.wakeups.start()
    assert platform.wakeups.listening
    claim = worker.claim()
    assert claim is not None
    assert claim.id == queued.id
    thread = threading.Thread(target=worker.runner.run, args=(claim,), daemon=True)
    thread.start()
    try:
        request_id = wait_for(
            lambda: generation_row(platform, queued.id).provider_request_id, "the fal submission"
        )
        fal_request = fake.requests[request_id]
        wait_for(lambda: fal_request.polls or None, "the first poll")
        time.sleep(0.2)
        assert fal_request.polls == 1, "the job polls without waiting out its interval"
        yield queued.id, request_id
    finally:
        worker.stop()
        platform.wakeups.wake(queued.id)
        thread.join(timeout=WAIT_S)
        assert not thread.is_alive(), "the job did not stop"


# ---------------------------------------------------------------- accepted


def test_a_genuine_delivery_wakes_the_job_and_a_replay_changes_nothing(
    platform: Platform, client: TestClient, fake: FakeFal
) -> None:
    with running_job(platform, fake) as (generation_id, request_id):
        submitted = fake.requests[request_id]
        # The worker asked fal to call the configured URL back.
        assert submitted.webhook_url == fake.webhook_sink_url
        polls_before = submitted.polls
        started = time.monotonic()
        fake.complete(request_id)
        (delivery,) = fake.deliveries

        first = post(client, delivery)
        assert first.status_code == 200, first.text
        assert first.json() == {"request_id": request_id, "outcome": "woken"}

        done = wait_for(
            lambda: row if (row := generation_row(platform, generation_id)).finished_at else None,
            "the woken job to finish",
        )
        assert time.monotonic() - started < LONG_POLL_S / 4
        assert done.status == "succeeded"
        assert done.credits_charged == 1
        # One poll after the webhook read the result from fal's API.
        assert submitted.polls == polls_before + 1

        again = post(client, delivery)
        assert again.status_code == 200
        assert again.json() == {"request_id": request_id, "outcome": "duplicate"}

    (row,) = recorded(platform)
    assert (row.request_id, row.generation_id, row.result, row.outcome) == (
        request_id,
        generation_id,
        "succeeded",
        "woken",
    )


def test_a_delivery_for_a_finished_generation_is_recorded_and_changes_nothing(
    platform: Platform, client: TestClient, fake: FakeFal
) -> None:
    with running_job(platform, fake) as (generation_id, request_id):
        fake.complete(request_id)
        platform.wakeups.wake(generation_id)  # as a poll at its interval would
        wait_for(lambda: generation_row(platform, generation_id).finished_at, "the job to finish")
    before = generation_row(platform, generation_id)
    answer = post(client, fake.deliveries[0])
    assert answer.json() == {"request_id": request_id, "outcome": "finished"}
    assert generation_row(platform, generation_id) == before
    assert [row.outcome for row in recorded(platform)] == ["finished"]


def test_an_unknown_request_id_is_recorded_and_acknowledged(
    platform: Platform, client: TestClient, fake: FakeFal
) -> None:
    headers, body = signed_body(fake, "req-nobody-knows")
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"request_id": "req-nobody-knows", "outcome": "unknown_request"}
    again = client.post(URL, content=body, headers=headers)
    assert again.json() == {"request_id": "req-nobody-knows", "outcome": "duplicate"}
    (row,) = recorded(platform)
    assert (row.generation_id, row.result, row.outcome) == (None, "succeeded", "unknown_request")


def test_a_test_clock_jump_does_not_make_fals_signatures_stale(
    platform: Platform, client: TestClient, fake: FakeFal, clock: ManualClock
) -> None:
    """fal stamps its webhooks with real time; the sandbox test clock moves
    billing time only, so a delivery signed now is fresh after a jump."""
    test_clock = platform.billing.test_clock
    assert test_clock is not None
    with platform.db.write() as conn:
        test_clock.advance(conn, timedelta(days=2))
    assert platform.clock.now() - clock.now() >= timedelta(days=2)
    headers, body = signed_body(fake, "req-after-the-jump")
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "unknown_request"


def test_an_error_or_payload_error_delivery_is_recorded_with_its_result(
    platform: Platform, client: TestClient, fake: FakeFal
) -> None:
    headers, body = signed_body(
        fake, "req-error", status="ERROR", payload={"detail": [{"msg": "refused"}]}
    )
    assert client.post(URL, content=body, headers=headers).status_code == 200
    headers, body = signed_body(fake, "req-too-big", payload=None, payload_error="too large")
    assert client.post(URL, content=body, headers=headers).status_code == 200
    results = {row.request_id: row.result for row in recorded(platform)}
    assert results == {"req-error": "failed", "req-too-big": "payload_error"}


def test_racing_deliveries_of_one_webhook_record_it_once(platform: Platform) -> None:
    """Deliveries of the same webhook recorded at the same moment: the
    database's key makes all but one a ``duplicate``, none an error."""
    provider = platform.provider
    assert isinstance(provider, FalProvider)
    webhooks = FalWebhooks(platform.job_clock, provider, platform.wakeups)
    webhook = FalWebhook("req-raced", "succeeded")
    racers = 4
    start = threading.Barrier(racers)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            start.wait(timeout=WAIT_S)
            with platform.db.write() as conn:
                outcomes.append(webhooks.record(conn, webhook).outcome)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(outcomes) == ["duplicate"] * (racers - 1) + ["unknown_request"]
    assert [row.request_id for row in recorded(platform)] == ["req-raced"]


# ----------------------------------------------------------------- refused


def _forged(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    _headers, body = signed_body(fake, "req-1")
    return fake.signed_headers("req-1", body, key=Ed25519PrivateKey.generate()), body


def _stale(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    _headers, body = signed_body(fake, "req-1")
    old = int((fake.clock.now() - timedelta(minutes=6)).timestamp())
    return fake.signed_headers("req-1", body, timestamp=old), body


def _from_the_future(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    _headers, body = signed_body(fake, "req-1")
    ahead = int((fake.clock.now() + timedelta(minutes=6)).timestamp())
    return fake.signed_headers("req-1", body, timestamp=ahead), body


def _tampered_body(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    headers, body = signed_body(fake, "req-1")
    return headers, body.replace(b'"seed": 1', b'"seed": 2')


def _other_request_id(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    headers, body = signed_body(fake, "req-1")
    return {**headers, "X-Fal-Webhook-Request-Id": "req-2"}, body


def _missing_signature(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    headers, body = signed_body(fake, "req-1")
    del headers["X-Fal-Webhook-Signature"]
    return headers, body


def _no_headers(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    _headers, body = signed_body(fake, "req-1")
    return {}, body


def _not_hex(fake: FakeFal) -> tuple[dict[str, str], bytes]:
    headers, body = signed_body(fake, "req-1")
    return {**headers, "X-Fal-Webhook-Signature": "zz" * 64}, body


REFUSED = {
    "forged": _forged,
    "stale": _stale,
    "from_the_future": _from_the_future,
    "tampered_body": _tampered_body,
    "other_request_id": _other_request_id,
    "missing_signature": _missing_signature,
    "no_headers": _no_headers,
    "not_hex": _not_hex,
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_delivery_that_is_not_fals_is_refused_and_writes_nothing(
    platform: Platform, client: TestClient, fake: FakeFal, case: str
) -> None:
    headers, body = REFUSED[case](fake)
    before = snapshot(platform)
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    assert answer.json()["code"] == "invalid_signature"
    assert changes(before, snapshot(platform)) == []


def test_a_key_fal_rotated_in_is_fetched_again_and_accepted(
    platform: Platform, client: TestClient, fake: FakeFal, clock: ManualClock
) -> None:
    headers, body = signed_body(fake, "req-before")
    assert client.post(URL, content=body, headers=headers).status_code == 200
    fetches = fake.jwks_fetches
    fake.rotate_key()
    clock.advance(timedelta(minutes=6))  # past the minimum time between fetches
    headers, body = signed_body(fake, "req-after")
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert fake.jwks_fetches == fetches + 1


@pytest.mark.parametrize(
    "body",
    [b'{"hello": "world"}', b'{"request_id": "req-1", "status": "OK", "payl', b"[]"],
    ids=["not-a-webhook", "not-json", "not-an-object"],
)
def test_a_signed_body_that_is_not_a_fal_webhook_is_acknowledged_as_a_payload_error(
    platform: Platform, client: TestClient, fake: FakeFal, body: bytes
) -> None:
    # fal signed it, so it is fal's: any answer but a 2xx would only make fal
    # send the same bytes again. Recorded once, it wakes nobody's job wrongly
    # (the worker reads the result from fal's API).
    answer = client.post(URL, content=body, headers=fake.signed_headers("req-1", body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"request_id": "req-1", "outcome": "unknown_request"}
    assert [(row.request_id, row.result, row.outcome) for row in recorded(platform)] == [
        ("req-1", "payload_error", "unknown_request")
    ]
    again = client.post(URL, content=body, headers=fake.signed_headers("req-1", body))
    assert again.json()["outcome"] == "duplicate"


def test_without_fals_keys_nothing_is_checked_or_written(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeFal
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    settings = fal_settings(database_url, tmp_path, fake, fal_jwks_url=nowhere)
    with running_platform(settings, clock) as built:
        with api_client(built) as client:
            headers, body = signed_body(fake, "req-1")
            answer = client.post(URL, content=body, headers=headers)
        assert answer.status_code == 503
        assert answer.json()["code"] == "provider_unavailable"
        assert recorded(built) == []


# ------------------------------------------------------------- end to end


def test_fals_own_delivery_wakes_a_worker_in_another_process(
    backend: str,
    database_url: str,
    clock: ManualClock,
    tmp_path: Path,
    fake: FakeFal,
    platform: Platform,
) -> None:
    """fal posts to a real server; the worker polls at once, not after its
    interval. On PostgreSQL the worker has a platform of its own (as another
    process does), so the wake-up crosses by LISTEN/NOTIFY."""
    with ExitStack() as stack:
        worker_side = (
            platform
            if backend == "sqlite"
            else stack.enter_context(
                running_platform(fal_settings(database_url, tmp_path / "worker", fake), clock)
            )
        )
        with (
            live_server(platform) as base_url,
            running_job(worker_side, fake, f"{base_url}{URL}") as (generation_id, request_id),
        ):
            assert fake.requests[request_id].webhook_url == f"{base_url}{URL}"
            started = time.monotonic()
            fake.complete(request_id)  # fal POSTs its signed webhook to the server
            done = wait_for(
                lambda: finished(platform, generation_id),
                "the woken job to finish",
            )
            assert done.status == "succeeded"
            assert time.monotonic() - started < LONG_POLL_S / 4
    (row,) = recorded(platform)
    assert (row.request_id, row.outcome) == (request_id, "woken")


def test_without_a_webhook_url_the_worker_polls_as_before(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeFal
) -> None:
    settings = fal_settings(database_url, tmp_path, fake, fal_webhook_url=None)
    with running_platform(settings, clock) as built:
        runner = Worker(built).runner
        assert runner.webhook_url is None
        assert runner.wakeups is None
        assert runner.poll_interval_s == JobRunner.poll_interval_s

"""Generations end to end through the worker and the sandbox provider, on
SQLite and PostgreSQL: paid exactly what the policy says, refunded when they
fail or are canceled, never charged twice when a worker dies."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import generations
from plasmaart.generation.runner import LEASE
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.media.metadata import probe_mp4, read_png_metadata
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import make_user
from tests.support.fake_fal import Behaviour, FakeFal, FalError
from tests.support.platforms import running_platform, settings_for

FAST = {"sandbox": {"delay_s": 0}}


def submit(platform: Platform, email: str, request: GenerationRequest) -> Generation:
    with platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        return platform.generations.submit(conn, user, request)


def fetch(platform: Platform, email: str, generation_id: str) -> Generation:
    with platform.db.read() as conn:
        user = platform.accounts.get_by_email(conn, email)
        return platform.generations.get(conn, user, generation_id)


def worker(platform: Platform, concurrency: int = 4) -> Worker:
    made = Worker(platform, concurrency)
    made.runner.sleep = lambda _seconds: None
    return made


def test_four_images_charged_four_credits(platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = submit(
        platform,
        "sam@example.com",
        GenerationRequest(
            "flux-schnell",
            "a red fox in snow",
            num_outputs=4,
            params={"seed": 7, "aspect_ratio": "1:1", **FAST},
        ),
    )
    assert worker(platform).drain() == 1
    done = fetch(platform, "sam@example.com", queued.id)
    assert (done.status, done.credits_charged, done.balance_after) == ("succeeded", 4, 1996)
    assert len(done.outputs) == 4
    with platform.db.read() as conn:
        keys = list(conn.execute(select(generations.c.id)).scalars())
        assert keys == [queued.id]
        assert platform.ledger.balance(conn, sam.wallet_id).available == 1996
        assert check_ledger(conn) == []
        from plasmaart.db.tables import generation_outputs

        stored = conn.execute(select(generation_outputs.c.storage_key)).scalars().all()
    picture = platform.storage.get(stored[0])
    with Image.open(io.BytesIO(picture)) as image:
        assert (image.format, image.size) == ("PNG", (1024, 1024))
    assert read_png_metadata(picture)["license"] == "personal"
    assert all(output.watermarked for output in done.outputs)


def test_a_video_is_an_mp4_charged_eighty(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    queued = submit(
        platform,
        "sam@example.com",
        GenerationRequest("pixverse-v4.5", "waves at dusk", params={"duration_s": 5, **FAST}),
    )
    worker(platform).drain()
    done = fetch(platform, "sam@example.com", queued.id)
    assert (done.status, done.credits_charged, done.balance_after) == ("succeeded", 80, 1920)
    with platform.db.read() as conn:
        from plasmaart.db.tables import generation_outputs

        key = conn.execute(select(generation_outputs.c.storage_key)).scalar_one()
    video = probe_mp4(platform.storage.get(key))
    assert (video.codec, video.width, video.height) == ("h264", 1280, 720)


def test_a_failed_generation_costs_nothing(platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-dev", "x", params={"sandbox": {"fail": True, "delay_s": 0}}),
    )
    worker(platform).drain()
    done = fetch(platform, "sam@example.com", queued.id)
    assert (done.status, done.credits_charged, done.error_code) == (
        "failed",
        0,
        "generation_failed",
    )
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 2000
        assert check_ledger(conn) == []


def test_cancel_while_running(platform: Platform, clock: ManualClock) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    slow = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-dev", "x", params={"sandbox": {"delay_s": 30}}),
    )
    runner = worker(platform)
    claimed = runner.claim()
    assert claimed is not None
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, sam.id)
        assert platform.generations.cancel(conn, user, slow.id).status == "running"
    runner.runner.run(claimed)
    done = fetch(platform, "sam@example.com", slow.id)
    assert (done.status, done.credits_charged, done.balance_after) == ("canceled", 0, 2000)


def test_cancel_after_delivery_is_charged(platform: Platform, clock: ManualClock) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-dev", "x", params={"sandbox": {"delay_s": 5}}),
    )
    runner = worker(platform)
    claimed = runner.claim()
    assert claimed is not None
    # The provider gets the job, then finishes before the cancel reaches it.
    ticks = iter([False, True])
    runner.runner.stopping = lambda: next(ticks, True)
    runner.runner.run(claimed)
    clock.advance(timedelta(seconds=6))
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, sam.id)
        platform.generations.cancel(conn, user, job.id)
    runner.runner.stopping = lambda: False
    runner.runner.run(claimed)
    done = fetch(platform, "sam@example.com", job.id)
    assert (done.status, done.credits_charged) == ("succeeded", 5)


def test_a_dead_workers_job_is_resumed_and_charged_once(
    platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-schnell", "x", num_outputs=2, params={"sandbox": {"delay_s": 10}}),
    )
    first = worker(platform)
    claimed = first.claim()
    assert claimed is not None
    # The first worker submits to the provider, then dies before the result.
    first.runner.stopping = lambda: True
    first.runner.run(claimed)
    with platform.db.read() as conn:
        request_id = conn.execute(select(generations.c.provider_request_id)).scalar_one()
    assert request_id is not None
    # Its lease has not expired: nobody else may take the job yet.
    second = worker(platform)
    assert second.claim() is None
    clock.advance(LEASE + timedelta(seconds=11))
    resumed = second.claim()
    assert resumed is not None
    assert (resumed.id, resumed.resumed) == (job.id, True)
    assert resumed.token > claimed.token
    second.runner.run(resumed)
    with platform.db.read() as conn:
        assert conn.execute(select(generations.c.provider_request_id)).scalar_one() == request_id
    # The first worker wakes up and tries to finish: its token is stale.
    first.runner.stopping = lambda: False
    first.runner.run(claimed)
    done = fetch(platform, "sam@example.com", job.id)
    assert (done.status, done.credits_charged, done.balance_after) == ("succeeded", 2, 1998)
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 1998
        assert check_ledger(conn) == []


def test_concurrency_caps_per_plan(platform: Platform) -> None:
    make_user(platform, "fay@example.com", credits=100)  # Free: 1 job at a time
    for n in range(3):
        submit(
            platform,
            "fay@example.com",
            GenerationRequest("flux-schnell", f"x{n}", params={"sandbox": {"delay_s": 60}}),
        )
    runner = worker(platform)
    assert runner.claim() is not None
    assert runner.claim() is None  # the wallet is at its cap


def test_provider_timeout_fails_and_releases(platform: Platform, clock: ManualClock) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-dev", "x", params={"sandbox": {"delay_s": 600}}),
    )
    runner = worker(platform)
    runner.runner.sleep = lambda _s: clock.advance(timedelta(minutes=1)) and None
    claimed = runner.claim()
    assert claimed is not None
    runner.runner.run(claimed)
    done = fetch(platform, "sam@example.com", job.id)
    assert (done.status, done.error_code, done.credits_charged) == ("failed", "timeout", 0)
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 2000
        assert check_ledger(conn) == []


def test_suspension_cancels_and_refunds_queued_jobs(platform: Platform) -> None:
    spammer = make_user(platform, "spam@example.com", plan="starter")
    jobs = [
        submit(platform, "spam@example.com", GenerationRequest("flux-dev", f"spam {n}"))
        for n in range(3)
    ]
    running = worker(platform).claim()
    assert running is not None
    with platform.db.write() as conn:
        canceled = platform.generations.cancel_queued_of(conn, spammer.id, "prompt flood")
    assert canceled == 2
    states = {job.id: fetch(platform, "spam@example.com", job.id) for job in jobs}
    assert sorted(g.status for g in states.values()) == ["canceled", "canceled", "running"]
    assert all(
        g.error_code == "account_suspended" for g in states.values() if g.status == "canceled"
    )
    with platform.db.read() as conn:
        # Only the running job's 5 credits are still held.
        balance = platform.ledger.balance(conn, spammer.wallet_id)
        assert (balance.available, balance.held) == (1995, 5)
        assert check_ledger(conn) == []


# -- fal: a result whose files cannot be fetched ---------------------------------


@pytest.fixture
def fake_fal(clock: ManualClock) -> Iterator[FakeFal]:
    with FakeFal(clock) as server:
        yield server


@pytest.fixture
def fal_platform(
    database_url: str, clock: ManualClock, tmp_path: Path, fake_fal: FakeFal
) -> Iterator[Platform]:
    settings = settings_for(database_url, tmp_path / "fal-var", **fake_fal.platform_settings())
    with running_platform(settings, clock) as built:
        yield built


def test_fal_files_answering_404_are_left_out_and_not_charged(
    fal_platform: Platform, fake_fal: FakeFal
) -> None:
    sam = make_user(fal_platform, "sam@example.com", plan="starter")
    # The second and third files expired before the worker fetched them.
    fake_fal.script(
        Behaviour(
            download_error=FalError(404, {"detail": "File not found"}), download_error_for=(1, 2)
        )
    )
    job = submit(
        fal_platform,
        "sam@example.com",
        GenerationRequest("flux-schnell", "a heron", num_outputs=3, params={"seed": 3}),
    )
    assert worker(fal_platform).drain() == 1
    done = fetch(fal_platform, "sam@example.com", job.id)
    assert (done.status, done.credits_charged, len(done.outputs)) == ("succeeded", 1, 1)
    assert done.error_code == "output_unavailable"
    assert done.error_message is not None
    assert "2 of 3 outputs" in done.error_message
    assert "HTTP 404" in done.error_message
    with fal_platform.db.read() as conn:
        balance = fal_platform.ledger.balance(conn, sam.wallet_id)
        assert (balance.available, balance.held) == (1999, 0)
        assert check_ledger(conn) == []
    # A 404 is not retried: one request per file.
    assert len(fake_fal.media_headers) == 3


def test_fal_files_failing_with_5xx_are_retried_then_the_job_fails_free(
    fal_platform: Platform, fake_fal: FakeFal
) -> None:
    sam = make_user(fal_platform, "sam@example.com", plan="starter")
    fake_fal.script(Behaviour(download_error=FalError.server(502)))
    job = submit(
        fal_platform,
        "sam@example.com",
        GenerationRequest("flux-schnell", "a heron", num_outputs=2, params={"seed": 3}),
    )
    runner = worker(fal_platform)
    assert runner.drain() == 1
    done = fetch(fal_platform, "sam@example.com", job.id)
    assert (done.status, done.credits_charged, done.outputs) == ("failed", 0, ())
    assert done.error_code == "output_unavailable"
    with fal_platform.db.read() as conn:
        balance = fal_platform.ledger.balance(conn, sam.wallet_id)
        assert (balance.available, balance.held) == (2000, 0)
        assert check_ledger(conn) == []
    # Each file: the first try and one retry per backoff step, then given up.
    tries = 1 + len(runner.runner.retry_delays_s)
    assert len(fake_fal.media_headers) == 2 * tries


# -- bounds that hold however the worker fails --------------------------------------


class Wrapped:
    """The platform's provider, with one method replaced by a test."""

    def __init__(self, provider: Any, **replaced: Any) -> None:
        self.provider = provider
        self.name = provider.name
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)


def test_the_deadline_ends_a_job_whose_worker_keeps_crashing(
    platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-dev", "x", params={"sandbox": {"delay_s": 0}}),
    )

    def crash(*_args: object) -> None:
        raise RuntimeError("the worker dies polling this job")

    runner = worker(platform)
    runner.runner.max_attempts = 1000  # only the deadline can end it
    runner.runner.provider = Wrapped(platform.provider, status=crash)
    claimed = runner.claim()
    assert claimed is not None
    with pytest.raises(RuntimeError):
        runner.runner.run(claimed)
    # Claimed again and again, minutes apart, until past the deadline.
    for _ in range(8):
        clock.advance(timedelta(minutes=1, seconds=1))
        again = runner.claim()
        assert again is not None
        try:
            runner.runner.run(again)
        except RuntimeError:
            continue
        break
    done = fetch(platform, "sam@example.com", job.id)
    assert (done.status, done.error_code, done.credits_charged) == ("failed", "timeout", 0)
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 2000
        assert check_ledger(conn) == []


def test_a_worker_stuck_past_the_deadline_loses_the_job_to_one_that_ends_it(
    platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-dev", "x", params={"sandbox": {"delay_s": 0}}),
    )
    entered, release = threading.Event(), threading.Event()

    def hang(output: Any) -> bytes:
        entered.set()
        release.wait(30)
        data: bytes = platform.provider.download(output)
        return data

    stuck = worker(platform)
    stuck.runner.lease = timedelta(seconds=0.3)  # renewed every 0.1 s
    stuck.runner.provider = Wrapped(platform.provider, download=hang)
    claimed = stuck.claim()
    assert claimed is not None
    thread = threading.Thread(target=stuck.runner.run, args=(claimed,), daemon=True)
    thread.start()
    try:
        assert entered.wait(10), "the job never reached its download"
        clock.advance(timedelta(minutes=8))  # past the 7 min of an image job
        time.sleep(0.6)  # several renewal periods: none may move the lease past the deadline
        other = worker(platform)
        taken = other.claim()
        assert taken is not None
        assert (taken.id, taken.resumed) == (job.id, True)
        other.runner.run(taken)
    finally:
        release.set()
        thread.join(10)
    assert not thread.is_alive()
    # The stuck worker woke up and stored its output: its token is stale, so
    # the job stays as the other ended it.
    done = fetch(platform, "sam@example.com", job.id)
    assert (done.status, done.error_code, done.credits_charged, done.outputs) == (
        "failed",
        "timeout",
        0,
        (),
    )
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 2000
        assert check_ledger(conn) == []


def test_a_file_that_is_not_the_image_it_claims_is_left_out(platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-schnell", "x", num_outputs=2, params=FAST),
    )

    def garbled(output: Any) -> bytes:
        if str(output.url).endswith("/1"):
            return b"<html>an error page served with status 200</html>"
        data: bytes = platform.provider.download(output)
        return data

    runner = worker(platform)
    runner.runner.provider = Wrapped(platform.provider, download=garbled)
    assert runner.drain() == 1
    done = fetch(platform, "sam@example.com", job.id)
    assert (done.status, done.credits_charged, len(done.outputs)) == ("succeeded", 1, 1)
    assert done.error_code == "output_unavailable"
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 1999
        assert check_ledger(conn) == []

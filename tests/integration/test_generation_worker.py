"""Generations end to end through the worker and the sandbox provider, on
SQLite and PostgreSQL: paid exactly what the policy says, refunded when they
fail or are canceled, never charged twice when a worker dies."""

from __future__ import annotations

import io
from datetime import timedelta

from PIL import Image
from sqlalchemy import select

from plasmaart.bootstrap import Platform
from plasmaart.clock import ManualClock
from plasmaart.db.tables import generations
from plasmaart.generation.runner import LEASE
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.media.metadata import probe_mp4, read_png_metadata
from plasmaart.worker import Worker
from tests.support.accounts import make_user

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

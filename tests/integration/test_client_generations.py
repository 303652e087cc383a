"""The Python client's generations, and ``plasmaart generate``, against the
real app served by uvicorn with a worker running (on SQLite and on
PostgreSQL): submit and wait (by events, or by polling when the stream
fails), charges, downloads, uploads, refusals, cancel and timeouts.

The platform's clock is a ManualClock, which the sandbox provider also reads:
``delay_s`` 0 finishes at the worker's first look, a long delay never does
unless the test moves the clock."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from plasmaart.cli import app
from plasmaart.client import (
    AsyncClient,
    Client,
    Generation,
    GenerationTimeout,
    InvalidInputError,
    ModelNotInPlanError,
    NotFoundError,
    Output,
    PermissionDenied,
)
from plasmaart.client.console import TextProgress, parse_params
from plasmaart.clock import ManualClock
from plasmaart.db.tables import generations
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.live_server import WAIT_S, live_server

FAST = {"sandbox": {"delay_s": 0}}
SLOW = {"sandbox": {"delay_s": 600}}  # never ready: the test clock does not move by itself
# Long enough for any one generation here (a short video renders in ~4 s).
GENERATE_TIMEOUT_S = 30.0


@pytest.fixture
def server(platform: Platform) -> Iterator[str]:
    worker = Worker(platform, concurrency=4)
    thread = worker.start_thread()
    try:
        with live_server(platform) as base_url:
            yield base_url
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop within 30 s"


def client_as(server: str, user: TestUser | None = None, **options: Any) -> Client:
    return Client(server, user.api_key if user else None, timeout=WAIT_S, backoff=0.05, **options)


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(out, "PNG")
    return out.getvalue()


def wait_for_status(client: Client, generation_id: str, status: str) -> Generation:
    deadline = time.monotonic() + WAIT_S
    while (found := client.generation(generation_id)).status != status:
        assert time.monotonic() < deadline, f"{generation_id} is {found.status}, not {status}"
        time.sleep(0.05)
    return found


class Wiretap(httpx.BaseTransport):
    """The real transport, recording requests; optionally it answers the event
    stream with ``resync`` alone, and loses the answer of the first submission
    (after the server handled it)."""

    def __init__(self, *, resync_events: bool = False, lose_first_submission: bool = False) -> None:
        self.inner = httpx.HTTPTransport()
        self.resync_events = resync_events
        self.lose_first_submission = lose_first_submission
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.resync_events and request.url.path == "/v1/events":
            frames = b'retry: 3000\n\nid: 1\nevent: resync\ndata: {"reason": "test"}\n\n'
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=frames
            )
        response = self.inner.handle_request(request)
        if (
            self.lose_first_submission
            and request.method == "POST"
            and request.url.path == "/v1/generations"
        ):
            self.lose_first_submission = False
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()

    def paths(self, method: str = "GET") -> list[str]:
        return [r.url.path for r in self.requests if r.method == method]


# -- generate, wait, download -------------------------------------------------------


def test_generate_waits_for_the_images_charges_them_and_downloads_them(
    platform: Platform, server: str, tmp_path: Path
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    bob = make_user(platform, "bob@example.com", credits=50)
    seen: list[Generation] = []
    with client_as(server, alice) as client:
        done = client.generate(
            "flux-schnell",
            "a red fox in snow",
            num_outputs=2,
            params={"seed": 7, "aspect_ratio": "16:9", **FAST},
            timeout=GENERATE_TIMEOUT_S,
            on_update=seen.append,
        )
        assert (done.status, done.model, done.kind) == (
            "succeeded",
            "flux-schnell",
            "text-to-image",
        )
        assert (done.credits_per_output, done.credits_held, done.credits_charged) == (1, 2, 2)
        assert done.balance_after == 48
        assert done.error is None
        assert done.finished
        assert done.params == {"seed": 7, "aspect_ratio": "16:9"}
        assert len(done.outputs) == 2
        assert all(o.content_type == "image/png" and o.watermarked for o in done.outputs)
        assert seen[0].status == "queued"
        assert seen[-1] == done
        statuses = [g.status for g in seen]
        assert statuses == sorted(statuses, key=["queued", "running", "succeeded"].index)
        assert client.balance().available == 48
        entries = [e for e in client.ledger() if e.generation_id == done.id]
        assert [(e.kind, e.amount, e.credits) for e in entries] == [
            ("capture", 0, 2),
            ("hold", -2, 2),
        ]

        assert client.generation(done.id).status == "succeeded"
        assert [g.id for g in client.generations(status="succeeded", model="flux-schnell")] == [
            done.id
        ]
        assert list(client.generations(status="failed")) == []

        files = client.download_outputs(done, tmp_path / "out")
        assert [f.name for f in files] == [f"{done.id}-1.png", f"{done.id}-2.png"]
        for path, output in zip(files, done.outputs, strict=True):
            with Image.open(path) as image:
                assert (image.format, image.size) == ("PNG", (output.width, output.height))
        assert files[0].read_bytes() != files[1].read_bytes()
        into = io.BytesIO()
        written = client.download_output(done.outputs[0].id, into)  # by id, with the key
        assert into.getvalue() == files[0].read_bytes()
        assert written == len(into.getvalue())
        assert not list((tmp_path / "out").glob("*.part"))

    with client_as(server, bob) as bob_client, client_as(server) as anonymous:
        with pytest.raises(NotFoundError):
            bob_client.generation(done.id)
        with pytest.raises(NotFoundError):
            bob_client.download_output(done.outputs[0].id, io.BytesIO())
        assert list(bob_client.generations()) == []
        # The signed link alone is enough.
        signed = io.BytesIO()
        anonymous.download_output(done.outputs[1], signed)
        assert signed.getvalue() == files[1].read_bytes()


def test_refused_failed_and_quoted_generations_cost_nothing(
    platform: Platform, server: str
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    with client_as(server, alice) as client:
        with pytest.raises(ModelNotInPlanError) as refused:
            client.generate("pixverse-v4.5", "waves", params=FAST, timeout=GENERATE_TIMEOUT_S)
        error = refused.value
        assert isinstance(error, PermissionDenied)
        assert (error.status, error.code) == (403, "model_not_in_plan")
        assert error.required_plan == "starter"
        assert error.extra["required_plan"] == "starter"
        with pytest.raises(InvalidInputError) as invalid:
            client.generate("flux-schnell", "a fox", num_outputs=5, params={"style": "noir"})
        assert {e.field for e in invalid.value.errors} == {"num_outputs", "params.style"}
        assert list(client.generations()) == []

        quote = client.quote("flux-dev", "a fox", num_outputs=3, params=FAST)
        assert (quote.credits, quote.available, quote.available_after) == (15, 50, 35)
        assert (quote.allowed, quote.reason) == (True, None)
        video = client.quote("pixverse-v4.5", "waves")
        assert (video.credits, video.allowed) == (80, False)
        assert video.reason is not None
        assert "Starter includes it" in video.reason
        dear = client.quote("flux-pro-v1.1", "a fox", num_outputs=4)
        assert (dear.credits, dear.available_after, dear.allowed) == (32, 18, True)
        assert list(client.generations()) == []
        assert (client.balance().available, client.balance().held) == (50, 0)

        # A failure is an answer, not an exception.
        failed = client.generate(
            "flux-schnell",
            "a fox",
            params={"sandbox": {"fail": True, "delay_s": 0}},
            timeout=GENERATE_TIMEOUT_S,
        )
        assert (failed.status, failed.credits_charged, failed.outputs) == ("failed", 0, ())
        assert failed.error is not None
        assert failed.error.code == "generation_failed"
        assert failed.balance_after == 50
        assert (client.balance().available, client.balance().held) == (50, 0)


# -- how the wait follows the generation ------------------------------------------------


def finish_once_running(platform: Platform, clock: ManualClock) -> Callable[[Generation], None]:
    """An on_update that makes a slow sandbox job ready once it runs: it moves
    the clock past the job's delay, after the worker has handed the job to
    the provider (which reads the clock to set when the job is ready)."""
    moved: list[bool] = []

    def submitted(generation_id: str) -> bool:
        with platform.db.read() as conn:
            found = conn.execute(
                select(generations.c.provider_request_id).where(generations.c.id == generation_id)
            ).scalar_one()
        return found is not None

    def on_update(generation: Generation) -> None:
        if generation.status == "running" and not moved:
            moved.append(True)
            deadline = time.monotonic() + WAIT_S
            while not submitted(generation.id):
                assert time.monotonic() < deadline, "the provider never got the job"
                time.sleep(0.02)
            clock.advance(timedelta(seconds=10))

    return on_update


def test_the_wait_follows_the_event_stream(
    platform: Platform, clock: ManualClock, server: str
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    slept: list[float] = []
    wiretap = Wiretap()
    with client_as(server, alice, transport=wiretap, sleep=slept.append) as client:
        done = client.generate(
            "flux-schnell",
            "a fox",
            params={"sandbox": {"delay_s": 5}},
            timeout=GENERATE_TIMEOUT_S,
            on_update=finish_once_running(platform, clock),
        )
    assert done.status == "succeeded"
    assert slept == []  # no polling
    assert wiretap.paths().count("/v1/events") == 1
    # Once after subscribing, then once per event of this generation (running,
    # unless the worker had claimed it before the stream opened, and succeeded).
    assert wiretap.paths().count(f"/v1/generations/{done.id}") in (2, 3)


def test_the_wait_polls_when_the_stream_says_resync(
    platform: Platform, clock: ManualClock, server: str
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    wiretap = Wiretap(resync_events=True)
    with client_as(server, alice, transport=wiretap, sleep=sleep) as client:
        done = client.generate(
            "flux-schnell",
            "a fox",
            params={"sandbox": {"delay_s": 5}},
            timeout=GENERATE_TIMEOUT_S,
            on_update=finish_once_running(platform, clock),
        )
    assert done.status == "succeeded"
    assert wiretap.paths().count("/v1/events") == 1
    assert slept
    assert all(0 < seconds <= 1.0 for seconds in slept)
    assert wiretap.paths().count(f"/v1/generations/{done.id}") >= 2


def test_a_lost_answer_is_retried_with_the_same_key_and_submits_once(
    platform: Platform, server: str
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    wiretap = Wiretap(lose_first_submission=True)
    with client_as(server, alice, transport=wiretap) as client:
        done = client.generate("flux-schnell", "a fox", params=FAST, timeout=GENERATE_TIMEOUT_S)
        assert done.status == "succeeded"
        submissions = [r for r in wiretap.requests if r.url.path == "/v1/generations"]
        assert len(submissions) == 2
        keys = {r.headers["Idempotency-Key"] for r in submissions}
        assert len(keys) == 1
        assert [g.id for g in client.generations()] == [done.id]
        assert client.balance().available == 49


def test_submit_without_waiting_time_out_and_cancel_queued_and_running(
    platform: Platform, server: str
) -> None:
    # Free: one job at a time, so the second waits in the queue behind the first.
    alice = make_user(platform, "alice@example.com", credits=50)
    with client_as(server, alice) as client:
        first = client.generate("flux-schnell", "slow", params=SLOW, wait=False)
        assert (first.status, first.queue_position, first.outputs) == ("queued", 1, ())
        assert (first.credits_held, first.credits_charged, first.balance_after) == (1, 0, 49)
        running = wait_for_status(client, first.id, "running")
        assert running.started_at is not None
        second = client.generate("flux-schnell", "slower", params=SLOW, wait=False)
        assert client.generation(second.id).status == "queued"

        # Waiting on the event stream, which stays silent: its read timeout
        # never reaches past the deadline.
        started = time.monotonic()
        with pytest.raises(GenerationTimeout) as timed_out:
            client.wait_for_generation(first.id, timeout=1.5)
        assert 1.5 <= time.monotonic() - started < 1.5 + 1.5
        assert timed_out.value.generation.id == first.id
        assert timed_out.value.generation.status == "running"
        assert isinstance(timed_out.value, TimeoutError)

        canceled = client.cancel_generation(second.id)
        assert (canceled.status, canceled.credits_charged, canceled.balance_after) == (
            "canceled",
            0,
            49,  # the first one still holds its credit
        )
        assert client.cancel_generation(first.id).status == "running"  # asked to stop
        stopped = client.wait_for_generation(first.id, timeout=GENERATE_TIMEOUT_S)
        assert (stopped.status, stopped.credits_charged) == ("canceled", 0)
        assert (client.balance().available, client.balance().held) == (50, 0)
        with pytest.raises(NotFoundError):
            client.cancel_generation("gen_nobody")


# -- uploads and image-to-video ------------------------------------------------------------


def test_an_uploaded_image_becomes_a_video(platform: Platform, server: str, tmp_path: Path) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    source = tmp_path / "source.png"
    source.write_bytes(png(64, 48))
    with client_as(server, sam) as client:
        upload = client.upload(source)
        assert (upload.content_type, upload.width, upload.height) == ("image/png", 64, 48)
        assert upload.id.startswith("upl_")
        assert client.upload(png(8, 8), "image/png").width == 8
        with pytest.raises(InvalidInputError) as refused:
            client.upload(b"GIF89a not an accepted image")
        assert refused.value.errors[0].field == "file"

        video = client.generate(
            "wan-pro-i2v",
            "the fox runs",
            upload_id=upload.id,
            params={"duration_s": 5, **FAST},
            timeout=GENERATE_TIMEOUT_S,
        )
        assert (video.status, video.kind, video.credits_charged) == (
            "succeeded",
            "image-to-video",
            80,
        )
        assert video.balance_after == 2000 - 80
        [output] = video.outputs
        assert output.content_type == "video/mp4"
        assert output.duration_s == 5.0
        assert (output.width, output.height) == (960, 720)  # the source's 4:3
        [path] = client.download_outputs(video, tmp_path)
        assert path.name == f"{video.id}-1.mp4"
        assert path.read_bytes()[4:8] == b"ftyp"


# -- the command line -----------------------------------------------------------------------


@pytest.fixture
def cli(server: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PLASMAART_URL", server)
    monkeypatch.delenv("PLASMAART_API_KEY", raising=False)
    return CliRunner()


def test_the_generate_command_writes_the_files_and_a_summary(
    platform: Platform, cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    monkeypatch.setenv("PLASMAART_API_KEY", alice.api_key)
    out = tmp_path / "out"
    result = cli.invoke(
        app,
        [
            "generate",
            "--model",
            "flux-schnell",
            "--prompt",
            "a red fox",
            "--outputs",
            "2",
            "--param",
            "seed=7",
            "--param",
            "aspect_ratio=16:9",
            "--param",
            'sandbox={"delay_s": 0}',
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    generation_id = lines[0].split()[0]
    assert lines[:2] == [
        f"{generation_id} succeeded: flux-schnell, 2 outputs",
        "charged 2 credits; balance 48 credits",
    ]
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{generation_id}-1.png", f"{generation_id}-2.png"]
    assert lines[2:] == [f"saved {f}" for f in files]
    for path in files:
        with Image.open(path) as image:
            assert image.format == "PNG"
    assert f"{generation_id} queued (position 1 in the queue)" in result.stderr
    assert f"{generation_id} succeeded" in result.stderr
    assert "s] " in result.stderr  # the elapsed time

    queued = cli.invoke(app, ["generate", "--model", "flux-schnell", "--prompt", "x", "--no-wait"])
    assert queued.exit_code == 0, queued.output
    assert queued.stdout.strip().startswith("gen_")


def test_the_generate_command_exits_1_when_refused_or_failed_and_2_on_bad_usage(
    platform: Platform,
    server: str,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    out = tmp_path / "out"
    base = ["generate", "--prompt", "waves", "--out", str(out)]
    no_key = cli.invoke(app, [*base, "--model", "flux-schnell"])
    assert no_key.exit_code == 2
    assert "PLASMAART_API_KEY" in no_key.stderr

    monkeypatch.setenv("PLASMAART_API_KEY", alice.api_key)
    refused = cli.invoke(app, [*base, "--model", "pixverse-v4.5"])
    assert refused.exit_code == 1
    assert "403 model_not_in_plan" in refused.stderr
    assert "Starter includes it" in refused.stderr
    failed = cli.invoke(
        app, [*base, "--model", "flux-schnell", "--param", 'sandbox={"fail": true, "delay_s": 0}']
    )
    assert failed.exit_code == 1
    assert "failed" in failed.stderr
    assert "generation_failed" in failed.stderr
    invalid = cli.invoke(app, [*base, "--model", "flux-schnell", "--param", "style=noir"])
    assert invalid.exit_code == 1
    assert "params.style" in invalid.stderr
    bad_param = cli.invoke(app, [*base, "--model", "flux-schnell", "--param", "seed"])
    assert bad_param.exit_code == 2
    assert "key=value" in bad_param.stderr
    bad_key = cli.invoke(app, [*base, "--model", "flux-schnell", "--api-key", "pa_live_nope"])
    assert bad_key.exit_code == 1
    assert "401 unauthenticated" in bad_key.stderr
    assert not out.exists()
    with client_as(server, alice) as client:
        assert client.balance().available == 50


# -- the async client -----------------------------------------------------------------------


def test_the_async_client_generates_and_downloads(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com", credits=50)
    seen: list[str] = []

    async def on_update(generation: Generation) -> None:
        await asyncio.sleep(0)
        seen.append(generation.status)

    async def scenario() -> None:
        async with AsyncClient(server, alice.api_key, timeout=WAIT_S) as client:
            done = await client.generate(
                "flux-schnell",
                "a fox",
                num_outputs=2,
                params={"aspect_ratio": "16:9", **FAST},
                timeout=GENERATE_TIMEOUT_S,
                on_update=on_update,
            )
            assert (done.status, done.credits_charged, len(done.outputs)) == ("succeeded", 2, 2)
            into = io.BytesIO()
            await client.download_output(done.outputs[0], into)
            with Image.open(into) as image:
                assert image.format == "PNG"
            assert [g.id async for g in client.generations(page_size=1)] == [done.id]
            queued = await client.generate("flux-schnell", "slow", params=SLOW, wait=False)
            with pytest.raises(GenerationTimeout):
                await client.wait_for_generation(queued, timeout=0.3)
            canceled = await client.cancel_generation(queued.id)
            assert canceled.status in ("canceled", "running")
            assert (await client.quote("flux-schnell", "a fox")).credits == 1

    asyncio.run(scenario())
    assert seen[0] == "queued"
    assert seen[-1] == "succeeded"


# -- no server needed ---------------------------------------------------------------------


def test_the_key_goes_only_to_our_server_and_a_bad_timeout_submits_nothing(
    tmp_path: Path,
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"media bytes")

    output = Output(
        id="out_1",
        url="https://bucket.example.net/out_1.png?sig=abc",
        content_type="image/png",
        width=1,
        height=1,
        duration_s=None,
        watermarked=True,
        license="personal",
    )
    with Client(
        "https://api.example.com", "pa_live_secret", transport=httpx.MockTransport(answer)
    ) as client:
        assert client.download_output(output, tmp_path / "a.png") == len(b"media bytes")
        relative = dataclasses.replace(output, url="/v1/outputs/out_1/content?signature=x")
        client.download_output(relative, tmp_path / "b.png")
        with pytest.raises(ValueError, match="timeout"):
            client.generate("flux-schnell", "a fox", timeout=-1)
    assert [str(r.url) for r in seen] == [
        "https://bucket.example.net/out_1.png?sig=abc",
        "https://api.example.com/v1/outputs/out_1/content?signature=x",
    ]
    assert "authorization" not in seen[0].headers
    assert seen[1].headers["authorization"] == "Bearer pa_live_secret"
    assert (tmp_path / "a.png").read_bytes() == b"media bytes"


# -- console helpers ----------------------------------------------------------------------------


def test_params_are_json_when_they_parse() -> None:
    assert parse_params(
        ["seed=7", 'sandbox={"delay_s": 0}', "aspect_ratio=16:9", "flag=true", "name=", "a=b=c"]
    ) == {
        "seed": 7,
        "sandbox": {"delay_s": 0},
        "aspect_ratio": "16:9",
        "flag": True,
        "name": "",
        "a": "b=c",
    }
    for bad in ("seed", "=7", " =7"):
        with pytest.raises(ValueError, match="key=value"):
            parse_params([bad])


def test_progress_lines_tick_while_nothing_changes() -> None:
    queued = Generation(
        id="gen_1",
        status="queued",
        model="flux-schnell",
        kind="text-to-image",
        prompt="a fox",
        num_outputs=1,
        credits_per_output=1,
        credits_held=1,
        credits_charged=0,
        balance_after=9,
        outputs=(),
        error=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        started_at=None,
        finished_at=None,
        queue_position=3,
    )
    stream = io.StringIO()
    with TextProgress(stream, every=0.05) as progress:
        progress(queued)
        deadline = time.monotonic() + WAIT_S
        while stream.getvalue().count("still") < 2:
            assert time.monotonic() < deadline, stream.getvalue()
            time.sleep(0.02)
        progress(dataclasses.replace(queued, status="succeeded", queue_position=None))
        ticks = stream.getvalue().count("still")
        time.sleep(0.2)
        assert stream.getvalue().count("still") == ticks  # nothing ticks once it is finished
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("gen_1 queued (position 3 in the queue)")
    assert lines[1].endswith("gen_1 still queued")
    assert lines[-1].endswith("gen_1 succeeded")
    assert all(line.startswith("[") and "s] " in line for line in lines)
    assert progress.last is not None
    assert progress.last.status == "succeeded"
    # Leaving the block stopped the ticker.
    assert not any(t.name == "plasmaart-progress" for t in threading.enumerate())

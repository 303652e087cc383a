"""The sandbox provider behaves like a real one: ids at once, a delay, real
files, failures on request, cancellation until done, and jobs that outlive the
process that submitted them."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from plasmaart.catalog import load_catalog
from plasmaart.clock import ManualClock
from plasmaart.generation.providers.base import ProviderRejected, ProviderRequest
from plasmaart.generation.providers.sandbox import SandboxProvider, sandbox_errors
from plasmaart.media.metadata import probe_mp4
from plasmaart.media.sandbox_render import render_image

CATALOG = load_catalog()


def request(model: str, **kwargs: object) -> ProviderRequest:
    defaults: dict[str, object] = {
        "generation_id": "gen_1",
        "prompt": "a red fox in snow",
        "num_outputs": 1,
    }
    return ProviderRequest(model=CATALOG.model(model), **{**defaults, **kwargs})  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sandbox(tmp_path: Path, clock: ManualClock) -> SandboxProvider:
    return SandboxProvider(tmp_path / "sandbox", clock)


def test_images_arrive_after_the_delay(sandbox: SandboxProvider, clock: ManualClock) -> None:
    model = CATALOG.model("flux-schnell")
    request_id = sandbox.submit(
        request("flux-schnell", num_outputs=4, params={"seed": 7, "aspect_ratio": "1:1"})
    )
    running = sandbox.status(model, request_id)
    assert (running.state, running.progress) == ("running", 0.0)
    clock.advance(timedelta(seconds=2))
    done = sandbox.status(model, request_id)
    assert done.state == "succeeded"
    assert len(done.outputs) == 4
    pictures = [sandbox.download(output) for output in done.outputs]
    assert len(set(pictures)) == 4  # one seed per output
    with Image.open(io.BytesIO(pictures[0])) as image:
        assert (image.format, image.size) == ("PNG", (1024, 1024))
    assert pictures[0] == render_image("a red fox in snow", 7, 1024, 1024)


def test_a_video_is_a_real_mp4(sandbox: SandboxProvider, clock: ManualClock) -> None:
    model = CATALOG.model("pixverse-v4.5")
    request_id = sandbox.submit(
        request("pixverse-v4.5", params={"duration_s": 5}, sandbox={"delay_s": 0})
    )
    status = sandbox.status(model, request_id)
    assert status.state == "succeeded"
    video = probe_mp4(sandbox.download(status.outputs[0]))
    assert (video.codec, video.width, video.height) == ("h264", 1280, 720)
    assert abs(video.duration_s - 5) < 0.2


def test_failures_on_request(sandbox: SandboxProvider, clock: ManualClock) -> None:
    model = CATALOG.model("flux-dev")
    request_id = sandbox.submit(request("flux-dev", sandbox={"fail": True, "delay_s": 1}))
    clock.advance(timedelta(seconds=1))
    failed = sandbox.status(model, request_id)
    assert failed.state == "failed"
    assert "params.sandbox.fail" in (failed.error or "")
    for bad in ({"fail": "yes"}, {"delay_s": -1}, {"delay_s": 10_000}, {"explode": True}):
        with pytest.raises(ProviderRejected):
            sandbox.submit(request("flux-dev", sandbox=bad))
    with pytest.raises(ProviderRejected):
        sandbox.submit(request("wan-pro-i2v"))  # needs an input image


def test_deliver_makes_only_some_of_the_outputs_arrive(
    sandbox: SandboxProvider, clock: ManualClock
) -> None:
    model = CATALOG.model("flux-schnell")
    request_id = sandbox.submit(
        request("flux-schnell", num_outputs=4, sandbox={"delay_s": 0, "deliver": 3})
    )
    done = sandbox.status(model, request_id)
    assert done.state == "succeeded"
    assert [output.url for output in done.outputs] == [
        f"sandbox://{request_id}/{index}" for index in range(3)
    ]
    assert all(sandbox.download(output) for output in done.outputs)


def test_fail_download_reports_success_and_refuses_every_file(
    sandbox: SandboxProvider, clock: ManualClock
) -> None:
    model = CATALOG.model("flux-schnell")
    request_id = sandbox.submit(
        request("flux-schnell", num_outputs=2, sandbox={"delay_s": 0, "fail_download": True})
    )
    done = sandbox.status(model, request_id)
    assert (done.state, len(done.outputs)) == ("succeeded", 2)
    for output in done.outputs:
        # As fal answers for an expired file: refused, not worth retrying.
        with pytest.raises(ProviderRejected, match="HTTP 404"):
            sandbox.download(output)


@pytest.mark.parametrize(
    ("outputs", "sandbox_params", "field"),
    [
        (2, {"deliver": 2}, "params.sandbox.deliver"),
        (2, {"deliver": 0}, "params.sandbox.deliver"),
        (3, {"deliver": True}, "params.sandbox.deliver"),
        (3, {"deliver": 1.5}, "params.sandbox.deliver"),
        (1, {"deliver": 1}, "params.sandbox.deliver"),
        (1, {"fail_download": 1}, "params.sandbox.fail_download"),
        (1, {"fail": "yes"}, "params.sandbox.fail"),
        (1, {"delay_s": -1}, "params.sandbox.delay_s"),
        (1, {"explode": True}, "params.sandbox.explode"),
    ],
)
def test_sandbox_params_out_of_range_are_named(
    sandbox: SandboxProvider, outputs: int, sandbox_params: dict[str, object], field: str
) -> None:
    assert [f for f, _ in sandbox_errors(sandbox_params, outputs)] == [field]
    with pytest.raises(ProviderRejected, match=field):
        sandbox.submit(request("flux-schnell", num_outputs=outputs, sandbox=sandbox_params))


def test_sandbox_params_in_range_are_taken() -> None:
    assert sandbox_errors({"deliver": 1, "fail": False, "delay_s": 0.5}, 2) == []
    assert sandbox_errors({"deliver": 3, "fail_download": True}, 4) == []


def test_cancel_until_done(sandbox: SandboxProvider, clock: ManualClock) -> None:
    model = CATALOG.model("flux-dev")
    early = sandbox.submit(request("flux-dev", sandbox={"delay_s": 5}))
    late = sandbox.submit(request("flux-dev", sandbox={"delay_s": 5}))
    assert sandbox.cancel(model, early) is True
    assert sandbox.status(model, early).state == "canceled"
    clock.advance(timedelta(seconds=5))
    # Already delivered: too late to cancel (no cancel-after-delivery exploit).
    assert sandbox.cancel(model, late) is False
    assert sandbox.status(model, late).state == "succeeded"


def test_jobs_survive_the_process(tmp_path: Path, clock: ManualClock) -> None:
    first = SandboxProvider(tmp_path / "shared", clock)
    request_id = first.submit(request("flux-schnell", sandbox={"delay_s": 0}))
    again = SandboxProvider(tmp_path / "shared", clock)
    assert again.status(CATALOG.model("flux-schnell"), request_id).state == "succeeded"
    with pytest.raises(ProviderRejected):
        again.status(CATALOG.model("flux-schnell"), "sbx_unknown")
    with pytest.raises(ProviderRejected):
        again.status(CATALOG.model("flux-schnell"), "../../etc/passwd")


def test_image_to_video_follows_the_source_image(
    sandbox: SandboxProvider, clock: ManualClock
) -> None:
    source = render_image("a lighthouse", 1, 768, 1024)  # portrait
    model = CATALOG.model("wan-pro-i2v")
    request_id = sandbox.submit(
        request("wan-pro-i2v", image=source, sandbox={"delay_s": 0}, params={"duration_s": 5})
    )
    status = sandbox.status(model, request_id)
    output = status.outputs[0]
    assert output.height is not None
    assert output.width is not None
    assert output.height > output.width
    video = probe_mp4(sandbox.download(output))
    assert (video.width, video.height) == (output.width, output.height)

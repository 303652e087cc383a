"""The fal provider against a local server that speaks fal's queue protocol:
submit, poll, result, cancel and download; fal's errors mapped to ours; our
params as each endpoint's inputs; signed webhooks verified. Nothing leaves
127.0.0.1."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from plasmaart.catalog import load_catalog
from plasmaart.clock import ManualClock
from plasmaart.generation.providers.base import (
    ProviderOutput,
    ProviderRejected,
    ProviderRequest,
    ProviderStatus,
    ProviderUnavailable,
)
from plasmaart.generation.providers.fal.arguments import FAL_INPUTS, fal_arguments
from plasmaart.generation.providers.fal.client import FalProvider, app_id
from plasmaart.generation.providers.fal.verification import (
    JWKS_MIN_REFRESH,
    JWKS_TTL,
    WEBHOOK_HEADERS,
    JwksCache,
    parse_webhook,
    signed_by_fal,
    verify_webhook,
)
from plasmaart.media.metadata import probe_mp4
from plasmaart.media.sandbox_render import render_image
from tests.support.fake_fal import Behaviour, FakeFal, FalError
from tests.support.pgserver import free_port

CATALOG = load_catalog()
KEY = "fake-fal-key"


def request(model: str, **kwargs: object) -> ProviderRequest:
    defaults: dict[str, object] = {
        "generation_id": "gen_1",
        "prompt": "a red fox in snow",
        "num_outputs": 1,
    }
    return ProviderRequest(model=CATALOG.model(model), **{**defaults, **kwargs})  # type: ignore[arg-type]


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeFal]:
    with FakeFal(clock, key=KEY) as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture
def fal(fake: FakeFal, http: httpx.Client) -> FalProvider:
    return FalProvider(KEY, base_url=fake.url, jwks_url=fake.jwks_url, http=http, timeout=10)


def poll_until_done(fal: FalProvider, model: str, request_id: str) -> list[ProviderStatus]:
    seen = []
    for _ in range(20):
        status = fal.status(CATALOG.model(model), request_id)
        seen.append(status)
        if status.state not in ("queued", "running"):
            return seen
    raise AssertionError(f"still not done after 20 polls: {seen[-1]}")


# ------------------------------------------------------------- happy paths


def test_image_model_makes_four_outputs_through_queue_and_result(
    fal: FalProvider, fake: FakeFal
) -> None:
    request_id = fal.submit(
        request(
            "flux-schnell",
            num_outputs=4,
            params={"aspect_ratio": "16:9", "seed": 42, "num_inference_steps": 4},
        )
    )

    submitted = fake.requests[request_id]
    assert submitted.endpoint == "fal-ai/flux/schnell"
    assert submitted.input == {
        "prompt": "a red fox in snow",
        "num_images": 4,
        "image_size": "landscape_16_9",
        "seed": 42,
        "num_inference_steps": 4,
    }
    assert submitted.webhook_url is None

    seen = poll_until_done(fal, "flux-schnell", request_id)
    # fal's queue_position counts from 0; ours from 1.
    assert seen[0] == ProviderStatus("queued", queue_position=3)
    assert seen[1] == ProviderStatus("running")
    done = seen[-1]
    assert done.state == "succeeded"
    assert len(done.outputs) == 4
    for index, output in enumerate(done.outputs):
        assert output.content_type == "image/png"
        assert (output.width, output.height) == (112, 64)
        data = fal.download(output)
        assert data == render_image("a red fox in snow", 42 + index, 112, 64)
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.size == (112, 64)
    # Output files are public: our key never goes to the media host.
    assert len(fake.media_headers) == 4
    assert all("authorization" not in headers for headers in fake.media_headers)


def test_video_model_spells_duration_its_way_and_downloads_an_mp4(
    fal: FalProvider, fake: FakeFal
) -> None:
    params = {"aspect_ratio": "9:16", "duration_s": 8, "seed": 5, "generate_audio": False}
    request_id = fal.submit(request("google-veo3", params=params))

    submitted = fake.requests[request_id]
    assert submitted.endpoint == "fal-ai/veo3"
    assert submitted.input == {
        "prompt": "a red fox in snow",
        "aspect_ratio": "9:16",
        "duration": "8s",
        "seed": 5,
        "generate_audio": False,
    }

    done = poll_until_done(fal, "google-veo3", request_id)[-1]
    assert done.state == "succeeded"
    (output,) = done.outputs
    assert output.content_type == "video/mp4"
    info = probe_mp4(fal.download(output))
    assert (info.codec, info.width, info.height) == ("h264", 72, 128)


def test_kling_takes_duration_as_a_bare_number_and_no_seed(fal: FalProvider, fake: FakeFal) -> None:
    request_id = fal.submit(
        request(
            "kling-video-v2.1",
            params={"aspect_ratio": "1:1", "duration_s": 10, "seed": 9, "negative_prompt": "blur"},
        )
    )
    assert fake.requests[request_id].input == {
        "prompt": "a red fox in snow",
        "aspect_ratio": "1:1",
        "duration": "10",
        "negative_prompt": "blur",
    }


def test_image_to_video_sends_the_image_url_or_the_bytes_as_a_data_uri(
    fal: FalProvider, fake: FakeFal
) -> None:
    by_url = fal.submit(
        request("seedance-v1-pro-i2v", image_url="https://example.test/in.png", params={})
    )
    assert fake.requests[by_url].input["image_url"] == "https://example.test/in.png"
    assert fake.requests[by_url].endpoint == "fal-ai/bytedance/seedance/v1/pro/image-to-video"

    png = render_image("source", 1, 32, 32)
    by_bytes = fal.submit(request("seedance-v1-pro-i2v", image=png))
    data_uri = fake.requests[by_bytes].input["image_url"]
    assert data_uri.startswith("data:image/png;base64,")

    with pytest.raises(ProviderRejected, match="needs an input image"):
        fal.submit(request("seedance-v1-pro-i2v"))


def test_kontext_edits_a_given_image_and_otherwise_uses_its_text_endpoint(
    fal: FalProvider, fake: FakeFal
) -> None:
    edit = fal.submit(request("flux-pro-kontext", image_url="https://example.test/in.png"))
    assert fake.requests[edit].endpoint == "fal-ai/flux-pro/kontext"
    text = fal.submit(request("flux-pro-kontext", params={"aspect_ratio": "4:3"}))
    assert fake.requests[text].endpoint == "fal-ai/flux-pro/kontext/text-to-image"
    assert fake.requests[text].input["aspect_ratio"] == "4:3"
    assert "image_url" not in fake.requests[text].input
    # Both live under the same app, so both poll at fal-ai/flux-pro.
    assert poll_until_done(fal, "flux-pro-kontext", text)[-1].state == "succeeded"


def test_a_restarted_worker_resumes_from_the_request_id_alone(
    fake: FakeFal, http: httpx.Client
) -> None:
    first = FalProvider(KEY, base_url=fake.url, http=http)
    request_id = first.submit(request("flux-dev", num_outputs=2))
    # A new process knows only the model and the stored id; the status URL is
    # derived from the endpoint's app (fal-ai/flux), not the sub-path.
    second = FalProvider(KEY, base_url=fake.url, http=http)
    done = poll_until_done(second, "flux-dev", request_id)[-1]
    assert done.state == "succeeded"
    assert len(done.outputs) == 2


def test_webhook_url_is_passed_as_fal_webhook(fal: FalProvider, fake: FakeFal) -> None:
    request_id = fal.submit(request("flux-schnell", webhook_url="https://hooks.example/fal?job=1"))
    assert fake.requests[request_id].webhook_url == "https://hooks.example/fal?job=1"


# ------------------------------------------------------------- fal's errors


def test_422_from_the_model_is_rejected_with_fal_messages(fal: FalProvider, fake: FakeFal) -> None:
    fake.script(
        Behaviour(
            result_error=FalError.validation(
                ("prompt", "Prompt violates the content policy"),
                ("image_size", "unsupported size"),
            )
        )
    )
    request_id = fal.submit(request("flux-schnell"))
    with pytest.raises(ProviderRejected) as caught:
        poll_until_done(fal, "flux-schnell", request_id)
    message = str(caught.value)
    assert "HTTP 422" in message
    assert "prompt: Prompt violates the content policy; image_size: unsupported size" in message


def test_422_at_submit_is_rejected(fal: FalProvider, fake: FakeFal) -> None:
    fake.script(Behaviour(submit_error=FalError.validation(("seed", "must be at most 2**32"))))
    with pytest.raises(ProviderRejected, match="seed: must be at most"):
        fal.submit(request("flux-schnell"))
    assert fake.requests == {}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FalError.server(503), ProviderUnavailable),
        (FalError.server(500), ProviderUnavailable),
        (FalError.server(504, retryable=True), ProviderUnavailable),
        # fal says retrying the same request cannot help.
        (FalError.server(500, retryable=False), ProviderRejected),
        (FalError(429, {"detail": "Too many concurrent requests"}), ProviderUnavailable),
        # A 4xx that fal marks retryable is worth another try.
        (FalError(400, {"detail": "Try again"}, retryable=True), ProviderUnavailable),
        (FalError(400, {"detail": "Bad input"}), ProviderRejected),
    ],
)
def test_http_errors_map_by_status_and_x_fal_retryable(
    fal: FalProvider, fake: FakeFal, error: FalError, expected: type[Exception]
) -> None:
    fake.script(Behaviour(submit_error=error))
    with pytest.raises(expected, match=f"HTTP {error.status}"):
        fal.submit(request("flux-schnell"))


def test_5xx_on_status_poll_is_unavailable_and_the_message_is_kept(
    fal: FalProvider, fake: FakeFal
) -> None:
    fake.script(Behaviour(status_error=FalError.server(503)))
    request_id = fal.submit(request("flux-schnell"))
    with pytest.raises(ProviderUnavailable, match="No runner could be allocated"):
        fal.status(CATALOG.model("flux-schnell"), request_id)


def test_transport_error_is_unavailable(http: httpx.Client) -> None:
    nowhere = FalProvider(KEY, base_url=f"http://127.0.0.1:{free_port()}", http=http, timeout=2)
    with pytest.raises(ProviderUnavailable, match="ConnectError"):
        nowhere.submit(request("flux-schnell"))


def test_a_wrong_key_is_rejected(fake: FakeFal, http: httpx.Client) -> None:
    wrong = FalProvider("not-the-key", base_url=fake.url, http=http)
    with pytest.raises(ProviderRejected, match="HTTP 401: Invalid API key"):
        wrong.submit(request("flux-schnell"))


def test_unknown_request_is_rejected(fal: FalProvider) -> None:
    with pytest.raises(ProviderRejected, match="HTTP 404"):
        fal.status(CATALOG.model("flux-schnell"), "no-such-request")


def test_a_request_stuck_in_the_queue_reports_its_position(fal: FalProvider, fake: FakeFal) -> None:
    fake.script(Behaviour(stuck_in_queue=True, queue_position=7))
    request_id = fal.submit(request("pixverse-v4.5", params={"duration_s": 5}))
    statuses = [fal.status(CATALOG.model("pixverse-v4.5"), request_id) for _ in range(6)]
    assert statuses == [ProviderStatus("queued", queue_position=8)] * 6


# ---------------------------------------------------------------- cancel


def test_cancel_before_completion_then_the_request_reads_canceled(
    fal: FalProvider, fake: FakeFal
) -> None:
    model = CATALOG.model("veo3")
    request_id = fal.submit(request("veo3"))
    assert fal.status(model, request_id).state == "queued"
    assert fal.cancel(model, request_id) is True
    assert fake.requests[request_id].cancelled
    # Cancelling again (a worker retrying after a crash) still says cancelled.
    assert fal.cancel(model, request_id) is True
    assert fal.status(model, request_id) == ProviderStatus("canceled")


def test_cancel_after_completion_is_false_and_the_outputs_stay(
    fal: FalProvider, fake: FakeFal
) -> None:
    model = CATALOG.model("flux-schnell")
    request_id = fal.submit(request("flux-schnell", num_outputs=2))
    assert poll_until_done(fal, "flux-schnell", request_id)[-1].state == "succeeded"
    assert fal.cancel(model, request_id) is False
    assert fal.status(model, request_id).state == "succeeded"


def test_cancel_of_an_unknown_request_is_rejected(fal: FalProvider) -> None:
    with pytest.raises(ProviderRejected, match="HTTP 404: NOT_FOUND"):
        fal.cancel(CATALOG.model("flux-schnell"), "no-such-request")


# ---------------------------------------------------------------- outputs


def test_images_flagged_by_the_safety_checker_are_not_delivered(
    fal: FalProvider, fake: FakeFal
) -> None:
    fake.script(Behaviour(nsfw=(False, True, False, True)))
    request_id = fal.submit(request("flux-schnell", num_outputs=4))
    done = poll_until_done(fal, "flux-schnell", request_id)[-1]
    assert [output.url.rsplit("/", 1)[-1] for output in done.outputs if output.url] == [
        "0.png",
        "2.png",
    ]


def test_all_images_flagged_fails_the_request(fal: FalProvider, fake: FakeFal) -> None:
    fake.script(Behaviour(nsfw=(True,)))
    request_id = fal.submit(request("flux-schnell"))
    done = poll_until_done(fal, "flux-schnell", request_id)[-1]
    assert done == ProviderStatus("failed", error="fal's safety checker withheld every output")


def test_download_of_a_missing_file_is_rejected(fal: FalProvider, fake: FakeFal) -> None:
    with pytest.raises(ProviderRejected, match="HTTP 404"):
        fal.download(ProviderOutput("image/png", url=f"{fake.url}/media/nope/0.png"))


def test_download_of_a_file_fal_refuses(fal: FalProvider, fake: FakeFal) -> None:
    fake.script(
        Behaviour(
            download_error=FalError(404, {"detail": "File expired"}), download_error_for=(1,)
        ),
        Behaviour(download_error=FalError.server(503)),
    )
    expired = fal.submit(request("flux-schnell", num_outputs=2))
    done = poll_until_done(fal, "flux-schnell", expired)[-1]
    assert fal.download(done.outputs[0]).startswith(b"\x89PNG")
    with pytest.raises(ProviderRejected, match="HTTP 404: File expired"):
        fal.download(done.outputs[1])
    down = fal.submit(request("flux-schnell"))
    done = poll_until_done(fal, "flux-schnell", down)[-1]
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        fal.download(done.outputs[0])


def test_download_of_an_inline_data_uri(fal: FalProvider) -> None:
    output = ProviderOutput("image/png", url="data:image/png;base64,iVBORw0KGgo=")
    assert fal.download(output) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------- input mapping


def test_every_catalog_model_maps_to_fal_inputs_with_its_default_params() -> None:
    for model in CATALOG.models:
        assert model.provider_model in FAL_INPUTS, model.id
        params = {name: spec.default for name, spec in model.params.items() if spec.default}
        if "seed" in model.params:
            params["seed"] = 1
        image = b"\x89PNG\r\n\x1a\n" if model.inputs.image == "required" else None
        endpoint, arguments = fal_arguments(
            ProviderRequest("gen_1", model, "a prompt", model.max_outputs, params, image=image)
        )
        assert arguments["prompt"] == "a prompt"
        assert app_id(endpoint) == app_id(model.provider_model), model.id
        assert ("num_images" in arguments) == (model.kind == "text-to-image"), model.id


def test_a_param_the_endpoint_has_no_input_for_is_refused() -> None:
    with pytest.raises(ProviderRejected, match=r"no input for params\.guidance_scale"):
        fal_arguments(request("flux-schnell", params={"guidance_scale": 3.0}))


def test_several_outputs_from_a_one_output_endpoint_are_refused() -> None:
    with pytest.raises(ProviderRejected, match="one output per request"):
        fal_arguments(request("veo3", num_outputs=2))


@pytest.mark.parametrize(
    ("endpoint", "app"),
    [
        ("fal-ai/flux/schnell", "fal-ai/flux"),
        ("fal-ai/veo3", "fal-ai/veo3"),
        ("fal-ai/kling-video/v2.1/master/text-to-video", "fal-ai/kling-video"),
        ("workflows/someone/my-flow/run", "workflows/someone/my-flow"),
    ],
)
def test_requests_live_under_the_endpoint_app(endpoint: str, app: str) -> None:
    assert app_id(endpoint) == app


# ---------------------------------------------------------------- webhooks


def webhook_request(fake: FakeFal, fal: FalProvider, **behaviour: object) -> str:
    fake.script(Behaviour(**behaviour))  # type: ignore[arg-type]
    request_id = fal.submit(
        request("flux-schnell", num_outputs=2, webhook_url=fake.webhook_sink_url)
    )
    fake.complete(request_id)
    return request_id


def test_a_signed_webhook_verifies_and_carries_the_outputs(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    request_id = webhook_request(fake, fal)
    (delivery,) = fake.deliveries
    assert signed_by_fal(fal.jwks, delivery.headers, delivery.body, clock.now())

    webhook = parse_webhook(delivery.body)
    assert webhook.request_id == request_id
    assert webhook.status.state == "succeeded"
    assert len(webhook.status.outputs) == 2
    assert fal.download(webhook.status.outputs[0]).startswith(b"\x89PNG")


def test_a_failed_request_webhook_reads_failed_with_fal_messages(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    webhook_request(fake, fal, result_error=FalError.validation(("prompt", "field required")))
    (delivery,) = fake.deliveries
    assert signed_by_fal(fal.jwks, delivery.headers, delivery.body, clock.now())
    assert parse_webhook(delivery.body).status == ProviderStatus(
        "failed", error="prompt: field required"
    )


def test_webhook_signed_with_another_key_is_refused(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    request_id = webhook_request(fake, fal)
    body = fake.deliveries[0].body
    forged = fake.signed_headers(request_id, body, key=Ed25519PrivateKey.generate())
    assert not signed_by_fal(fal.jwks, forged, body, clock.now())
    # Keys that do not include the signer refuse even the genuine webhook.
    genuine = fake.deliveries[0].headers
    assert verify_webhook(genuine, body, fake.jwks()["keys"], clock.now())
    assert not verify_webhook(genuine, body, fake.jwks()["keys"][:1], clock.now())


def test_webhook_with_a_tampered_body_is_refused(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    webhook_request(fake, fal)
    delivery = fake.deliveries[0]
    tampered = json.loads(delivery.body)
    tampered["payload"]["images"][0]["url"] = "https://evil.example/x.png"
    assert not signed_by_fal(fal.jwks, delivery.headers, json.dumps(tampered).encode(), clock.now())
    assert not signed_by_fal(fal.jwks, delivery.headers, delivery.body + b" ", clock.now())


def test_webhook_timestamp_must_be_within_five_minutes(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    webhook_request(fake, fal)
    delivery = fake.deliveries[0]
    sent = clock.now()
    for skew in (timedelta(minutes=5), -timedelta(minutes=5), timedelta(seconds=299)):
        assert verify_webhook(delivery.headers, delivery.body, fake.jwks()["keys"], sent + skew)
    for skew in (timedelta(minutes=5, seconds=1), -timedelta(minutes=5, seconds=1)):
        assert not verify_webhook(delivery.headers, delivery.body, fake.jwks()["keys"], sent + skew)


@pytest.mark.parametrize("missing", WEBHOOK_HEADERS)
def test_webhook_missing_a_header_is_refused(
    fal: FalProvider, fake: FakeFal, clock: ManualClock, missing: str
) -> None:
    webhook_request(fake, fal)
    delivery = fake.deliveries[0]
    headers = {name: value for name, value in delivery.headers.items() if name != missing}
    assert len(headers) == len(delivery.headers) - 1
    assert not signed_by_fal(fal.jwks, headers, delivery.body, clock.now())


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-fal-webhook-signature", "not-hex"),
        ("x-fal-webhook-timestamp", "12.5"),
        ("x-fal-webhook-request-id", "another-request"),
        ("x-fal-webhook-user-id", "another-user"),
    ],
)
def test_webhook_with_a_changed_header_is_refused(
    fal: FalProvider, fake: FakeFal, clock: ManualClock, header: str, value: str
) -> None:
    webhook_request(fake, fal)
    delivery = fake.deliveries[0]
    assert not signed_by_fal(
        fal.jwks, {**delivery.headers, header: value}, delivery.body, clock.now()
    )


def test_duplicate_webhooks_verify_alike(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    request_id = webhook_request(fake, fal, webhook_deliveries=2)
    first, second = fake.deliveries
    assert first.body == second.body
    for delivery in (first, second):
        assert signed_by_fal(fal.jwks, delivery.headers, delivery.body, clock.now())
        assert parse_webhook(delivery.body).request_id == request_id


def test_a_request_completed_by_polling_also_calls_its_webhook(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    request_id = fal.submit(request("flux-schnell", webhook_url=fake.webhook_sink_url))
    poll_until_done(fal, "flux-schnell", request_id)
    (delivery,) = fake.deliveries
    assert delivery.headers["x-fal-webhook-request-id"] == request_id
    assert signed_by_fal(fal.jwks, delivery.headers, delivery.body, clock.now())


def test_parse_webhook_refuses_what_is_not_a_fal_webhook() -> None:
    with pytest.raises(ValueError, match="JSON"):
        parse_webhook(b"not json")
    with pytest.raises(ValueError, match="request_id"):
        parse_webhook(b'{"status": "OK"}')
    with pytest.raises(ProviderUnavailable, match="no payload"):
        parse_webhook(b'{"request_id": "r", "status": "OK", "payload": null, "payload_error": "x"}')


# ------------------------------------------------------------------- JWKS


def test_jwks_are_cached_for_their_ttl(
    fake: FakeFal, http: httpx.Client, clock: ManualClock
) -> None:
    cache = JwksCache(fake.jwks_url, http)
    keys = cache.keys(clock.now())
    assert [key["kid"] for key in keys] == ["fake-fal-other", fake.kid]
    clock.advance(JWKS_TTL - timedelta(seconds=1))
    assert cache.keys(clock.now()) == keys
    assert fake.jwks_fetches == 1
    clock.advance(timedelta(seconds=1))
    cache.keys(clock.now())
    assert fake.jwks_fetches == 2


def test_jwks_fetch_failure_keeps_serving_held_keys(http: httpx.Client, clock: ManualClock) -> None:
    with FakeFal(clock) as server:
        cache = JwksCache(server.jwks_url, http)
        keys = cache.keys(clock.now())
    # The server is gone; the held keys still serve, even past their TTL.
    clock.advance(JWKS_TTL * 2)
    assert cache.keys(clock.now()) == keys
    empty = JwksCache(server.jwks_url, http)
    with pytest.raises(ProviderUnavailable, match="JWKS"):
        empty.keys(clock.now())


def test_a_rotated_key_is_picked_up_but_not_refetched_for_every_forgery(
    fal: FalProvider, fake: FakeFal, clock: ManualClock
) -> None:
    webhook_request(fake, fal)
    old = fake.deliveries[0]
    assert signed_by_fal(fal.jwks, old.headers, old.body, clock.now())
    assert fake.jwks_fetches == 1

    fake.rotate_key()
    new_id = webhook_request(fake, fal)
    new = fake.deliveries[1]
    assert new.headers["x-fal-webhook-request-id"] == new_id
    # Keys this fresh are not fetched again: a burst of bad webhooks costs nothing.
    assert not signed_by_fal(fal.jwks, new.headers, new.body, clock.now())
    assert fake.jwks_fetches == 1

    clock.advance(JWKS_MIN_REFRESH)
    resent = fake.signed_headers(new_id, new.body)
    assert signed_by_fal(fal.jwks, resent, new.body, clock.now())
    assert fake.jwks_fetches == 2

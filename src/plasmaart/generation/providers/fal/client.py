"""fal.ai: its queue API, our models' inputs, and its signed webhooks.

A request goes to ``POST {queue}/{endpoint}`` (``?fal_webhook=`` when the
worker wants a call back) with ``Authorization: Key …``; fal answers at once
with a request id. Status, result and cancel live under the endpoint's *app*,
``{queue}/{owner}/{app}/requests/{id}[/status|/cancel]``: ``fal-ai/flux`` for
``fal-ai/flux/schnell``. The worker stores only the request id, so these URLs
are derived from the model again on every call (as fal's own Python client
does for a stored id) rather than remembered from the submit answer; that is
what lets a restarted worker resume a job, and it never sends our key to a
host named by a response.

Our request becomes fal's input through ``FAL_INPUTS``, one row of data per
fal endpoint: which of our params it takes under the same name, how it sizes
its output (``image_size`` presets or ``aspect_ratio``), how it spells a
duration, whether it makes several images per request, and which of our params
it has no input for. An endpoint without a row gets a generic mapping.

fal's failures are mapped to ours: transport errors, 5xx, 429 and
``X-Fal-Retryable: true`` are ``ProviderUnavailable`` (retry later); any other
4xx, or an explicit ``X-Fal-Retryable: false``, is ``ProviderRejected`` with
fal's messages (a 422's ``detail`` list) joined. A request that completed with
an error answers its result URL with that error, so a model's refusal surfaces
from ``status()``.

Webhooks are signed with ED25519: the message is the request id, the user id,
the timestamp and the SHA-256 hex of the raw body, one per line, checked
against the public keys fal publishes as a JWKS document, within five minutes
of the timestamp. ``verify_webhook`` is the pure check; ``JwksCache`` keeps the
keys for a day. Recording each delivery once, and what it does, is
``plasmaart.generation.providers.fal.webhooks``' job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn
from urllib.parse import quote

from plasmaart.catalog import ModelSpec
from plasmaart.generation.providers.base import (
    ProviderError,
    ProviderOutput,
    ProviderRejected,
    ProviderRequest,
    ProviderState,
    ProviderStatus,
    ProviderUnavailable,
)

if TYPE_CHECKING:
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)


def _httpx() -> Any:
    """httpx, imported when fal is used: the client (with the command-line
    tools it imports, rich and pygments) costs a server that never calls fal
    some 20 MB, and the webhook route only needs this module's names."""
    import httpx

    return httpx


DEFAULT_BASE_URL: Final = "https://queue.fal.run"
DEFAULT_JWKS_URL: Final = "https://rest.alpha.fal.ai/.well-known/jwks.json"
WEBHOOK_TOLERANCE: Final = timedelta(minutes=5)
JWKS_TTL: Final = timedelta(hours=24)
# A webhook that fails with cached keys may be signed by a key fal has just
# rotated in; the keys are fetched again, but no more often than this, so
# forged webhooks cannot make us hammer fal's key endpoint.
JWKS_MIN_REFRESH: Final = timedelta(minutes=5)
# Generated videos are tens of MB; this only stops a runaway download.
MAX_DOWNLOAD_BYTES: Final = 1 << 30

WEBHOOK_HEADERS: Final = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)

# fal apps published under a namespace have one more path segment before the app.
_APP_NAMESPACES: Final = frozenset({"workflows", "comfy"})
_MAX_MESSAGE_CHARS: Final = 500

# Our aspect ratios as fal's ``image_size`` presets (the Flux family and others).
IMAGE_SIZE_PRESETS: Final[Mapping[str, str]] = {
    "1:1": "square_hd",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
}

# ----------------------------------------------------------------- model inputs


@dataclass(frozen=True)
class FalInputs:
    """How one fal endpoint takes our request.

    ``passes``: our params sent under the same name (``None``: all of them).
    ``size``: the input our ``aspect_ratio`` becomes (``image_size`` takes
    presets). ``duration``: the format of fal's ``duration`` input made from our
    ``duration_s`` (fal spells it ``"5"`` or ``"8s"``). ``ignores``: our params
    the endpoint has no input for; they are left out. Any other param is refused,
    so a catalog that drifts from this table fails loudly instead of silently.
    """

    passes: frozenset[str] | None = frozenset()
    size: Literal["image_size", "aspect_ratio"] | None = None
    duration: str | None = None
    num_images: bool = False
    image_input: str | None = None
    ignores: frozenset[str] = frozenset()
    # Where to send a request that comes without an input image, for endpoints
    # that edit an image and have a text-only sibling.
    without_image: str | None = None


def _image_model(*passes: str, size: Literal["image_size", "aspect_ratio"]) -> FalInputs:
    return FalInputs(passes=frozenset(passes), size=size, num_images=True)


def _video_model(
    *passes: str,
    size: Literal["aspect_ratio"] | None = "aspect_ratio",
    duration: str | None = "{}",
    image: bool = False,
    ignores: Iterable[str] = (),
) -> FalInputs:
    return FalInputs(
        passes=frozenset(passes),
        size=size,
        duration=duration,
        image_input="image_url" if image else None,
        ignores=frozenset(ignores),
    )


FAL_INPUTS: Final[Mapping[str, FalInputs]] = {
    "fal-ai/flux/schnell": _image_model("seed", "num_inference_steps", size="image_size"),
    "fal-ai/flux/dev": _image_model(
        "seed", "num_inference_steps", "guidance_scale", size="image_size"
    ),
    "fal-ai/flux-pro/v1.1": _image_model("seed", size="image_size"),
    "fal-ai/flux-pro/kontext": FalInputs(
        passes=frozenset({"seed", "guidance_scale"}),
        size="aspect_ratio",
        num_images=True,
        image_input="image_url",
        without_image="fal-ai/flux-pro/kontext/text-to-image",
    ),
    "fal-ai/imagen4/preview": _image_model("seed", "negative_prompt", size="aspect_ratio"),
    "fal-ai/bytedance/seedream/v3/text-to-image": _image_model(
        "seed", "guidance_scale", size="image_size"
    ),
    "fal-ai/stable-diffusion-v3-medium": _image_model(
        "seed", "negative_prompt", "num_inference_steps", "guidance_scale", size="image_size"
    ),
    "fal-ai/veo3": _video_model("seed", "negative_prompt", "generate_audio", duration="{}s"),
    "fal-ai/kling-video/v2.1/master/text-to-video": _video_model(
        "negative_prompt", ignores={"seed"}
    ),
    "fal-ai/kling-video/v2.1/master/image-to-video": _video_model(
        "negative_prompt", size=None, image=True, ignores={"seed"}
    ),
    "fal-ai/pixverse/v4.5/text-to-video": _video_model("seed", "negative_prompt"),
    "fal-ai/pixverse/v4.5/image-to-video": _video_model(
        "seed", "negative_prompt", size=None, image=True
    ),
    # Hailuo-02 Pro makes one fixed length at one resolution and takes no seed.
    "fal-ai/minimax/hailuo-02/pro/text-to-video": _video_model(
        size=None, duration=None, ignores={"aspect_ratio", "duration_s", "seed"}
    ),
    "fal-ai/minimax/hailuo-02/pro/image-to-video": _video_model(
        size=None, duration=None, image=True, ignores={"duration_s", "seed"}
    ),
    "fal-ai/bytedance/seedance/v1/pro/text-to-video": _video_model("seed"),
    "fal-ai/bytedance/seedance/v1/pro/image-to-video": _video_model("seed", size=None, image=True),
    # Wan Pro makes one fixed length and takes neither a ratio nor a negative prompt.
    "fal-ai/wan-pro/text-to-video": _video_model(
        "seed", size=None, duration=None, ignores={"aspect_ratio", "duration_s", "negative_prompt"}
    ),
    "fal-ai/wan-pro/image-to-video": _video_model(
        "seed", size=None, duration=None, image=True, ignores={"duration_s", "negative_prompt"}
    ),
}


def inputs_for(model: ModelSpec) -> FalInputs:
    """The row of ``FAL_INPUTS`` for ``model``'s endpoint, or a generic one:
    params by their own names, ``aspect_ratio`` as is, ``duration`` in seconds."""
    known = FAL_INPUTS.get(model.provider_model)
    if known is not None:
        return known
    return FalInputs(
        passes=None,
        size="aspect_ratio",
        duration="{}",
        num_images=model.kind == "text-to-image",
        image_input="image_url",
    )


def fal_arguments(request: ProviderRequest) -> tuple[str, dict[str, object]]:
    """The fal endpoint to submit ``request`` to, and its input."""
    model = request.model
    inputs = inputs_for(model)
    endpoint = model.provider_model
    image_ref = request.image_url
    if image_ref is None and request.image is not None:
        # fal fetches inputs by URL; some endpoints take a data URI instead.
        image_ref = _data_uri(request.image)
    if image_ref is None and model.inputs.image == "required":
        raise ProviderRejected(f"{model.id} needs an input image")
    if image_ref is None and inputs.without_image is not None:
        endpoint = inputs.without_image

    arguments: dict[str, object] = {"prompt": request.prompt}
    if inputs.num_images:
        arguments["num_images"] = request.num_outputs
    elif request.num_outputs != 1:
        raise ProviderRejected(f"fal endpoint {endpoint} makes one output per request")
    if image_ref is not None:
        if inputs.image_input is None:
            raise ProviderRejected(f"fal endpoint {endpoint} takes no input image")
        arguments[inputs.image_input] = image_ref

    for name, value in request.params.items():
        if name == "aspect_ratio" and inputs.size == "image_size":
            preset = IMAGE_SIZE_PRESETS.get(str(value))
            if preset is None:
                raise ProviderRejected(f"fal endpoint {endpoint} has no image size for {value!r}")
            arguments["image_size"] = preset
        elif name == "aspect_ratio" and inputs.size == "aspect_ratio":
            arguments["aspect_ratio"] = value
        elif name == "duration_s" and inputs.duration is not None:
            arguments["duration"] = inputs.duration.format(value)
        elif name in inputs.ignores:
            continue
        elif inputs.passes is None or name in inputs.passes:
            arguments[name] = value
        else:
            raise ProviderRejected(f"fal endpoint {endpoint} has no input for params.{name}")
    return endpoint, arguments


def _data_uri(data: bytes) -> str:
    return f"data:{_sniff_image_type(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _sniff_image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


# ------------------------------------------------------------------- results


def outputs_of(result: Mapping[str, object]) -> tuple[ProviderOutput, ...]:
    """The files in a fal result (``images`` list, ``image``, ``video`` or
    ``videos``), without the images fal's safety checker flagged: fal blanks
    those rather than leaving them out, and a blank picture is not a delivery."""
    files: list[Mapping[str, object]] = []
    images = result.get("images")
    if isinstance(images, list):
        flags = result.get("has_nsfw_concepts")
        flagged = flags if isinstance(flags, list) else []
        for index, image in enumerate(images):
            if isinstance(image, Mapping) and not (index < len(flagged) and flagged[index] is True):
                files.append(image)
    for single in ("image", "video"):
        value = result.get(single)
        if isinstance(value, Mapping):
            files.append(value)
    videos = result.get("videos")
    if isinstance(videos, list):
        files.extend(video for video in videos if isinstance(video, Mapping))
    return tuple(_output(file) for file in files if isinstance(file.get("url"), str))


def _output(file: Mapping[str, object]) -> ProviderOutput:
    url = str(file["url"])
    content_type = file.get("content_type")
    duration = file.get("duration")
    return ProviderOutput(
        content_type=content_type if isinstance(content_type, str) else _type_from_url(url),
        url=url,
        width=_int_or_none(file.get("width")),
        height=_int_or_none(file.get("height")),
        duration_s=float(duration)
        if isinstance(duration, int | float) and not isinstance(duration, bool)
        else None,
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _type_from_url(url: str) -> str:
    path = url.split("?", 1)[0].lower()
    for suffix, content_type in (
        (".png", "image/png"),
        (".jpg", "image/jpeg"),
        (".jpeg", "image/jpeg"),
        (".webp", "image/webp"),
        (".mp4", "video/mp4"),
        (".webm", "video/webm"),
    ):
        if path.endswith(suffix):
            return content_type
    return "application/octet-stream"


def _finished(result: Mapping[str, object]) -> ProviderStatus:
    outputs = outputs_of(result)
    if outputs:
        return ProviderStatus("succeeded", outputs=outputs)
    if isinstance(result.get("has_nsfw_concepts"), list) and result.get("images"):
        return ProviderStatus("failed", error="fal's safety checker withheld every output")
    return ProviderStatus("failed", error="fal returned no outputs")


def error_messages(body: object) -> list[str]:
    """fal's messages in an error body: each ``detail`` entry as ``field: msg``
    (``loc`` without its leading ``body``), a plain ``detail`` string, or ``error``."""
    if not isinstance(body, Mapping):
        return []
    detail = body.get("detail")
    if isinstance(detail, str) and detail:
        return [detail]
    messages: list[str] = []
    if isinstance(detail, list):
        for entry in detail:
            if isinstance(entry, str):
                messages.append(entry)
            elif isinstance(entry, Mapping) and entry.get("msg"):
                loc = entry.get("loc")
                where = [str(part) for part in loc] if isinstance(loc, list) else []
                if where[:1] == ["body"]:
                    where = where[1:]
                prefix = ".".join(where)
                messages.append(f"{prefix}: {entry['msg']}" if prefix else str(entry["msg"]))
    for fallback in ("error", "status"):
        if not messages and isinstance(body.get(fallback), str) and body[fallback]:
            messages.append(str(body[fallback]))
    return messages


# ------------------------------------------------------------------- webhooks


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    jwks_keys: Iterable[Mapping[str, object]],
    now: datetime,
) -> bool:
    """Whether ``body`` with ``headers`` is a webhook fal signed, sent within
    ``WEBHOOK_TOLERANCE`` of ``now``, by one of ``jwks_keys`` (JWKs as fal
    publishes them). ``body`` must be the raw bytes received."""
    received = {name.lower(): value for name, value in headers.items()}
    request_id, user_id, timestamp, signature_hex = (
        received.get(name, "") for name in WEBHOOK_HEADERS
    )
    if not (request_id and user_id and timestamp and signature_hex):
        return False
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs(now.timestamp() - int(timestamp)) > WEBHOOK_TOLERANCE.total_seconds():
        return False
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    message = "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()
    from cryptography.exceptions import InvalidSignature

    for key in public_keys(jwks_keys):
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def public_keys(jwks_keys: Iterable[Mapping[str, object]]) -> list[Ed25519PublicKey]:
    """The Ed25519 keys among ``jwks_keys``; other and malformed keys are skipped.
    (cryptography is imported here, on the first webhook: a server that does
    not use fal never loads it.)"""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: list[Ed25519PublicKey] = []
    for jwk in jwks_keys:
        x = jwk.get("x")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error):
            continue
    return keys


@dataclass(frozen=True)
class FalWebhook:
    """A webhook's body: the request it is about and where that request stands."""

    request_id: str
    status: ProviderStatus


def parse_webhook(body: bytes) -> FalWebhook:
    """Read a (verified) webhook body. ``status`` is ``succeeded`` with the
    outputs, or ``failed`` with fal's messages. Raises ``ValueError`` for a body
    that is not a fal webhook, and ``ProviderUnavailable`` when fal could not
    include the result (``payload_error``): poll ``status()`` for it instead."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError("a fal webhook body is JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("request_id"), str):
        raise ValueError("a fal webhook body names its request_id")
    request_id: str = data["request_id"]
    payload = data.get("payload")
    if data.get("status") == "OK":
        if not isinstance(payload, dict):
            raise ProviderUnavailable(
                f"fal webhook for {request_id} has no payload: {data.get('payload_error')}"
            )
        return FalWebhook(request_id, _finished(payload))
    if data.get("status") == "ERROR":
        messages = error_messages(payload) or error_messages(data) or ["fal reported an error"]
        return FalWebhook(request_id, ProviderStatus("failed", error=_joined(messages)))
    raise ValueError(f"unknown fal webhook status {data.get('status')!r}")


class JwksCache:
    """fal's webhook keys, fetched from ``url`` and kept for ``ttl``.

    If a fetch fails, the keys already held keep serving (a key endpoint that
    is briefly down must not reject every webhook); with none held it raises
    ``ProviderUnavailable``.
    """

    def __init__(
        self,
        url: str,
        http: httpx.Client,
        *,
        ttl: timedelta = JWKS_TTL,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self._http = http
        self._timeout = timeout
        self._lock = threading.Lock()
        self._keys: tuple[Mapping[str, object], ...] = ()
        self._fetched_at: datetime | None = None

    @property
    def fetched_at(self) -> datetime | None:
        return self._fetched_at

    def keys(self, now: datetime, *, refresh: bool = False) -> tuple[Mapping[str, object], ...]:
        with self._lock:
            fresh = self._fetched_at is not None and now - self._fetched_at < self.ttl
            if fresh and not refresh:
                return self._keys
            try:
                self._keys = self._fetch()
            except ProviderError:
                if self._keys:
                    log.warning(
                        "fal JWKS fetch failed; using the keys fetched at %s", self._fetched_at
                    )
                    return self._keys
                raise
            self._fetched_at = now
            return self._keys

    def _fetch(self) -> tuple[Mapping[str, object], ...]:
        try:
            response = self._http.get(self.url, timeout=self._timeout)
        except _httpx().HTTPError as exc:
            raise ProviderUnavailable(f"fal JWKS: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            _raise_for(response, "JWKS")
        keys = _json_object(response, "JWKS").get("keys")
        if not isinstance(keys, list):
            raise ProviderUnavailable("fal JWKS: the document has no keys list")
        return tuple(key for key in keys if isinstance(key, dict))


# ------------------------------------------------------------------- provider

_STATES: Final[Mapping[str, ProviderState]] = {"IN_QUEUE": "queued", "IN_PROGRESS": "running"}


class FalProvider:
    """fal.ai's queue API behind the ``Provider`` interface."""

    name = "fal"

    def __init__(
        self,
        key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        jwks_url: str = DEFAULT_JWKS_URL,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not key:
            raise ValueError("a fal API key is required")
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http if http is not None else _httpx().Client(timeout=timeout)
        self.jwks = JwksCache(jwks_url, self._http, timeout=timeout)

    def __repr__(self) -> str:
        return f"FalProvider(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP client if this provider made it."""
        if self._owns_http:
            self._http.close()

    # -- the Provider interface --------------------------------------------

    def submit(self, request: ProviderRequest) -> str:
        endpoint, arguments = fal_arguments(request)
        params = {"fal_webhook": request.webhook_url} if request.webhook_url else None
        response = self._call("POST", f"{self.base_url}/{endpoint}", "submit", arguments, params)
        data = _json_object(response, "submit")
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ProviderUnavailable("fal submit: the answer has no request_id")
        status_url = data.get("status_url")
        expected = self._request_url(request.model, request_id, "/status")
        if isinstance(status_url, str) and status_url != expected:
            # Resuming a job polls the derived URL; say so if fal points elsewhere.
            log.warning("fal status_url %s differs from the derived %s", status_url, expected)
        return request_id

    def status(self, model: ModelSpec, request_id: str) -> ProviderStatus:
        response = self._call("GET", self._request_url(model, request_id, "/status"), "status")
        data = _json_object(response, "status")
        state = data.get("status")
        if state == "IN_QUEUE":
            position = data.get("queue_position")
            # fal counts from 0 (next to run); our queue positions count from 1.
            ahead = (
                position if isinstance(position, int) and not isinstance(position, bool) else None
            )
            return ProviderStatus("queued", queue_position=None if ahead is None else ahead + 1)
        if isinstance(state, str) and state in _STATES:
            return ProviderStatus(_STATES[state])
        if state != "COMPLETED":
            raise ProviderUnavailable(f"fal status: unknown state {state!r}")
        return self._result(model, request_id)

    def cancel(self, model: ModelSpec, request_id: str) -> bool:
        response = self._request(
            "PUT", self._request_url(model, request_id, "/cancel"), "cancel", None, None
        )
        if response.is_success:
            return True
        body = _json_or_none(response)
        answer = body.get("status") if isinstance(body, dict) else None
        if response.status_code == 400 and answer == "ALREADY_COMPLETED":
            return False
        _raise_for(response, "cancel")

    def download(self, output: ProviderOutput) -> bytes:
        if output.data is not None:
            return output.data
        url = output.url or ""
        if url.startswith("data:"):
            return _decode_data_uri(url)
        if not url.startswith(("https://", "http://")):
            raise ProviderRejected(f"fal output has no downloadable URL: {url[:80]!r}")
        # Output files are public on fal's CDN: our key is not sent to it.
        try:
            with self._http.stream(
                "GET", url, timeout=self.timeout, follow_redirects=True
            ) as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response, "download")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise ProviderRejected(
                            f"fal output is larger than {MAX_DOWNLOAD_BYTES} bytes"
                        )
                    chunks.append(chunk)
        except _httpx().HTTPError as exc:
            raise ProviderUnavailable(f"fal download: {type(exc).__name__}: {exc}") from exc
        return b"".join(chunks)

    # -- webhooks ----------------------------------------------------------

    def webhook_verified(self, headers: Mapping[str, str], body: bytes, now: datetime) -> bool:
        """``verify_webhook`` with fal's keys from the cache; a failure with
        keys older than ``JWKS_MIN_REFRESH`` tries once more with fresh keys."""
        if verify_webhook(headers, body, self.jwks.keys(now), now):
            return True
        fetched_at = self.jwks.fetched_at
        if fetched_at is None or now - fetched_at < JWKS_MIN_REFRESH:
            return False
        return verify_webhook(headers, body, self.jwks.keys(now, refresh=True), now)

    # -- internals ---------------------------------------------------------

    def _result(self, model: ModelSpec, request_id: str) -> ProviderStatus:
        response = self._request("GET", self._request_url(model, request_id), "result", None, None)
        if _cancelled(response):
            return ProviderStatus("canceled")
        if not response.is_success:
            _raise_for(response, "result")
        return _finished(_json_object(response, "result"))

    def _request_url(self, model: ModelSpec, request_id: str, suffix: str = "") -> str:
        request = quote(request_id, safe="")
        return f"{self.base_url}/{app_id(model.provider_model)}/requests/{request}{suffix}"

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        body: Mapping[str, object] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        response = self._request(method, url, what, body, params)
        if not response.is_success:
            _raise_for(response, what)
        return response

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        body: Mapping[str, object] | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        try:
            return self._http.request(
                method,
                url,
                json=body,
                params=params,
                headers={"Authorization": f"Key {self._key}", "Accept": "application/json"},
                timeout=self.timeout,
            )
        except _httpx().HTTPError as exc:
            raise ProviderUnavailable(f"fal {what}: {type(exc).__name__}: {exc}") from exc


def app_id(endpoint_id: str) -> str:
    """The app an endpoint belongs to, under which its requests live:
    ``fal-ai/flux`` for ``fal-ai/flux/schnell``."""
    parts = [part for part in endpoint_id.split("/") if part]
    length = 3 if parts and parts[0] in _APP_NAMESPACES else 2
    if len(parts) < length:
        raise ProviderRejected(f"not a fal endpoint id: {endpoint_id!r}")
    return "/".join(parts[:length])


def _cancelled(response: httpx.Response) -> bool:
    # A request cancelled while it ran answers its result with fal's
    # ``client_cancelled`` request error (status 499).
    if response.status_code == 499:
        return True
    body = _json_or_none(response)
    error_type = body.get("error_type") if isinstance(body, dict) else None
    return "client_cancelled" in (response.headers.get("x-fal-error-type"), error_type)


def _raise_for(response: httpx.Response, what: str) -> NoReturn:
    status = response.status_code
    messages = error_messages(_json_or_none(response)) or [
        response.text.strip()[:_MAX_MESSAGE_CHARS] or response.reason_phrase
    ]
    text = f"fal {what}: HTTP {status}: {_joined(messages)}"
    retryable = response.headers.get("x-fal-retryable", "").strip().lower()
    if retryable == "true":
        raise ProviderUnavailable(text)
    if retryable == "false":
        raise ProviderRejected(text)
    if status >= 500 or status in (408, 429):
        raise ProviderUnavailable(text)
    raise ProviderRejected(text)


def _joined(messages: Sequence[str]) -> str:
    return "; ".join(message.strip() for message in messages if message.strip())


def _json_object(response: httpx.Response, what: str) -> dict[str, object]:
    try:
        data = response.json()
    except ValueError as exc:
        raise ProviderUnavailable(f"fal {what}: the answer is not JSON") from exc
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"fal {what}: the answer is not a JSON object")
    return data


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _decode_data_uri(uri: str) -> bytes:
    header, _, data = uri.partition(",")
    if not header.endswith(";base64"):
        raise ProviderRejected("fal output data URI is not base64")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ProviderRejected("fal output data URI is not valid base64") from exc

"""The sandbox provider: real PNG images and H.264 MP4 videos, made offline.

Like Stripe's test mode it behaves as a real provider would — a request id at
once, a realistic delay, outputs to download — and honours ``params.sandbox``
so that tests and demos can drive failures: ``{"fail": true}`` (the model
fails), ``{"delay_s": 5}`` (it takes that long), ``{"deliver": 2}`` (only 2 of
the requested outputs arrive) and ``{"fail_download": true}`` (it reports
success, but every download of an output is refused, as fal answers 404 for a
file that expired). ``sandbox_errors`` checks them; the submission runs it, so
a request the sandbox would refuse is refused before anything is held.

Its jobs live as small JSON files under one folder, so a worker that dies can
resume a job from its request id, from any process on the machine. Its delays
are real time (the platform's job clock), not the billing test clock.
Outputs are rendered when downloaded, deterministically from the prompt, the
seed and the output's index (``plasmaart.media.sandbox_render``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from plasmaart.catalog import ModelSpec
from plasmaart.clock import Clock
from plasmaart.generation.providers.base import (
    ProviderOutput,
    ProviderRejected,
    ProviderRequest,
    ProviderStatus,
)
from plasmaart.media import sandbox_render as render

# How long the sandbox takes when the request does not say: about what a fast
# hosted model takes, so the dashboard shows queued and running states.
DEFAULT_DELAY_S = {"text-to-image": 2.0, "text-to-video": 6.0, "image-to-video": 6.0}
MAX_DELAY_S = 600.0
URL_SCHEME = "sandbox://"
KEYS = ("fail", "delay_s", "deliver", "fail_download")


def sandbox_errors(sandbox: Mapping[str, object], num_outputs: int) -> list[tuple[str, str]]:
    """What is wrong with ``params.sandbox`` for a request of ``num_outputs``
    outputs, as (field, message) pairs; none if the sandbox would take it."""
    errors: list[tuple[str, str]] = []
    for key in sorted(set(sandbox) - set(KEYS)):
        errors.append((f"params.sandbox.{key}", f"unknown; the sandbox takes {', '.join(KEYS)}"))
    for flag in ("fail", "fail_download"):
        if flag in sandbox and not isinstance(sandbox[flag], bool):
            errors.append((f"params.sandbox.{flag}", "must be true or false"))
    if "delay_s" in sandbox:
        delay = sandbox["delay_s"]
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not (0 <= delay <= MAX_DELAY_S)
        ):
            errors.append(("params.sandbox.delay_s", f"must be 0 to {MAX_DELAY_S:g} seconds"))
    if "deliver" in sandbox:
        deliver = sandbox["deliver"]
        if num_outputs < 2:
            errors.append(
                ("params.sandbox.deliver", "needs num_outputs of 2 or more (some arrive, not all)")
            )
        elif (
            isinstance(deliver, bool)
            or not isinstance(deliver, int)
            or not (1 <= deliver < num_outputs)
        ):
            errors.append(
                ("params.sandbox.deliver", f"must be a whole number from 1 to {num_outputs - 1}")
            )
    return errors


@dataclass(frozen=True)
class _Job:
    kind: str
    prompt: str
    seed: int
    num_outputs: int
    aspect_ratio: str
    duration_s: int
    fail: bool
    submitted_at: datetime
    ready_at: datetime
    canceled: bool
    has_image: bool
    deliver: int  # outputs that arrive: num_outputs unless params.sandbox.deliver
    fail_download: bool


class SandboxProvider:
    name = "sandbox"

    def __init__(self, folder: Path, clock: Clock) -> None:
        self.folder = folder
        self.clock = clock
        folder.mkdir(parents=True, exist_ok=True)

    # -- the Provider interface --------------------------------------------

    def submit(self, request: ProviderRequest) -> str:
        sandbox = dict(request.sandbox)
        problems = sandbox_errors(sandbox, request.num_outputs)
        if problems:
            raise ProviderRejected("; ".join(f"{field}: {message}" for field, message in problems))
        delay = sandbox.get("delay_s", DEFAULT_DELAY_S[request.model.kind])
        delay_s = float(delay) if isinstance(delay, int | float) else 0.0  # checked above
        deliver = sandbox.get("deliver", request.num_outputs)
        if request.model.kind == "image-to-video" and request.image is None:
            raise ProviderRejected(f"{request.model.id} needs an input image")
        request_id = "sbx_" + secrets.token_hex(12)
        now = self.clock.now()
        seed = request.params.get("seed")
        job = {
            "kind": request.model.kind,
            "prompt": request.prompt,
            "seed": int(seed) if isinstance(seed, int) else _seed_of(request.generation_id),
            "num_outputs": request.num_outputs,
            "aspect_ratio": str(request.params.get("aspect_ratio", "16:9")),
            "duration_s": int(request.params.get("duration_s", 5)),  # type: ignore[call-overload]
            "fail": bool(sandbox.get("fail", False)),
            "deliver": deliver,
            "fail_download": bool(sandbox.get("fail_download", False)),
            "submitted_at": now.isoformat(),
            "ready_at": (now + timedelta(seconds=delay_s)).isoformat(),
            "canceled": False,
            "has_image": request.image is not None,
        }
        if request.image is not None:
            _write_atomically(self.folder / f"{request_id}.input", request.image)
        _write_atomically(self.folder / f"{request_id}.json", json.dumps(job).encode())
        return request_id

    def status(self, model: ModelSpec, request_id: str) -> ProviderStatus:  # noqa: ARG002
        job = self._load(request_id)
        now = self.clock.now()
        if job.canceled:
            return ProviderStatus("canceled")
        if now < job.ready_at:
            total = (job.ready_at - job.submitted_at).total_seconds()
            done = (now - job.submitted_at).total_seconds()
            return ProviderStatus("running", progress=round(done / total, 3) if total else None)
        if job.fail:
            return ProviderStatus(
                "failed", error="the sandbox failed this job on request (params.sandbox.fail)"
            )
        return ProviderStatus("succeeded", outputs=self._outputs(request_id, job))

    def cancel(self, model: ModelSpec, request_id: str) -> bool:  # noqa: ARG002
        job = self._load(request_id)
        if job.canceled:
            return True
        if self.clock.now() >= job.ready_at:
            return False
        path = self.folder / f"{request_id}.json"
        data = json.loads(path.read_bytes())
        data["canceled"] = True
        _write_atomically(path, json.dumps(data).encode())
        return True

    def download(self, output: ProviderOutput) -> bytes:
        if output.url is None or not output.url.startswith(URL_SCHEME):
            raise ProviderRejected(f"not a sandbox output: {output.url!r}")
        request_id, _, index_text = output.url.removeprefix(URL_SCHEME).partition("/")
        job = self._load(request_id)
        if job.fail_download:
            # As fal answers for a file past its expiry: refused, not worth a retry.
            raise ProviderRejected(
                f"sandbox download {output.url}: HTTP 404: the file is gone "
                "(params.sandbox.fail_download)"
            )
        index = int(index_text)
        seed = job.seed + index
        if job.kind == "text-to-image":
            width, height = render.size_for(job.aspect_ratio, "image")
            return render.render_image(job.prompt, seed, width, height)
        source = self._source(request_id, job)
        width, height = _video_size(job, source)
        return render.render_video(
            job.prompt, seed, width, height, job.duration_s, source_image=source
        )

    # -- internals ---------------------------------------------------------

    def _load(self, request_id: str) -> _Job:
        if not request_id.startswith("sbx_") or not request_id[4:].isalnum():
            raise ProviderRejected(f"unknown sandbox request {request_id!r}")
        try:
            data: dict[str, Any] = json.loads((self.folder / f"{request_id}.json").read_bytes())
        except FileNotFoundError:
            raise ProviderRejected(f"unknown sandbox request {request_id!r}") from None
        return _Job(
            kind=data["kind"],
            prompt=data["prompt"],
            seed=int(data["seed"]),
            num_outputs=int(data["num_outputs"]),
            aspect_ratio=data["aspect_ratio"],
            duration_s=int(data["duration_s"]),
            fail=bool(data["fail"]),
            submitted_at=datetime.fromisoformat(data["submitted_at"]),
            ready_at=datetime.fromisoformat(data["ready_at"]),
            canceled=bool(data["canceled"]),
            has_image=bool(data.get("has_image", False)),
            deliver=int(data.get("deliver", data["num_outputs"])),
            fail_download=bool(data.get("fail_download", False)),
        )

    def _source(self, request_id: str, job: _Job) -> bytes | None:
        return (self.folder / f"{request_id}.input").read_bytes() if job.has_image else None

    def _outputs(self, request_id: str, job: _Job) -> tuple[ProviderOutput, ...]:
        if job.kind == "text-to-image":
            width, height = render.size_for(job.aspect_ratio, "image")
            return tuple(
                ProviderOutput(
                    "image/png", url=f"{URL_SCHEME}{request_id}/{index}", width=width, height=height
                )
                for index in range(job.deliver)
            )
        width, height = _video_size(job, self._source(request_id, job))
        return tuple(
            ProviderOutput(
                "video/mp4",
                url=f"{URL_SCHEME}{request_id}/{index}",
                width=width,
                height=height,
                duration_s=float(job.duration_s),
            )
            for index in range(job.deliver)
        )


def _video_size(job: _Job, source: bytes | None) -> tuple[int, int]:
    if job.kind == "image-to-video" and source is not None:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(source)) as image:
            return render.size_for_source(*image.size)
    return render.size_for(job.aspect_ratio, "video")


def _seed_of(generation_id: str) -> int:
    return int.from_bytes(hashlib.sha256(generation_id.encode()).digest()[:4], "big")


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + f".{secrets.token_hex(4)}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)

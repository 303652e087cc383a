"""The provider interface the worker drives.

A provider takes a request, hands back its own request id at once (the worker
stores it before waiting, so a worker that dies can resume the job from it),
answers status questions, cancels when it still can, and lets the worker
download the outputs. Failures are classed by what the worker should do:
``ProviderUnavailable`` (transport errors, 5xx: retry with backoff) and
``ProviderRejected`` (4xx: the input is wrong; fail at once, never retry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from plasmaart.catalog import ModelSpec

ProviderState = Literal["queued", "running", "succeeded", "failed", "canceled"]


class ProviderError(Exception):
    """Something went wrong talking to a provider."""


class ProviderUnavailable(ProviderError):
    """Transport error or provider-side 5xx: try again later."""


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx): retrying cannot help."""


@dataclass(frozen=True)
class ProviderRequest:
    generation_id: str
    model: ModelSpec
    prompt: str
    num_outputs: int
    # Validated against the model's params; ``sandbox`` taken out.
    params: Mapping[str, object] = field(default_factory=dict)
    # Image-to-video (and image edit) input: a URL the provider can fetch,
    # and/or the bytes for providers that take them inline.
    image_url: str | None = None
    image: bytes | None = None
    # ``params.sandbox``: only the sandbox honours it.
    sandbox: Mapping[str, object] = field(default_factory=dict)
    webhook_url: str | None = None


@dataclass(frozen=True)
class ProviderOutput:
    content_type: str
    url: str | None = None
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class ProviderStatus:
    state: ProviderState
    outputs: tuple[ProviderOutput, ...] = ()
    error: str | None = None
    queue_position: int | None = None
    progress: float | None = None


class Provider(Protocol):
    name: str

    def submit(self, request: ProviderRequest) -> str:
        """Queue the request at the provider; its request id."""
        ...

    def status(self, model: ModelSpec, request_id: str) -> ProviderStatus: ...

    def cancel(self, model: ModelSpec, request_id: str) -> bool:
        """True if the provider cancelled it; False if it had already finished."""
        ...

    def download(self, output: ProviderOutput) -> bytes: ...

"""fal.ai's queue API behind the ``Provider`` interface.

A request goes to ``POST {queue}/{endpoint}`` (``?fal_webhook=`` when the
worker wants a call back) with ``Authorization: Key …``; fal answers at once
with a request id. Status, result and cancel live under the endpoint's *app*,
``{queue}/{owner}/{app}/requests/{id}[/status|/cancel]``: ``fal-ai/flux`` for
``fal-ai/flux/schnell``. The worker stores only the request id, so these URLs
are derived from the model again on every call (as fal's own Python client
does for a stored id) rather than remembered from the submit answer; that is
what lets a restarted worker resume a job, and it never sends our key to a
host named by a response.

What each model takes is ``arguments``; how fal's answers and failures read
as ours is ``responses`` and ``results``. A request that completed with an
error answers its result URL with that error, so a model's refusal surfaces
from ``status()``. The provider also holds fal's webhook keys (``jwks``, a
``verification.JwksCache`` sharing its HTTP client) for the webhook route.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from plasmaart.catalog import ModelSpec
from plasmaart.generation.providers.base import (
    ProviderOutput,
    ProviderRejected,
    ProviderRequest,
    ProviderState,
    ProviderStatus,
    ProviderUnavailable,
)
from plasmaart.generation.providers.fal.arguments import fal_arguments
from plasmaart.generation.providers.fal.responses import (
    httpx_module,
    json_object,
    json_or_none,
    raise_for,
)
from plasmaart.generation.providers.fal.results import finished
from plasmaart.generation.providers.fal.verification import DEFAULT_JWKS_URL, JwksCache

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://queue.fal.run"
# Generated videos are tens of MB; this only stops a runaway download.
MAX_DOWNLOAD_BYTES: Final = 1 << 30
# fal apps published under a namespace have one more path segment before the app.
_APP_NAMESPACES: Final = frozenset({"workflows", "comfy"})
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
        self._http = http if http is not None else httpx_module().Client(timeout=timeout)
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
        data = json_object(response, "submit")
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
        data = json_object(response, "status")
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
        body = json_or_none(response)
        answer = body.get("status") if isinstance(body, dict) else None
        if response.status_code == 400 and answer == "ALREADY_COMPLETED":
            return False
        raise_for(response, "cancel")

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
                    raise_for(response, "download")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise ProviderRejected(
                            f"fal output is larger than {MAX_DOWNLOAD_BYTES} bytes"
                        )
                    chunks.append(chunk)
        except httpx_module().InvalidURL as exc:
            raise ProviderRejected(f"fal output URL is not valid: {exc}") from exc
        except httpx_module().HTTPError as exc:
            raise ProviderUnavailable(f"fal download: {type(exc).__name__}: {exc}") from exc
        return b"".join(chunks)

    # -- internals ---------------------------------------------------------

    def _result(self, model: ModelSpec, request_id: str) -> ProviderStatus:
        response = self._request("GET", self._request_url(model, request_id), "result", None, None)
        if _cancelled(response):
            return ProviderStatus("canceled")
        if not response.is_success:
            raise_for(response, "result")
        return finished(json_object(response, "result"))

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
            raise_for(response, what)
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
        except httpx_module().HTTPError as exc:
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
    body = json_or_none(response)
    error_type = body.get("error_type") if isinstance(body, dict) else None
    return "client_cancelled" in (response.headers.get("x-fal-error-type"), error_type)


def _decode_data_uri(uri: str) -> bytes:
    header, _, data = uri.partition(",")
    if not header.endswith(";base64"):
        raise ProviderRejected("fal output data URI is not base64")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ProviderRejected("fal output data URI is not valid base64") from exc

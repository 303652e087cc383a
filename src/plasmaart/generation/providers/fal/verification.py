"""fal's webhooks as they arrive: whether fal signed them, and what they say.

Webhooks are signed with ED25519: the message is the request id, the user id,
the timestamp and the SHA-256 hex of the raw body, one per line, checked
against the public keys fal publishes as a JWKS document, within five minutes
of the timestamp. ``verify_webhook`` is the pure check; ``JwksCache`` keeps the
keys for a day, and ``signed_by_fal`` checks with them, fetching them again
when a key fal rotated in fails. ``parse_webhook`` reads a verified body.
Recording each delivery once, and what it does, is
``plasmaart.generation.providers.fal.webhooks``' job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from plasmaart.generation.providers.base import ProviderError, ProviderStatus, ProviderUnavailable
from plasmaart.generation.providers.fal.responses import (
    error_messages,
    httpx_module,
    joined,
    json_object,
    raise_for,
)
from plasmaart.generation.providers.fal.results import finished

if TYPE_CHECKING:
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

DEFAULT_JWKS_URL: Final = "https://rest.alpha.fal.ai/.well-known/jwks.json"
WEBHOOK_TOLERANCE: Final = timedelta(minutes=5)
JWKS_TTL: Final = timedelta(hours=24)
# A webhook that fails with cached keys may be signed by a key fal has just
# rotated in; the keys are fetched again, but no more often than this, so
# forged webhooks cannot make us hammer fal's key endpoint.
JWKS_MIN_REFRESH: Final = timedelta(minutes=5)

WEBHOOK_HEADERS: Final = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)


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
        except httpx_module().HTTPError as exc:
            raise ProviderUnavailable(f"fal JWKS: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise_for(response, "JWKS")
        keys = json_object(response, "JWKS").get("keys")
        if not isinstance(keys, list):
            raise ProviderUnavailable("fal JWKS: the document has no keys list")
        return tuple(key for key in keys if isinstance(key, dict))


def signed_by_fal(jwks: JwksCache, headers: Mapping[str, str], body: bytes, now: datetime) -> bool:
    """``verify_webhook`` with fal's keys from ``jwks``; a failure with keys
    older than ``JWKS_MIN_REFRESH`` tries once more with fresh keys."""
    if verify_webhook(headers, body, jwks.keys(now), now):
        return True
    fetched_at = jwks.fetched_at
    if fetched_at is None or now - fetched_at < JWKS_MIN_REFRESH:
        return False
    return verify_webhook(headers, body, jwks.keys(now, refresh=True), now)


@dataclass(frozen=True)
class WebhookBody:
    """A webhook's body: the request it is about and where that request stands."""

    request_id: str
    status: ProviderStatus


def parse_webhook(body: bytes) -> WebhookBody:
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
        return WebhookBody(request_id, finished(payload))
    if data.get("status") == "ERROR":
        messages = error_messages(payload) or error_messages(data) or ["fal reported an error"]
        return WebhookBody(request_id, ProviderStatus("failed", error=joined(messages)))
    raise ValueError(f"unknown fal webhook status {data.get('status')!r}")

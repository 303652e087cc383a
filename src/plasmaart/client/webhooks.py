"""Verifying the webhooks PlasmaArt sends (docs/webhooks.md, "Signatures").

PlasmaArt signs each delivery as the Standard Webhooks specification says:
three headers, ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``, a space-separated list of ``v1,<base64>`` signatures,
each the HMAC-SHA256 of ``"<id>.<timestamp>.<body>"`` keyed with the bytes a
``whsec_`` secret stands for (the base64 after the prefix). During a
secret's rotation both secrets sign, so a receiver that knows either one
accepts the delivery::

    from plasmaart.client import WebhookVerificationError, verify_webhook

    try:
        event = verify_webhook(request.body, request.headers, "whsec_…")
    except WebhookVerificationError:
        return 400
    handle(event["type"], event["data"])  # idempotently, by request.headers["webhook-id"]

Nothing of the server is imported: receivers install only the client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from plasmaart.client.errors import PlasmaArtError

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
DEFAULT_TOLERANCE = timedelta(minutes=5)
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

__all__ = ["DEFAULT_TOLERANCE", "WebhookVerificationError", "sign", "verify"]


class WebhookVerificationError(PlasmaArtError):
    """A delivery that is not provably PlasmaArt's, or not fresh: answer it
    with a 4xx and do not act on it."""


def _key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a whsec_ secret: expected whsec_ and base64") from None
    if not key:
        raise ValueError("not a whsec_ secret: it is empty")
    return key


def sign(secret: str, message_id: str, timestamp: int, payload: bytes) -> str:
    """The ``v1,<base64>`` signature ``secret`` makes of ``payload`` sent as
    ``message_id`` at ``timestamp`` (for tests of a receiver)."""
    signed = f"{message_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | list[str],
    *,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The event a delivery carries (``{"type", "timestamp", "data"}``), once
    its signature is checked against ``secret`` (or any of a list of
    secrets) and its timestamp is within ``tolerance`` of ``now``.

    ``payload`` is the raw body, exactly as received; ``headers`` any mapping
    (names in any case). Raises ``WebhookVerificationError`` for a missing
    header, a timestamp too old or too new, or no matching signature."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    sent = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in HEADERS if not sent.get(name)]
    if missing:
        raise WebhookVerificationError(f"missing header {missing[0]}")
    message_id, stamp, signatures = (sent[name].strip() for name in HEADERS)
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time") from None
    now = now or datetime.now(UTC)
    try:
        sent_at = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        raise WebhookVerificationError("webhook-timestamp is out of range") from None
    if sent_at < now - tolerance:
        raise WebhookVerificationError("the delivery is too old (webhook-timestamp)")
    if sent_at > now + tolerance:
        raise WebhookVerificationError("the delivery is from the future (webhook-timestamp)")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("no secret to verify with")
    expected = [sign(s, message_id, timestamp, body).encode() for s in secrets]
    offered = [s.encode() for s in signatures.split(" ") if s.startswith("v1,")]
    matched = False
    for candidate in offered:
        for known in expected:
            # Every pair is compared, in constant time: no early exit tells
            # an attacker how close a guess came.
            matched |= hmac.compare_digest(candidate, known)
    if not matched:
        raise WebhookVerificationError("no valid signature (webhook-signature)")
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event

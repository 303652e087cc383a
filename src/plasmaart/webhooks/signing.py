"""Standard Webhooks signatures (docs/webhooks.md, "Signatures").

A secret is ``whsec_`` followed by the base64 of 32 random bytes; the HMAC
key is those bytes. A delivery carries three headers:

* ``webhook-id``: the event's id (the same on every retry and replay: the
  receiver's idempotency key);
* ``webhook-timestamp``: the attempt's Unix time in seconds;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``,
  one per secret that signs (space-separated: during a rotation's overlap,
  the new secret's and the old one's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as random

PREFIX = "whsec_"
KEY_BYTES = 32


def new_secret() -> str:
    """A fresh ``whsec_`` secret."""
    return PREFIX + base64.b64encode(random.token_bytes(KEY_BYTES)).decode()


def key_of(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_of(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of a delivery signed by every secret in ``secrets``."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets),
    }

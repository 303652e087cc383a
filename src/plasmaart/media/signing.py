"""Expiring signed download URLs: whoever holds one may fetch that one path until it expires.

A signed URL is the path plus ``expires`` (Unix seconds) and ``signature``, the
hex HMAC-SHA256 of the path and the expiry under the platform's secret.
Changing the path, the expiry or the signature, or waiting past the expiry,
makes ``verify`` answer False. ``sign_url`` and ``verify`` are pure functions
of their arguments (time included); ``signing_secret`` finds the secret: the
operator's ``PLASMAART_SECRET_KEY``, or one generated on first use and kept in
``<var_dir>/secret_key`` so that links outlive restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from plasmaart.config import ConfigError, Settings

SECRET_FILE_NAME = "secret_key"  # noqa: S105 - the file's name, not its content
MIN_SECRET_LENGTH = 32

# Versioned, so that a future format can never verify under this one.
_CONTEXT = b"plasmaart-signed-url-v1"
# Printable ASCII without space, "?" or "#": the path goes into the URL as it
# is, and the newline that separates the signed fields cannot occur in it.
_SIGNABLE_PATH = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_CANONICAL_EXPIRY = re.compile(r"0|[1-9][0-9]{0,17}")


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_LENGTH} bytes")


def _check_aware(moment: datetime, name: str) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _signature(path: str, expires: int, secret: bytes) -> str:
    message = b"\n".join((_CONTEXT, path.encode("ascii"), str(expires).encode("ascii")))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_url(path: str, expires_at: datetime, secret: bytes) -> str:
    """``path?expires=<unix>&signature=<hex>``, valid until ``expires_at``.

    ``path`` is the URL path the server will see (``/v1/outputs/out_x/content``),
    without query or fragment.
    """
    _check_secret(secret)
    _check_aware(expires_at, "expires_at")
    if not _SIGNABLE_PATH.fullmatch(path):
        raise ValueError(f"not a signable path (absolute, ASCII, no query): {path!r}")
    expires = int(expires_at.timestamp())
    query = urlencode({"expires": expires, "signature": _signature(path, expires, secret)})
    return f"{path}?{query}"


def verify(path: str, expires: int | str, signature: str, secret: bytes, now: datetime) -> bool:
    """Whether ``signature`` was made by ``sign_url`` for this path and expiry,
    and the expiry is still ahead of ``now``.

    ``expires`` and ``signature`` may be the raw query parameters; anything
    malformed is simply not valid.
    """
    _check_secret(secret)
    _check_aware(now, "now")
    if isinstance(expires, str):
        # Canonical decimal only, and short: int() of a long string is slow.
        if not _CANONICAL_EXPIRY.fullmatch(expires):
            return False
        expires = int(expires)
    if not _SIGNABLE_PATH.fullmatch(path) or not _SIGNATURE.fullmatch(signature):
        return False
    if now.timestamp() >= expires:
        return False
    return hmac.compare_digest(_signature(path, expires, secret), signature)


def signing_secret(settings: Settings) -> bytes:
    """The secret that signs download URLs; call once at start-up.

    ``PLASMAART_SECRET_KEY`` when set. Otherwise the content of
    ``<var_dir>/secret_key``, created on first use with a random value and
    permissions 0600. Several machines serving the same URLs must share the
    secret, so they set ``PLASMAART_SECRET_KEY``.
    """
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value()
        if len(value) < MIN_SECRET_LENGTH:
            # The length only: the value must not reach logs.
            raise ConfigError(
                f"PLASMAART_SECRET_KEY: must be at least {MIN_SECRET_LENGTH} characters"
                f" (got {len(value)})"
            )
        return value.encode("utf-8")
    return _persisted_secret(settings.var_dir / SECRET_FILE_NAME)


def _read_secret(path: Path) -> bytes:
    value = path.read_text(encoding="utf-8").strip()
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{path}: the signing secret is shorter than {MIN_SECRET_LENGTH} characters;"
            " delete the file to generate a new one, or set PLASMAART_SECRET_KEY"
        )
    return value.encode("utf-8")


def _persisted_secret(path: Path) -> bytes:
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole to a private temporary file, then linked into place: a
    # process starting at the same moment never reads a half-written secret,
    # and if two race, os.link lets exactly one win and both use its value.
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            temp.write(secrets.token_hex(32) + "\n")
            temp.flush()
            os.fsync(temp.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp_name, path)
    finally:
        os.unlink(temp_name)
    return _read_secret(path)

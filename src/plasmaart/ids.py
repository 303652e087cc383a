"""Identifiers: a short type prefix and a time-ordered random part (like ULIDs).

Time-ordered ids keep B-tree inserts local and make ``ORDER BY id`` roughly
chronological, while the 80 random bits make them unguessable.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis, 10)}{_encode(secrets.randbits(80), 16)}"


def first_id_at(prefix: str, instant: datetime) -> str:
    """The smallest id ``new_id(prefix)`` can make at ``instant`` or later:
    ``id >= first_id_at(prefix, t)`` is a primary-key range of the rows made
    since ``t`` (ids use the system clock, not the sandbox test clock)."""
    millis = int(instant.timestamp() * 1000)
    return f"{prefix}_{_encode(max(millis, 0), 10)}{_ALPHABET[0] * 16}"

"""Links that leave the server (in mail, webhooks, signed links), built from
``PLASMAART_PUBLIC_URL`` (``Settings.public_base_url``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode


@dataclass(frozen=True)
class Links:
    # The public address, without a trailing slash: https://art.example.com
    base: str

    def url(self, path: str, **query: str) -> str:
        """``base`` + ``path`` (which starts with a /), with ``query`` encoded:
        a token travels as ``?token=...``."""
        if not path.startswith("/"):
            raise ValueError(f"a path starts with a slash: {path!r}")
        return self.base + path + ("?" + urlencode(query) if query else "")

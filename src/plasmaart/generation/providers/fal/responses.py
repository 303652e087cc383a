"""How fal's HTTP answers are read: JSON bodies, and fal's failures as ours.

Transport errors, 5xx, 408, 429 and ``X-Fal-Retryable: true`` are
``ProviderUnavailable`` (retry later); any other 4xx, or an explicit
``X-Fal-Retryable: false``, is ``ProviderRejected`` with fal's messages (a
422's ``detail`` list) joined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from plasmaart.generation.providers.base import ProviderRejected, ProviderUnavailable

if TYPE_CHECKING:
    import httpx

_MAX_MESSAGE_CHARS: Final = 500


def httpx_module() -> Any:
    """httpx, imported when fal is used: the client (with the command-line
    tools it imports, rich and pygments) costs a server that never calls fal
    some 20 MB, and the webhook route only needs the fal package's names."""
    import httpx

    return httpx


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


def joined(messages: Sequence[str]) -> str:
    return "; ".join(message.strip() for message in messages if message.strip())


def raise_for(response: httpx.Response, what: str) -> NoReturn:
    """The error a failed answer to ``what`` (submit, status, ...) is for us."""
    status = response.status_code
    messages = error_messages(json_or_none(response)) or [
        response.text.strip()[:_MAX_MESSAGE_CHARS] or response.reason_phrase
    ]
    text = f"fal {what}: HTTP {status}: {joined(messages)}"
    retryable = response.headers.get("x-fal-retryable", "").strip().lower()
    if retryable == "true":
        raise ProviderUnavailable(text)
    if retryable == "false":
        raise ProviderRejected(text)
    if status >= 500 or status in (408, 429):
        raise ProviderUnavailable(text)
    raise ProviderRejected(text)


def json_object(response: httpx.Response, what: str) -> dict[str, object]:
    try:
        data = response.json()
    except ValueError as exc:
        raise ProviderUnavailable(f"fal {what}: the answer is not JSON") from exc
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"fal {what}: the answer is not a JSON object")
    return data


def json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None

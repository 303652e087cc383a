"""Plain text around ``generate`` for command lines and scripts: reading
``key=value`` model parameters, progress lines (no terminal control codes,
so a log file or a CI job shows them as well as a terminal), and one line
saying why the server could not be reached."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TextIO

import httpx

from plasmaart.client.errors import TransportError
from plasmaart.client.models import Generation


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``["seed=7", 'sandbox={"delay_s": 0}', "negative_prompt=blur"]`` as a
    dict: a value is JSON when it parses as JSON, else the text itself (so
    ``style=7`` is the number 7; write ``style="7"`` for the text). Raises
    ValueError on a pair without ``=`` or with an empty key."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"--param {pair!r} is not key=value")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        params[key] = value
    return params


def describe(generation: Generation) -> str:
    """One line on where a generation stands."""
    text = f"{generation.id} {generation.status}"
    if generation.status == "queued" and generation.queue_position is not None:
        text += f" (position {generation.queue_position} in the queue)"
    if generation.error is not None:
        text += f": {generation.error.message} ({generation.error.code})"
    return text


def why_unreachable(error: TransportError) -> str:
    """In a few words, why no answer came: ``connection refused``, ``host
    not found``, ``timed out``..."""
    cause = error.__cause__
    text = str(cause).lower()
    if isinstance(cause, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(cause, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "resolution" in text:
            return "host not found"
        if "ssl" in text or "certificate" in text:
            return f"TLS failed: {cause}"
        return f"could not connect: {cause}" if str(cause) else "could not connect"
    if isinstance(cause, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(cause, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "the connection dropped"
    return type(cause).__name__ if cause is not None else str(error)


def describe_unreachable(url: str, error: TransportError, waiting_for: str | None = None) -> str:
    """One line for a command that got no answer from the server at ``url``:
    what was tried, why it failed and what to do; with ``waiting_for`` (a
    generation already submitted), that it carries on on the server."""
    why = why_unreachable(error)
    if waiting_for is not None:
        return (
            f"lost the PlasmaArt server at {url} ({why}) while waiting for {waiting_for}; "
            "it carries on on the server"
        )
    return (
        f"cannot reach the PlasmaArt server at {url} ({why}): start it with "
        "`plasmaart serve`, or point --url (PLASMAART_URL) at it"
    )


class TextProgress:
    """An ``on_update`` for ``generate`` that writes a line per change, with
    the seconds elapsed, and, while nothing changes, a "still ..." line every
    ``every`` seconds (from a thread, while used as a context manager)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every <= 0:
            raise ValueError("every must be positive")
        self.stream = stream
        self.every = every
        self.last: Generation | None = None
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, generation: Generation) -> None:
        with self._lock:
            self.last = generation
            self._write(describe(generation))

    def elapsed(self) -> float:
        return self._clock() - self._started

    def _write(self, text: str) -> None:
        self.stream.write(f"[{self.elapsed():6.1f}s] {text}\n")
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                if self.last is not None and not self.last.finished:
                    self._write(f"{self.last.id} still {self.last.status}")

    def __enter__(self) -> TextProgress:
        self._ticker = threading.Thread(target=self._tick, name="plasmaart-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()

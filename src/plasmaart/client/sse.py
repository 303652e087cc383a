"""Reading ``/v1/events``: the Server-Sent Events wire format, and when to
reconnect after the stream drops (with ``Last-Event-ID``, a bounded number
of times in a row)."""

from __future__ import annotations

import json
from typing import Any

from plasmaart.client.errors import TransportError
from plasmaart.client.models import Event
from plasmaart.client.retries import RetryPolicy


class EventParser:
    """Turns the stream's lines into events (comments and heartbeats are
    skipped), keeping the last event id and the server's reconnect hint."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry_s: float | None = None
        # An id counts once its event is complete (as browsers do it).
        self._id: str | None = None
        self._type: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """One line without its line break; an event when a blank line ends one."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_s = int(value) / 1000
        return None

    def discard_partial(self) -> None:
        """Forget an event cut off by a dropped connection."""
        self._type, self._data, self._id = None, [], self.last_event_id

    def _dispatch(self) -> Event | None:
        kind, lines = self._type or "message", self._data
        self._type, self._data = None, []
        self.last_event_id = self._id
        if not lines:
            return None
        text = "\n".join(lines)
        data: Any
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return Event(self.last_event_id, kind, data)


class Reconnection:
    """How a dropped stream resumes: each drop without an event since the
    last one counts, and after ``max_reconnects`` of them the error is raised."""

    def __init__(self, policy: RetryPolicy, max_reconnects: int, last_event_id: str | None) -> None:
        if max_reconnects < 0:
            raise ValueError("max_reconnects must be at least 0")
        self.policy = policy
        self.max_reconnects = max_reconnects
        self.parser = EventParser()
        self.parser.last_event_id = last_event_id
        self.parser.discard_partial()
        self._drops = 0

    def headers(self) -> dict[str, str]:
        """For a new connection (which starts no event half-way)."""
        self.parser.discard_partial()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.parser.last_event_id is not None:
            headers["Last-Event-ID"] = self.parser.last_event_id
        return headers

    def feed(self, line: str) -> Event | None:
        event = self.parser.feed(line)
        if event is not None:
            self._drops = 0
        return event

    def after_drop(self, error: Exception | None) -> float:
        """Seconds to wait before reconnecting; raises once out of reconnects.
        ``error`` is None when the server ended the stream itself."""
        if self._drops >= self.max_reconnects:
            message = "the event stream dropped" if error is None else str(error)
            raise TransportError(
                f"{message} (after {self._drops} reconnects)" if self._drops else message
            ) from error
        delay = self.policy.backoff_delay(self._drops)
        self._drops += 1
        # The server's retry hint is the least it wants us to wait.
        return max(delay, self.parser.retry_s or 0.0)

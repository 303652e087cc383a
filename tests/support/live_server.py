"""A real HTTP server for tests that need one (streams, the Python client):
the app served by uvicorn on a free local port in a thread, and a reader of
``text/event-stream`` frames. Every wait is bounded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from tests.support.pgserver import free_port

WAIT_S = 5.0  # the longest any single expected event may take


@contextmanager
def live_server(platform: Platform, *, port: int | None = None) -> Iterator[str]:
    """Serve ``platform`` with uvicorn on ``port`` (a free local port by
    default), in a thread. A platform whose mail links must reach this
    server is built with ``public_url`` naming the port first."""
    app = create_app(platform, embedded_worker=False)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port or free_port(),
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop within 10 s"


@dataclass(frozen=True)
class Frame:
    id: str | None = None
    event: str | None = None
    data: Any = None
    retry: int | None = None
    comment: str | None = None

    @property
    def is_ping(self) -> bool:
        return self.comment == "ping" and self.event is None


class EventStream:
    """Frames of a ``text/event-stream``, read with httpx's read timeout."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def frame(self) -> Frame:
        fields: dict[str, Any] = {}
        for line in self._lines:
            if line == "":
                if fields:
                    return Frame(**fields)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                fields["comment"] = value
            elif name == "data":
                fields["data"] = json.loads(value)
            elif name == "retry":
                fields["retry"] = int(value)
            else:
                fields[name] = value
        raise AssertionError("the event stream ended")

    def next_event(self, timeout: float = WAIT_S) -> Frame:
        """The next frame that is not a heartbeat."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.frame()
            if not frame.is_ping:
                return frame
        raise AssertionError(f"no event within {timeout} s")

    def events_during(self, seconds: float) -> list[Frame]:
        """Every non-heartbeat frame that arrives within ``seconds``."""
        seen: list[Frame] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frame = self.frame()
            if not frame.is_ping:
                seen.append(frame)
        return seen


@contextmanager
def open_stream(
    base_url: str, headers: dict[str, str], *, last_event_id: str | None = None
) -> Iterator[EventStream]:
    sent = dict(headers)
    if last_event_id is not None:
        sent["Last-Event-ID"] = last_event_id
    with (
        httpx.Client(base_url=base_url, timeout=WAIT_S) as http,
        http.stream("GET", "/v1/events", headers=sent) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        stream = EventStream(response)
        assert stream.frame() == Frame(retry=3000)
        yield stream

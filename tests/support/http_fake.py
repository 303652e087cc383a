"""The harness of the local fakes of HTTP peers (``fake_fal``, ``fake_stripe``):
a server on 127.0.0.1 (a free port) answering in threads, started and stopped
as a context manager. A fake subclasses ``HttpFake`` and says what it answers
in ``respond``; a body that is not bytes is sent as JSON."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

WAIT_S = 5.0

# What a fake answers: status, body (bytes as they are, anything else as
# JSON), and headers.
Answer = tuple[int, Any, dict[str, str]]


class HttpFake(ABC):
    """A fake HTTP peer, served while used as a context manager."""

    name = "http-fake"

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval: shutdown waits for the loop's next turn.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name=self.name, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=WAIT_S)

    @abstractmethod
    def respond(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """The answer to one request (``headers`` with lower-case names)."""


def _handler_for(fake: HttpFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer, extra = fake.respond(self.command, self.path, headers, body)
            if isinstance(answer, bytes):
                data = answer
            else:
                data = json.dumps(answer).encode()
                extra = {"Content-Type": "application/json", **extra}
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up waiting (a fake told to hang): nobody to answer.
                self.close_connection = True

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: pytest shows failures, not access logs."""

    return Handler

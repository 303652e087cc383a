"""Log lines: human-readable on a terminal, JSON otherwise, and never an
escape code in JSON (uvicorn's ``color_message`` included)."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from plasmaart import logs
from plasmaart.config import load_settings

ESC = "\x1b"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logs.shutdown()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = False


def _uvicorn_style_record() -> logging.LogRecord:
    # What uvicorn logs at start-up: the plain message, and the same with
    # ANSI colours in ``color_message`` (an extra).
    return logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "Uvicorn running on %s (Press CTRL+C to quit)",
            "args": ("http://127.0.0.1:8000",),
            "color_message": "Uvicorn running on \x1b[1m%s\x1b[0m (Press CTRL+C to quit)",
        }
    )


def _emit(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch, log_format: str) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO", json_lines=log_format)  # type: ignore[arg-type]
    logging.getLogger("uvicorn.error").handle(_uvicorn_style_record())
    logging.getLogger("plasmaart.test").warning(
        "colour in a message: \x1b[31mred\x1b[0m", extra={"path": "/v1/\x1b]0;title\x07me"}
    )
    return stream.getvalue()


def test_auto_on_a_terminal_writes_readable_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _emit(FakeTerminal(), monkeypatch, "auto")
    lines = out.splitlines()
    assert len(lines) == 2
    assert "INFO    uvicorn.error: Uvicorn running on http://127.0.0.1:8000" in lines[0]
    assert "WARNING plasmaart.test: colour in a message: red path=/v1/me" in lines[1]
    assert ESC not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_auto_off_a_terminal_writes_json_without_escape_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _emit(io.StringIO(), monkeypatch, "auto")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [entry["logger"] for entry in entries] == ["uvicorn.error", "plasmaart.test"]
    assert (
        entries[0]["message"] == "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
    )
    assert "color_message" not in entries[0]
    assert entries[1]["message"] == "colour in a message: red"
    assert entries[1]["path"] == "/v1/me"
    # Neither the character nor its JSON escape.
    assert ESC not in out
    assert "\\u001b" not in out


def test_json_is_forced_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _emit(FakeTerminal(), monkeypatch, "json")
    assert [json.loads(line)["level"] for line in out.splitlines()] == ["INFO", "WARNING"]
    assert "\\u001b" not in out


def test_text_is_forced_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _emit(io.StringIO(), monkeypatch, "text")
    assert out.splitlines()[0].endswith(
        "INFO    uvicorn.error: Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
    )


def test_text_lines_carry_the_request_id_and_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO")
    token = logs.request_id.set("req_123")
    try:
        logging.getLogger("plasmaart.web.edge").info(
            "%s %s %d",
            "GET",
            "/v1/me",
            200,
            extra={"method": "GET", "path": "/v1/me", "status": 200, "duration_ms": 3.25},
        )
    finally:
        logs.request_id.reset(token)
    line = stream.getvalue().strip()
    assert line.endswith("plasmaart.web.edge: GET /v1/me 200 [req_123] duration_ms=3.25")


def test_exceptions_are_kept_in_both_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    for stream, log_format in ((FakeTerminal(), "auto"), (io.StringIO(), "auto")):
        monkeypatch.setattr(sys, "stderr", stream)
        logs.configure("INFO", json_lines=log_format)  # type: ignore[arg-type]
        try:
            raise RuntimeError("boom \x1b[1m!")
        except RuntimeError:
            logging.getLogger("plasmaart.test").exception("failed")
        out = stream.getvalue()
        assert "RuntimeError: boom !" in (out if stream.isatty() else json.loads(out)["exception"])
        assert ESC not in out


def test_the_setting_defaults_to_auto_and_keeps_json_and_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PLASMAART_LOG_FORMAT", raising=False)
    monkeypatch.delenv("PLASMAART_CONFIG_FILE", raising=False)
    assert load_settings().log_format == "auto"
    for value in ("json", "text", "auto"):
        monkeypatch.setenv("PLASMAART_LOG_FORMAT", value)
        assert load_settings().log_format == value


def test_a_stream_without_isatty_counts_as_no_terminal() -> None:
    assert logs.json_lines_for("auto", object()) is True  # type: ignore[arg-type]
    closed = io.StringIO()
    closed.close()
    assert logs.json_lines_for("auto", closed) is True
    assert logs.json_lines_for("auto", FakeTerminal()) is False


class HeldStream(io.StringIO):
    """Standard error that blocks every write until released (bounded)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        assert self.release.wait(10), "never released"
        return super().write(text)


def test_buffered_logging_does_not_wait_for_standard_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = HeldStream()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO", json_lines="json", buffered=True)
    log = logging.getLogger("plasmaart.access")
    detail = ["first"]
    token = logs.request_id.set("req_buffered")
    started = time.monotonic()
    try:
        log.info("%s %s %d", "GET", detail, 200, extra={"status": 200})
        detail.append("changed after the call")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    finally:
        logs.request_id.reset(token)
    # Standard error is blocked, yet logging returned at once.
    assert time.monotonic() - started < 5
    assert stream.getvalue() == ""
    stream.release.set()
    logs.flush()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in entries] == ["GET ['first'] 200", "failed"]
    assert [e.get("request_id") for e in entries] == ["req_buffered", "req_buffered"]
    assert entries[0]["status"] == 200
    assert "RuntimeError: boom" in entries[1]["exception"]
    assert threading.current_thread().name not in stream.writers


def test_shutdown_writes_what_is_queued_then_logs_directly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO", json_lines="text", buffered=True)
    log = logging.getLogger("plasmaart.test")
    for n in range(200):
        log.info("line %d", n)
    logs.shutdown()
    assert [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()] == [
        f"line {n}" for n in range(200)
    ]
    log.warning("after")
    assert stream.getvalue().splitlines()[-1].endswith("plasmaart.test: after")
    logs.shutdown()  # twice is fine


class TimedStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.first_write: float | None = None

    def write(self, text: str) -> int:
        if self.first_write is None:
            self.first_write = time.monotonic()
        return super().write(text)


def test_the_writer_lets_a_burst_gather_before_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = TimedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logs, "LINGER_S", 1.0)
    logs.configure("INFO", json_lines="json", buffered=True)
    log = logging.getLogger("plasmaart.access")
    for n in range(50):
        log.info("request %d", n)
    burst_logged = time.monotonic()
    logs.flush()
    # The first record woke the writer, which waited for the rest: one batch.
    assert stream.first_write is not None
    assert stream.first_write >= burst_logged
    assert len(stream.getvalue().splitlines()) == 50

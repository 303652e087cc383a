"""Structured logging: one JSON object per line, with the request id of the
request being served (a context variable), so a request can be followed
across the API, the ledger and the database logs. Secrets are never logged:
no headers, no bodies, no query strings go into a record.

On a terminal the same records are human-readable lines instead
(``PLASMAART_LOG_FORMAT``: ``auto``, the default, picks text when the stream
the logs go to is a terminal and JSON otherwise; ``json`` and ``text`` force
one). JSON never carries terminal escape codes: uvicorn's ``color_message``
is dropped and escape sequences are taken out of every string.

``serve`` and ``worker`` log through a queue (``configure(buffered=True)``):
the thread that logs (a request's, the access line's) only puts the record on
a queue, and one background thread formats and writes it, so a slow or
blocked standard error never holds a request. The queue is drained when the
process stops (``shutdown``, also at exit); a process killed outright loses
the lines not yet written, at most the last milliseconds'."""

from __future__ import annotations

import atexit
import copy
import json
import logging
import queue
import re
import sys
import threading
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "json", "text"]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Extras that are a terminal's business only: uvicorn passes its messages
# again with ANSI colours as ``color_message``.
_TERMINAL_ONLY = {"color_message"}
# ANSI escape sequences: CSI (colours, cursor), OSC (titles, links), and
# any other ESC-introduced pair; then whatever control characters remain.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape sequences or stray control characters
    (newlines and tabs stay)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Whatever was passed with ``extra=`` (method, path, status, ...)."""
    return {
        name: value
        for name, value in record.__dict__.items()
        if name not in _STANDARD and name not in _TERMINAL_ONLY and not name.startswith("_")
    }


# The request id of a record put on the log queue, taken in the thread that
# logged it (the context variable is not set in the writing thread).
_REQUEST_ID = "_request_id"
# Records waiting to be written; past this, logging waits for the writer
# rather than dropping lines or growing without bound.
QUEUE_SIZE = 10_000
# How long the writer lets records gather after a quiet spell.
LINGER_S = 0.01


def _request_id_of(record: logging.LogRecord) -> str | None:
    if _REQUEST_ID in record.__dict__:
        value: str | None = record.__dict__[_REQUEST_ID]
        return value
    return request_id.get()


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return strip_escapes(value)
    if isinstance(value, dict):
        return {strip_escapes(str(key)): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return strip_escapes(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors; no escape code in it."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = _request_id_of(record)
        if current is not None:
            entry["request_id"] = current
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(_clean(entry))


class TextFormatter(logging.Formatter):
    """A line a person reads on a terminal:
    ``2026-01-31 12:00:00.123 INFO  plasmaart.web.edge: GET /v1/me 200 [req_…] duration_ms=3.1``.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        line = (
            f"{created:%Y-%m-%d %H:%M:%S}.{created.microsecond // 1000:03d} "
            f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        current = _request_id_of(record)
        if current is not None:
            line += f" [{current}]"
        extras = _extras(record)
        # What the message already says (an access line's method, path and
        # status) is not repeated; the rest follows as key=value.
        message = record.getMessage()
        rest = [
            f"{name}={value}"
            for name, value in extras.items()
            if not (isinstance(value, str | int) and str(value) in message)
        ]
        if rest:
            line += " " + " ".join(rest)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return strip_escapes(line)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (it is
    swapped by test runners and by tools that capture a command's output)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def json_lines_for(log_format: LogFormat | bool, stream: TextIO | None = None) -> bool:
    """Whether records go out as JSON: ``auto`` chooses text when ``stream``
    (standard error, where the logs go) is a terminal."""
    if isinstance(log_format, bool):
        return log_format
    if log_format == "auto":
        return not is_terminal(stream if stream is not None else sys.stderr)
    return log_format == "json"


class _QueueHandler(QueueHandler):
    """Puts a record on the queue as the writing thread needs it: its message
    made (the arguments may change after the call), the request id of the
    thread that logged it, the traceback kept for the formatter."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        record.__dict__.setdefault(_REQUEST_ID, request_id.get())
        return record

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.records = records

    def enqueue(self, record: logging.LogRecord) -> None:
        self.records.put(record)  # waits only when the writer is far behind


class _BatchingListener(QueueListener):
    """Writes in batches: woken by a record after a quiet spell, it lets the
    queue fill for ``LINGER_S`` before writing, so that under load the
    writing thread takes the interpreter's lock once per batch instead of
    once per record (each hand-over costs the serving thread time)."""

    def dequeue(self, block: bool) -> logging.LogRecord:
        records: queue.Queue[logging.LogRecord] = self.queue  # type: ignore[assignment]
        if block and records.empty():
            record = records.get()
            time.sleep(LINGER_S)
            return record
        return records.get(block)

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]  # after what is queued, even when full


_listener: QueueListener | None = None
_listener_lock = threading.Lock()


def shutdown() -> None:
    """Write what is queued and stop the writing thread (``configure`` with
    ``buffered`` starts it; this also runs at exit). Idempotent."""
    global _listener
    with _listener_lock:
        listener, _listener = _listener, None
    if listener is not None:
        listener.stop()  # drains the queue first
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if not isinstance(h, _QueueHandler)]
        root.handlers.extend(listener.handlers)


def flush() -> None:
    """Wait until every record queued so far is written."""
    listener = _listener
    if listener is not None:
        records: queue.Queue[logging.LogRecord] = listener.queue  # type: ignore[assignment]
        records.join()


atexit.register(shutdown)


def configure(level: str, *, json_lines: LogFormat | bool = "auto", buffered: bool = False) -> None:
    """Send every record to standard error, as JSON lines or as text
    (``json_lines``: a format, or True for JSON and False for text).
    ``buffered``: through a queue and one writing thread (``serve``, ``worker``)."""
    global _listener
    shutdown()
    handler = _StderrHandler()
    if json_lines_for(json_lines, sys.stderr):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    if buffered:
        records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
        listener = _BatchingListener(records, handler)
        listener.start()
        with _listener_lock:
            _listener = listener
        root.handlers[:] = [_QueueHandler(records)]
    else:
        root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # Alembic tells every start-up which dialect it found; only news matters.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # Our own access log replaces uvicorn's, which has no request id.
    logging.getLogger("uvicorn.access").disabled = True

"""Acting on a signal outside the signal handler.

A Python signal handler runs on the main thread between two bytecodes,
perhaps while that thread holds a lock (a ``threading.Event``'s, the log
queue's) that the handler would then wait for forever. ``SignalThread``
installs handlers that do nothing but let the signal wake a pipe
(``signal.set_wakeup_fd``); a thread of its own reads the pipe and calls the
real handler there, where taking locks and logging are safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the wake-up byte does the work."""


class SignalThread:
    """``with SignalThread({signal.SIGTERM: on_term}): ...`` calls
    ``on_term(signum)`` on a thread for each SIGTERM while the block runs.
    Enter it on the main thread."""

    def __init__(self, handlers: Mapping[int, Callable[[int], None]]) -> None:
        self.handlers = dict(handlers)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._read_fd = -1
        self._write_fd = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SignalThread:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in self.handlers:
            self._previous[signum] = signal.signal(signum, _ignore)
        self._thread = threading.Thread(target=self._run, name="plasmaart-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        signal.set_wakeup_fd(self._previous_fd)
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")  # not a signal: the reader ends
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == 0:
                    return
                handler = self.handlers.get(signum)
                if handler is not None:
                    handler(signum)

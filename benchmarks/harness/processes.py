"""Child processes that report to the benchmark: each sends ``("ready", i)``
once set up, ``("done", i, ...)`` at the end, or ``("error", i, traceback)``;
the benchmark lets them go together and tells them to stop.

Started with fork: in milliseconds, with the modules already imported, and
without pickling their arguments.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, TypeAlias

import psycopg

Message = tuple[Any, ...]
# What a child is given: its messages to the benchmark, the value it goes
# with, the event that tells it to stop.
# (multiprocessing's Queue is generic only to type checkers: strings here.)
Channel: TypeAlias = "Queue[Message]"
Go: TypeAlias = "Queue[float]"
Stop: TypeAlias = Event
# A child's body: (index, channel, go, stop, *its own arguments).
Target = Callable[..., None]


@contextmanager
def reporting(channel: Channel, index: int) -> Iterator[None]:
    """In a child: whatever fails in the body is reported, with its traceback."""
    try:
        yield
    except BaseException:
        channel.put(("error", index, traceback.format_exc()))


def wait_for_go(go: Go, timeout: float) -> float:
    """In a child: the value the benchmark lets it go with (a deadline, say)."""
    try:
        return go.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError("no start signal") from None


@dataclass(frozen=True)
class Crew:
    """The children of one run and the ways to talk to them."""

    channel: Channel
    go: Go
    stop: Stop
    processes: Sequence[BaseProcess]
    who: str  # "worker", "client": what the errors call a child

    def collect(self, kind: str, timeout: float) -> list[Message]:
        """One ``kind`` message per child; a failure or a child's death raises."""
        messages: list[Message] = []
        give_up = time.monotonic() + timeout
        while len(messages) < len(self.processes):
            try:
                message = self.channel.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in self.processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a {self.who} process died (exit code {dead[0].exitcode})"
                    ) from None
                if time.monotonic() > give_up:
                    raise RuntimeError(f"{self.who}s not {kind} after {timeout:.0f} s") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"{self.who} {message[1]} failed:\n{message[2]}")
            if message[0] != kind:
                raise RuntimeError(f"unexpected message from a {self.who}: {message!r}")
            messages.append(message)
        return messages

    def let_go(self, value: float = 0.0) -> None:
        """Every child at once, with ``value``."""
        for _ in self.processes:
            self.go.put(value)

    def check_alive(self) -> None:
        """Raise if a child has ended before it was told to stop."""
        dead = [p for p in self.processes if p.exitcode is not None]
        if dead:
            raise RuntimeError(f"a {self.who} process ended early (exit code {dead[0].exitcode})")

    def wait_until_none(
        self, dsn: str, remaining_sql: bytes, timeout: float, poll: float = 0.02
    ) -> None:
        """Poll until ``remaining_sql`` counts nothing left (jobs in a queue);
        raise if a child ends meanwhile or the time runs out."""
        give_up = time.monotonic() + timeout
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                row = conn.execute(remaining_sql).fetchone()
                if row is not None and int(row[0]) == 0:
                    return
                self.check_alive()
                if time.monotonic() > give_up:
                    left = row[0] if row else "?"
                    raise RuntimeError(f"{left} jobs not done after {timeout:.0f} s")
                time.sleep(poll)


@contextmanager
def crew(children: Sequence[tuple[Target, tuple[Any, ...]]], who: str = "worker") -> Iterator[Crew]:
    """Start each ``(target, args)`` in its own process, called as
    ``target(index, channel, go, stop, *args)``; at the end tell them to stop
    and wait for them (those that do not end are terminated, then killed)."""
    ctx = multiprocessing.get_context("fork")
    channel: Channel = ctx.Queue()
    go: Go = ctx.Queue()
    stop = ctx.Event()
    processes: list[BaseProcess] = []
    finished = False
    try:
        for index, (target, args) in enumerate(children):
            process = ctx.Process(
                target=target, args=(index, channel, go, stop, *args), daemon=True
            )
            process.start()
            processes.append(process)
        yield Crew(channel, go, stop, processes, who)
        finished = True
    finally:
        stop.set()
        _end(processes, finished=finished)
        channel.close()
        go.close()


def _end(processes: Sequence[BaseProcess], *, finished: bool) -> None:
    # Children that reported are exiting on their own; after a failure the
    # others would run on until their deadline or their setup timeout.
    for process in processes:
        process.join(timeout=10 if finished else 0)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()

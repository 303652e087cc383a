"""``ListenerThread``: the one daemon thread of a listener (caches, event bus,
poll wake-ups), started at most once at a time and stopped by its flag."""

from __future__ import annotations

import threading

from plasmaart.db.listener import ListenerThread

WAIT_S = 5.0


class Loop:
    """A listener's loop: counts its runs and runs until its stop flag is set."""

    def __init__(self) -> None:
        self.runs = 0
        self.running = threading.Event()
        self.flags: list[threading.Event] = []

    def __call__(self, stopping: threading.Event) -> None:
        self.runs += 1
        self.flags.append(stopping)
        self.running.set()
        stopping.wait(WAIT_S)
        self.running.clear()


def test_start_runs_one_thread_until_stop() -> None:
    loop = Loop()
    listener = ListenerThread("test-listener", loop)
    starts: list[int] = []
    assert listener.start(on_start=lambda: starts.append(1)) is True
    assert loop.running.wait(WAIT_S)
    # Running: a second start starts nothing and calls nothing.
    assert listener.start(on_start=lambda: starts.append(2)) is False
    assert starts == [1]
    names = [t.name for t in threading.enumerate() if t.name == "test-listener"]
    assert names == ["test-listener"]
    listener.stop()
    assert loop.flags[0].is_set()
    assert not any(t.name == "test-listener" for t in threading.enumerate())
    assert loop.runs == 1


def test_a_start_after_stop_runs_again_with_a_fresh_flag() -> None:
    loop = Loop()
    listener = ListenerThread("test-listener-again", loop)
    listener.start()
    assert loop.running.wait(WAIT_S)
    listener.stop()
    assert listener.start() is True
    assert loop.running.wait(WAIT_S)
    assert loop.runs == 2
    first, second = loop.flags
    assert first.is_set()
    assert not second.is_set()
    listener.stop()
    assert second.is_set()


def test_stop_without_start_does_nothing() -> None:
    listener = ListenerThread("never-started", Loop())
    listener.stop()
    assert not any(t.name == "never-started" for t in threading.enumerate())

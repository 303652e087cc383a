"""PollWakeups on the in-process bus: a wake-up reaches the watched job only,
is kept until its next wait, and a ``resync`` wakes every job watched."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from plasmaart.eventbus import RESYNC, InProcessEventBus
from plasmaart.generation.wakeups import POLL_EVENT, WAKEUP_ADDRESS, PollWakeups

WAIT_S = 5.0


@pytest.fixture
def wakeups() -> Iterator[PollWakeups]:
    made = PollWakeups(InProcessEventBus())
    made.start()
    assert made.listening
    try:
        yield made
    finally:
        made.close()


def test_a_published_wakeup_ends_only_its_jobs_wait(wakeups: PollWakeups) -> None:
    wakeups.watch("gen_a")
    wakeups.watch("gen_b")
    wakeups.events.publish([WAKEUP_ADDRESS], POLL_EVENT, {"id": "gen_a"})
    started = time.monotonic()
    assert wakeups.wait("gen_a", WAIT_S) is True
    assert time.monotonic() - started < WAIT_S / 2
    # Consumed by that wait; the other job was never woken.
    assert wakeups.wait("gen_a", 0.05) is False
    assert wakeups.wait("gen_b", 0.05) is False


def test_a_wakeup_before_the_wait_is_kept(wakeups: PollWakeups) -> None:
    wakeups.watch("gen_a")
    wakeups.wake("gen_a")  # arrives while the job is polling
    assert wakeups.wait("gen_a", 0) is True


def test_an_unwatched_job_just_waits_out_its_interval(wakeups: PollWakeups) -> None:
    wakeups.wake("gen_gone")
    started = time.monotonic()
    assert wakeups.wait("gen_gone", 0.1) is False
    assert time.monotonic() - started >= 0.09


def test_a_resync_wakes_every_watched_job(wakeups: PollWakeups) -> None:
    wakeups.watch("gen_a")
    wakeups.watch("gen_b")
    wakeups.events.publish([WAKEUP_ADDRESS], RESYNC, {"reason": "reconnected"})
    assert wakeups.wait("gen_a", WAIT_S) is True
    assert wakeups.wait("gen_b", WAIT_S) is True


def test_other_events_and_malformed_ones_wake_nothing(wakeups: PollWakeups) -> None:
    wakeups.watch("gen_a")
    wakeups.events.publish([WAKEUP_ADDRESS], "generation.updated", {"id": "gen_a"})
    wakeups.events.publish([WAKEUP_ADDRESS], POLL_EVENT, {"id": 7})
    wakeups.events.publish(["usr_someone"], POLL_EVENT, {"id": "gen_a"})
    assert wakeups.wait("gen_a", 0.3) is False


def test_closing_wakes_waiting_jobs_and_stops_listening(wakeups: PollWakeups) -> None:
    wakeups.watch("gen_a")
    wakeups.close()
    assert not wakeups.listening
    assert wakeups.wait("gen_a", 0) is True

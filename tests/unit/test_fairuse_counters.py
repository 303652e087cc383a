"""The fair-use counters of fairuse/counters.py: identical requests in a
moving window, one count per submission, bounded memory; the bounded queue
of signals waiting for the flusher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plasmaart.fairuse import counters
from plasmaart.fairuse.counters import (
    MemoryCopies,
    PendingSignal,
    PendingSignals,
    request_fingerprint,
)

WINDOW = timedelta(minutes=10)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_copies_are_counted_in_a_moving_window() -> None:
    copies = MemoryCopies()
    at = [T0 + timedelta(minutes=m) for m in (0, 4, 9)]
    assert [copies.count("k", f"g{n}", t, t, WINDOW) for n, t in enumerate(at)] == [1, 2, 3]
    # Ten minutes after the first, it has left the window (now - window < at).
    assert copies.count("k", "g3", T0 + WINDOW, T0 + WINDOW, WINDOW) == 3
    assert copies.count("other", "g4", T0, T0, WINDOW) == 1


def test_one_submission_counts_once() -> None:
    copies = MemoryCopies()
    assert copies.count("k", "g1", T0, T0, WINDOW) == 1
    # An idempotent replay of the same submission.
    assert copies.count("k", "g1", T0, T0 + timedelta(seconds=1), WINDOW) == 1


def test_requests_whose_copies_all_left_the_window_are_forgotten() -> None:
    copies = MemoryCopies()
    for n in range(counters.SWEEP_EVERY - 1):
        copies.count(f"k{n}", "g", T0, T0, WINDOW)
    assert len(copies) == counters.SWEEP_EVERY - 1
    later = T0 + WINDOW + timedelta(seconds=1)
    copies.count("fresh", "g", later, later, WINDOW)
    assert len(copies) == 1


def test_the_fingerprint_is_the_whole_request() -> None:
    base = request_fingerprint("flux-dev", "a fox", 1, {"seed": 1, "aspect_ratio": "1:1"})
    assert base == request_fingerprint("flux-dev", "a fox", 1, {"aspect_ratio": "1:1", "seed": 1})
    others = {
        request_fingerprint("flux-dev", "a fox", 1, {"seed": 2, "aspect_ratio": "1:1"}),
        request_fingerprint("flux-pro", "a fox", 1, {"seed": 1, "aspect_ratio": "1:1"}),
        request_fingerprint("flux-dev", "a fox", 2, {"seed": 1, "aspect_ratio": "1:1"}),
        request_fingerprint("flux-dev", "a cat", 1, {"seed": 1, "aspect_ratio": "1:1"}),
        request_fingerprint("flux-dev", "a fox", 1, {"aspect_ratio": "1:1"}),
        request_fingerprint(
            "flux-dev", "a fox", 1, {"seed": 1, "aspect_ratio": "1:1"}, sandbox={"fail": "x"}
        ),
        request_fingerprint(
            "flux-dev", "a fox", 1, {"seed": 1, "aspect_ratio": "1:1"}, upload_id="upl_1"
        ),
        request_fingerprint(
            "flux-dev", "a fox", 1, {"seed": 1, "aspect_ratio": "1:1"}, image_url="https://x/y"
        ),
    }
    assert len(others) == 8
    assert base not in others


def test_the_queue_keeps_the_order_and_is_bounded() -> None:
    queue = PendingSignals(limit=3)
    signals = [PendingSignal("usr_a", "invalid_input", {"n": n}, None, T0) for n in range(5)]
    assert [queue.put(signal) for signal in signals] == [True, True, True, False, False]
    assert queue.take() == signals[:3]
    assert queue.take() == []
    assert queue.put(signals[4]) is True
    assert len(queue) == 1

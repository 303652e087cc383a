"""PlasmaArt's worker in a child process (``processes.crew``), as
``plasmaart worker`` runs it, with a provider of the benchmark's choosing and
a storage that discards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness.fakes import DiscardStorage
from benchmarks.harness.processes import Channel, Go, Stop, reporting, wait_for_go
from benchmarks.harness.profiles import SqlCounter, profiling
from plasmaart.bootstrap import bootstrap
from plasmaart.config import load_settings
from plasmaart.generation.providers.base import Provider
from plasmaart.worker import Worker

SETUP_TIMEOUT = 120.0


def worker_process(
    index: int,
    channel: Channel,
    go: Go,
    stop: Stop,
    settings: dict[str, Any],
    concurrency: int,
    provider: Provider,
    profile_out: Path | None = None,
) -> None:
    """``Worker(platform, concurrency)`` on the platform ``settings`` build,
    ready, then from the go until told to stop; with ``profile_out``,
    profiled in all its threads."""
    with reporting(channel, index):
        made = bootstrap(load_settings(**settings), migrate=False)
        made.provider = provider
        made.storage = DiscardStorage()
        worker = Worker(made, concurrency)
        counter = SqlCounter(made.db.engine) if profile_out else None
        channel.put(("ready", index))
        wait_for_go(go, SETUP_TIMEOUT)
        with profiling(profile_out, counter):
            thread = worker.start_thread()
            stop.wait()
            worker.stop()
            thread.join(timeout=60)
        made.close()
        channel.put(("done", index))

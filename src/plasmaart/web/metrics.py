"""Prometheus metrics of the HTTP edge, one registry per app, and what
``/metrics`` exposes.

One API process: its own registry, plus the business metrics read from the
database (web/business_metrics.py). Several (``serve --workers N``): a scrape
reaches one of them, so each process writes its HTTP metrics to files in a
shared folder (prometheus_client's multiprocess mode) and the process that
answers sums every process's files; the business metrics, which are the
database's and not a process's, come from that process alone.
``prepare_processes`` sets this up before ``serve`` starts its processes.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from plasmaart import __version__
from plasmaart.config import Settings
from plasmaart.web.degradation import DegradationCollector

log = logging.getLogger(__name__)
# prometheus_client's own variable: set, every metric lives in files there.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A live gauge's file names its process: gauge_livesum_<pid>.db.
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The shared folder of the processes' metrics, when there are several."""
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


def prepare_processes(settings: Settings, workers: int) -> None:
    """Before ``serve`` starts ``workers`` API processes: with more than one,
    give them a shared, empty folder for their metrics (``PROMETHEUS_MULTIPROC_DIR``
    if the operator set it, else ``<var_dir>/metrics``), so that any of them
    answers a scrape for all. Files of a previous run are deleted: its
    counters end with it, as a single process's do when it restarts."""
    if workers <= 1:
        return
    folder = multiprocess_dir() or settings.var_dir / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(str(folder / "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = str(folder)
    # A process forked from this one after prometheus_client chose its value
    # class must write files too (spawned ones choose it from the variable).
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges (requests in flight, build info) of processes
    that ended, however they ended: a supervisor's ``mark_process_dead`` is
    not needed. Counters and histograms of ended processes stay, so that the
    sums never go down during a rolling restart."""
    for path in folder.glob("gauge_live*.db"):
        found = _LIVE_FILE.match(path.name)
        if found is None:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's
            continue


class _LiveProcesses(Collector):
    """Forgets ended processes' live gauges just before the files are read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        forget_dead_processes(self.folder)
        return []


class HttpMetrics:
    def __init__(self, business: Collector | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "plasmaart_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "plasmaart_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.in_flight = Gauge(
            "plasmaart_http_requests_in_flight",
            "Requests being served",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        info = Gauge(
            "plasmaart_build_info",
            "Version of the running code",
            ["version"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        info.labels(version=__version__).set(1)

        # What /metrics exposes: this registry alone, or every process's files.
        folder = multiprocess_dir()
        if folder is None:
            self.exposition = self.registry
        else:
            self.exposition = CollectorRegistry()
            self.exposition.register(_LiveProcesses(folder))
            MultiProcessCollector(self.exposition, str(folder))  # type: ignore[no-untyped-call]
        # A full disk, an unreachable Redis (web/degradation.py), as this process sees them.
        self.exposition.register(DegradationCollector())
        # The business metrics (web/business_metrics.py), from this process only.
        self.business = business
        if business is not None:
            self.exposition.register(business)

        # (method, route, status) -> the label children, found once: the
        # route is a template, so the keys are as few as the series.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request (the edge calls this; web/edge.py)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.latency.labels(method, route),
                self.requests.labels(method, route, str(status)),
            )
            self._children[key] = children
        children[0].observe(seconds)
        children[1].inc()

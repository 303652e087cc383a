"""What this process works without right now: a full disk, an unreachable
Redis. ``/readyz`` lists it (``degraded``; still 200: see docs/reliability.md)
and ``/metrics`` exposes it, as this process sees it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from plasmaart.db.disk_full import WATCH
from plasmaart.fairuse import redis_health

_DISKS = ("database", "media")


def degraded() -> list[str]:
    """``database_disk_full``, ``media_disk_full``, ``redis_unreachable``."""
    found = [f"{where}_disk_full" for where in WATCH.full()]
    if redis_health.unreachable():
        found.append("redis_unreachable")
    return found


class DegradationCollector(Collector):
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        full = set(WATCH.full())
        disk = GaugeMetricFamily(
            "plasmaart_storage_full",
            "1 while this process's last write to the disk found it full (writes refused)",
            labels=["disk"],
        )
        refused = CounterMetricFamily(
            "plasmaart_storage_full_refusals",
            "Writes this process refused because the disk was full",
            labels=["disk"],
        )
        for where in _DISKS:
            disk.add_metric([where], 1.0 if where in full else 0.0)
            refused.add_metric([where], float(WATCH.refused_total.get(where, 0)))
        yield disk
        yield refused
        if redis_health.configured():
            yield GaugeMetricFamily(
                "plasmaart_redis_up",
                "1 while this process reaches Redis (0: rate limits fail open)",
                value=0.0 if redis_health.unreachable() else 1.0,
            )
            yield CounterMetricFamily(
                "plasmaart_redis_fail_open",
                "Requests or counts that went on uncounted because Redis was unreachable",
                value=float(redis_health.fail_open_total()),
            )

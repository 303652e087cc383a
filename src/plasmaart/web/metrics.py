"""Prometheus metrics of the HTTP edge, one registry per app."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plasmaart import __version__


class HttpMetrics:
    def __init__(self) -> None:
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
            "plasmaart_http_requests_in_flight", "Requests being served", registry=self.registry
        )
        info = Gauge(
            "plasmaart_build_info",
            "Version of the running code",
            ["version"],
            registry=self.registry,
        )
        info.labels(version=__version__).set(1)

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

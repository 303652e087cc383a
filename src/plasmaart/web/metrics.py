"""Prometheus metrics of the HTTP edge, one registry per app."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """A plain ASGI middleware (cheaper than ``BaseHTTPMiddleware``)."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            started = time.perf_counter()
            self.in_flight.inc()
            try:
                await app(scope, receive, send_status)
            finally:
                self.in_flight.dec()
                # The router leaves the matched route in the scope: label by
                # its template, not the raw path, so ids do not explode
                # the number of series.
                route = getattr(scope.get("route"), "path", "unmatched")
                method = scope["method"]
                self.latency.labels(method, route).observe(time.perf_counter() - started)
                self.requests.labels(method, route, str(status)).inc()

        return wrapped

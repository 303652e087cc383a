"""The ASGI app factory: API routers, error handling, middleware, embedded worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.datastructures import Default

from plasmaart import __version__
from plasmaart.platform import Platform
from plasmaart.web import dashboard, openapi, problems
from plasmaart.web.api import (
    accounts,
    addresses,
    admin,
    auto_topup,
    balance_alerts,
    billing,
    catalog,
    catalog_changes,
    credits,
    events,
    fairuse,
    fal_webhooks,
    generations,
    leaving,
    ops,
    passwords,
    spend_limits,
    stripe_billing,
    teams,
    two_factor,
    webhooks,
)
from plasmaart.web.business_metrics import BusinessMetrics
from plasmaart.web.edge import Edge
from plasmaart.web.metrics import HttpMetrics
from plasmaart.web.responses import FastJSONResponse
from plasmaart.worker import Worker

# The API's routers, in the order the router tries them. First: the router
# matches routes one by one, and submissions are the busiest route (no route
# before it could match its paths; tests/integration/test_generations_api.py
# checks it).
ROUTERS = (
    generations,
    ops,
    catalog,
    accounts,
    teams,
    credits,
    events,
    admin,
    billing,
    stripe_billing,
    fal_webhooks,
    fairuse,
    catalog_changes,
    two_factor,
    addresses,
    passwords,
    leaving,
    balance_alerts,
    webhooks,
    auto_topup,
    spend_limits,
)


def create_app(platform: Platform, *, embedded_worker: bool | None = None) -> FastAPI:
    """The app for ``platform``. With an embedded worker (the default on the
    one-machine setup) the worker runs in a thread of the server process."""
    if embedded_worker is None:
        embedded_worker = platform.settings.embedded_worker

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(platform) if embedded_worker else None
        thread = worker.start_thread() if worker else None
        # Other processes' events (PostgreSQL): listen before serving streams.
        platform.events.start()
        # Other processes' cache invalidations (PostgreSQL; caches.py).
        platform.caches.start(wait=5)
        # Abuse signals seen on the request path are written by this thread.
        platform.fairuse.flusher.start()
        try:
            yield
        finally:
            platform.events.close()
            platform.fairuse.flusher.stop()  # writes the signals still queued
            if worker and thread:
                worker.stop()
                thread.join(timeout=30)

    app = FastAPI(
        title="PlasmaArt API",
        version=__version__,
        description="Generative AI for credits: text-to-image, text-to-video, image-to-video.",
        lifespan=lifespan,
        # A placeholder, not the class: routes with a response model keep
        # FastAPI's pydantic fast path; the others answer through orjson.
        default_response_class=Default(FastJSONResponse),
    )
    app.state.platform = platform
    # Open /v1/events streams, which a shutdown ends at once (plasmaart.serving).
    app.state.streams = events.OpenStreams()
    app.state.metrics = HttpMetrics(BusinessMetrics(platform))
    # One pure ASGI edge (web/edge.py): request id, body limit, idempotency,
    # rate-limit and security headers, metrics and the access log.
    app.add_middleware(Edge, platform=platform, metrics=app.state.metrics)
    problems.install(app)
    openapi.install(app)
    for api in ROUTERS:
        app.include_router(api.router)
    dashboard.install(app)
    return app

"""Fair use at the API edge (docs/fair-use.md).

``GenerationRateLimit`` is a dependency of the generation endpoints (submit,
upload, cancel; quotes have ``QuoteRateLimit``, a budget of their own): once
the caller is known, their request is counted against their plan's requests
per minute, per ACCOUNT (user), whatever API key or session they use (the
plan's limit is read at most once a second per account and process; the
counters live in memory or Redis). Over the limit: 429 ``rate_limited`` with
``Retry-After``; the refusal writes nothing, and at most once per interval
queues a ``rate_limited`` abuse signal, written off the request path.

``RateLimitHeaders`` (outermost middleware) adds ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` and ``RateLimit-Policy`` to every
answer of those endpoints, refusals included, and reports their 422s (invalid
input) beyond the free ones of the hour as abuse signals (queued, like every
signal of the request path: ``fairuse.tasks``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plasmaart.bootstrap import Platform
from plasmaart.fairuse.errors import RateLimited
from plasmaart.fairuse.ratelimits import RateWindow
from plasmaart.fairuse.rules import Budget
from plasmaart.web.auth import CurrentPrincipal, Principal
from plasmaart.web.deps import PlatformDep

# Keys of the request state (shared by the dependency and the middleware).
COUNTED = "fairuse_counted"
WINDOW = "fairuse_window"
# The first bytes of a 422 answer kept as evidence (its ``errors``).
EVIDENCE_BYTES = 4096
WINDOW_SECONDS = 60


def _limit(request: Request, principal: Principal, platform: Platform, budget: Budget) -> None:
    fairuse = platform.fairuse
    per_minute = fairuse.cached_requests_per_minute(principal.user, budget)
    if per_minute is None:
        with platform.db.read() as conn:
            per_minute = fairuse.requests_per_minute(conn, principal.user, budget)
    window = fairuse.count_request(principal.user, per_minute, budget)
    setattr(request.state, COUNTED, True)
    setattr(request.state, WINDOW, window)
    if window is None or window.allowed:
        return
    if fairuse.should_record_rate_limit_hit(principal.user):
        # Queued: the refusal itself writes nothing (fairuse/tasks.py).
        fairuse.enqueue_signal(
            principal.user.id,
            "rate_limited",
            {
                "method": request.method,
                "path": request.url.path,
                "budget": budget,
                "limit_per_minute": per_minute,
                "credential": principal.credential_id,
            },
        )
    what = "quotes" if budget == "quote" else "generation requests"
    raise RateLimited(per_minute, window.reset_after, what=what)


def limit_generation_requests(
    request: Request, principal: CurrentPrincipal, platform: PlatformDep
) -> None:
    _limit(request, principal, platform, "generation")


def limit_quotes(request: Request, principal: CurrentPrincipal, platform: PlatformDep) -> None:
    _limit(request, principal, platform, "quote")


# Submissions, uploads and cancels share one budget; quotes have their own.
GenerationRateLimit = Depends(limit_generation_requests)
QuoteRateLimit = Depends(limit_quotes)
# For the OpenAPI document of those routes (answers are problem+json).
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "Too many requests: `rate_limited` (the plan's requests a minute) "
        "or, on submissions, `concurrency_limit`; with `Retry-After`"
    }
}


def rate_limit_headers(window: RateWindow) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(window.limit),
        "RateLimit-Remaining": str(window.remaining),
        "RateLimit-Reset": str(window.reset_after),
        "RateLimit-Policy": f"{window.limit};w={WINDOW_SECONDS}",
    }


class RateLimitHeaders:
    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Created here, before anything copies the scope, so that what the
        # endpoint's dependency writes into request.state is seen below.
        state: dict[str, Any] = scope.setdefault("state", {})
        invalid = False
        body: list[bytes] = []

        async def send_with_headers(message: Message) -> None:
            nonlocal invalid
            if not state.get(COUNTED):
                await send(message)
                return
            if message["type"] == "http.response.start":
                window: RateWindow | None = state.get(WINDOW)
                if window is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in rate_limit_headers(window).items():
                        headers[name] = value
                invalid = message["status"] == 422 and state.get("principal") is not None
            elif message["type"] == "http.response.body" and invalid:
                body.append(message.get("body", b"")[:EVIDENCE_BYTES])
                if not message.get("more_body"):
                    invalid = False
                    # Recorded before the answer's last byte goes out, so that
                    # a client's next request already sees the consequence.
                    await run_in_threadpool(
                        self._invalid_input, state["principal"], scope, b"".join(body)
                    )
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _invalid_input(self, principal: Principal, scope: Scope, body: bytes) -> None:
        if not self.platform.fairuse.should_record_invalid_input(principal.user.id):
            return
        try:
            errors = json.loads(body[:EVIDENCE_BYTES]).get("errors", [])[:5]
        except (ValueError, AttributeError):
            errors = []
        # Queued, written off the request path (fairuse/tasks.py).
        self.platform.fairuse.enqueue_signal(
            principal.user.id,
            "invalid_input",
            {"method": scope["method"], "path": scope["path"], "errors": errors},
        )

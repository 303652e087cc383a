"""Fair use at the API edge (docs/fair-use.md).

``GenerationRateLimit`` is a dependency of the generation endpoints (submit,
upload, cancel; quotes have ``QuoteRateLimit``, a budget of their own): once
the caller is known, their request is counted against their plan's requests
per minute, per ACCOUNT (user), whatever API key or session they use (the
plan's limit is read at most once a second per account and process; the
counters live in memory or Redis). Over the limit: 429 ``rate_limited`` with
``Retry-After``; the refusal writes nothing, and at most once per interval
queues a ``rate_limited`` abuse signal, written off the request path.

The edge (web/edge.py) adds ``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` and ``RateLimit-Policy`` (``rate_limit_header_pairs``) to
every answer of those endpoints, refusals included, and reports their 422s
(invalid input) beyond the free ones of the hour as abuse signals
(``report_invalid_input``), queued like every signal of the request path
(``fairuse.tasks``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, Request
from starlette.types import Scope

from plasmaart.fairuse.errors import RateLimited
from plasmaart.fairuse.request_limiter import RateWindow
from plasmaart.fairuse.rules import Budget
from plasmaart.platform import Platform
from plasmaart.web.auth import CurrentPrincipal, Principal
from plasmaart.web.deps import PlatformDep

# Keys of the request state (shared by the dependency and the edge).
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


def rate_limit_header_pairs(window: RateWindow) -> list[tuple[bytes, bytes]]:
    """The ``RateLimit-*`` headers of ``window`` as raw ASGI pairs, for the edge."""
    return [
        (b"ratelimit-limit", str(window.limit).encode()),
        (b"ratelimit-remaining", str(window.remaining).encode()),
        (b"ratelimit-reset", str(window.reset_after).encode()),
        (b"ratelimit-policy", f"{window.limit};w={WINDOW_SECONDS}".encode()),
    ]


def report_invalid_input(
    platform: Platform, principal: Principal, scope: Scope, body: bytes
) -> None:
    """A counted request answered 422: an ``invalid_input`` abuse signal
    beyond the free ones of the hour, with the first errors as evidence.
    The edge calls it before the answer's last byte goes out; the signal is
    queued and written off the request path (fairuse/tasks.py)."""
    if not platform.fairuse.should_record_invalid_input(principal.user.id):
        return
    try:
        errors = json.loads(body[:EVIDENCE_BYTES]).get("errors", [])[:5]
    except (ValueError, AttributeError):
        errors = []
    platform.fairuse.enqueue_signal(
        principal.user.id,
        "invalid_input",
        {"method": scope["method"], "path": scope["path"], "errors": errors},
    )

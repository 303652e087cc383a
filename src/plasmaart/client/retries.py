"""When to send a request again, and how long to wait first.

Retried: 429 (after ``Retry-After`` when the server sends one), 500, 502,
503, 504, and requests that got no answer (connection refused or dropped,
timeouts). Never other 4xx: the same request would be refused again. POSTs
keep their Idempotency-Key across attempts, so the server acts at most once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from plasmaart.client.errors import retry_after_seconds

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Errors after which the server may or may not have seen the request; with
# the same Idempotency-Key the repeat is safe either way.
RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff: float = 0.5  # seconds before the first retry, doubling after
    max_backoff: float = 30.0
    # A longer Retry-After (a login throttled for minutes, say) is not waited
    # out: the caller gets RateLimitedError with its retry_after at once.
    max_retry_after: float = 60.0
    jitter: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be at least 0")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("waits must not be negative")

    def backoff_delay(self, retry: int) -> float:
        """Exponential with "equal jitter": between half and all of
        ``backoff * 2**retry``, so clients that failed together spread out."""
        ceiling = min(self.max_backoff, self.backoff * 2.0**retry)
        return ceiling / 2 + self.jitter() * ceiling / 2

    def next_wait(
        self,
        attempt: int,
        outcome: httpx.Response | httpx.TransportError,
        *,
        unanswered_before: bool,
    ) -> float | None:
        """Seconds to wait before sending again after ``outcome`` (a refused,
        read response, or no answer), or None to give up."""
        if isinstance(outcome, httpx.TransportError):
            return self.after_error(attempt, outcome)
        return self.after_response(attempt, outcome, unanswered_before=unanswered_before)

    def after_response(
        self, attempt: int, response: httpx.Response, *, unanswered_before: bool
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to stop.
        ``attempt`` counts from 0; a refused response's body must be read."""
        if attempt >= self.max_retries:
            return None
        status = response.status_code
        if status in RETRY_STATUSES:
            told = retry_after_seconds(response)
            if told is None:
                return self.backoff_delay(attempt)
            return told if told <= self.max_retry_after else None
        if status == 409 and _still_running(response, unanswered_before=unanswered_before):
            # The request with this key is still running (an attempt of ours
            # whose answer was lost, or one that has just answered and is
            # being stored): asked again, the server replays its answer.
            return self.backoff_delay(attempt)
        return None

    def after_error(self, attempt: int, error: httpx.TransportError) -> float | None:
        if attempt >= self.max_retries or not isinstance(error, RETRY_ERRORS):
            return None
        return self.backoff_delay(attempt)


def _still_running(response: httpx.Response, *, unanswered_before: bool) -> bool:
    """A 409 ``idempotency_conflict`` that waiting resolves. The server tells
    "still running" from "reused with another body" only by its title; after
    a lost answer of ours, the body was ours, so it can only be the former."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(body, dict) or body.get("code") != "idempotency_conflict":
        return False
    # The server marks "the first request is still running" with in_progress
    # (and Retry-After); another body under the same key is not retryable.
    return unanswered_before or body.get("in_progress") is True

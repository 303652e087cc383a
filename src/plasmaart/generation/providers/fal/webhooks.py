"""fal's webhooks: verify the signature, record each delivery once, wake the job.

fal calls ``POST /v1/webhooks/fal`` when a request finishes (the worker asks
for it with ``fal_webhook`` when ``PLASMAART_FAL_WEBHOOK_URL`` is set). The
delivery is checked against fal's published keys (``verify``, the check
itself in ``verification``), then recorded
by fal's request id in ``fal_webhooks`` (``record``, SQL in ``repository``):
a redelivery finds the row and changes nothing, and of two racing each other
the second waits for the first and then finds its row.

The effect is only a wake-up: the worker running the generation polls fal now
instead of at its next interval, and reads the result from fal's API as it
always does. The body is never trusted for outputs, so a delivery that passed
the check but should not have could at most make one poll happen sooner.

A request id we do not know (an old job, another deployment sharing the fal
account) is recorded and acknowledged: answering it with an error would only
make fal deliver it again. So is a delivery fal signed whose body we cannot
read (not JSON, not the shape of a fal webhook, or naming another request
than its signed headers): fal would deliver the same bytes again on any
answer but a 2xx, and they would never read better. It is recorded as
``payload_error``, as when fal says it could not include the result, and
wakes the job all the same: the worker reads the result from fal's API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection

from plasmaart.clock import Clock
from plasmaart.errors import DomainError
from plasmaart.generation.providers.base import ProviderUnavailable
from plasmaart.generation.providers.fal import repository
from plasmaart.generation.providers.fal.client import FalProvider
from plasmaart.generation.providers.fal.repository import WebhookRecord
from plasmaart.generation.providers.fal.verification import (
    WEBHOOK_HEADERS,
    parse_webhook,
    signed_by_fal,
)
from plasmaart.generation.wakeups import PollWakeups

log = logging.getLogger(__name__)

WebhookResult = Literal["succeeded", "failed", "payload_error"]
WebhookOutcome = Literal["woken", "finished", "unknown_request"]
# What a delivery came to: ``duplicate`` is a repeat, which changed nothing.
Received = Literal["woken", "finished", "unknown_request", "duplicate"]
# The states in which a worker may be waiting on the job.
WAITING_STATES = frozenset({"queued", "running"})


class InvalidSignature(DomainError):
    """A webhook whose ``X-Fal-Webhook-*`` headers are missing, forged, stale,
    or signed by a key fal does not publish."""

    code = "invalid_signature"
    status = 400
    title = "Invalid signature"


class WebhookKeysUnavailable(DomainError):
    """fal's public keys could not be fetched (and none are held), so no
    signature can be checked: nothing was written, and fal delivers again."""

    code = "provider_unavailable"
    status = 503
    title = "Provider unavailable"


@dataclass(frozen=True)
class FalWebhook:
    """A delivery whose signature checked out."""

    request_id: str
    result: WebhookResult


@dataclass(frozen=True)
class Recorded:
    request_id: str
    outcome: Received
    generation_id: str | None = None


class FalWebhooks:
    def __init__(self, clock: Clock, provider: FalProvider, wakeups: PollWakeups) -> None:
        self.clock = clock
        self.provider = provider
        self.wakeups = wakeups

    def verify(self, headers: Mapping[str, str], body: bytes) -> FalWebhook:
        """The delivery, if fal signed ``body`` (the raw bytes) and ``headers``
        within the tolerance of our clock."""
        headers = {name.lower(): value for name, value in headers.items()}
        try:
            genuine = signed_by_fal(self.provider.jwks, headers, body, self.clock.now())
        except ProviderUnavailable as exc:
            raise WebhookKeysUnavailable(
                f"fal's webhook keys could not be fetched: {exc}"
            ) from None
        if not genuine:
            missing = [name for name in WEBHOOK_HEADERS if not headers.get(name)]
            raise InvalidSignature(
                f"missing {', '.join(missing)}"
                if missing
                else "the signature is not fal's, or its timestamp is more than 5 minutes away"
            )
        request_id = headers[WEBHOOK_HEADERS[0]]
        try:
            parsed = parse_webhook(body)
        except ProviderUnavailable:
            # fal could not include the result; the worker's poll fetches it.
            return FalWebhook(request_id, "payload_error")
        except ValueError as exc:
            return _unreadable(request_id, str(exc))
        if parsed.request_id != request_id:
            return _unreadable(
                request_id, "the body's request_id is not the signed X-Fal-Webhook-Request-Id"
            )
        succeeded = parsed.status.state == "succeeded"
        return FalWebhook(request_id, "succeeded" if succeeded else "failed")

    def record(self, conn: Connection, webhook: FalWebhook) -> Recorded:
        """Record ``webhook`` and wake the worker waiting on its generation
        (after commit). A repeat, even one racing this write, changes nothing."""
        generation = repository.generation_of_request(conn, self.provider.name, webhook.request_id)
        outcome: WebhookOutcome
        if generation is None:
            outcome = "unknown_request"
        elif generation.status in WAITING_STATES:
            outcome = "woken"
        else:
            outcome = "finished"  # its worker already read the result
        generation_id = None if generation is None else generation.id
        new = repository.insert_webhook(
            conn,
            WebhookRecord(
                request_id=webhook.request_id,
                generation_id=generation_id,
                result=webhook.result,
                outcome=outcome,
                received_at=self.clock.now(),
            ),
        )
        if not new:
            return Recorded(webhook.request_id, "duplicate", generation_id)
        if generation is not None and outcome == "woken":
            self.wakeups.request_poll(conn, generation.id)
        return Recorded(webhook.request_id, outcome, generation_id)


def _unreadable(request_id: str, why: str) -> FalWebhook:
    log.warning(
        "fal webhook for %s is signed but unreadable (%s); acknowledged, the worker polls fal",
        request_id,
        why,
        extra={"provider_request_id": request_id},
    )
    return FalWebhook(request_id, "payload_error")

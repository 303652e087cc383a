"""fal's webhook: ``POST /v1/webhooks/fal``.

Public: what authenticates it is the ED25519 signature in fal's
``X-Fal-Webhook-*`` headers (``plasmaart.generation.providers.fal.webhooks``). Each delivery
is recorded once by fal's request id and wakes the worker running that
generation, which then polls fal for the result. A repeat is recognised with
one read; an unknown request id is recorded and acknowledged, so fal never
retries it. Unless the provider is fal the route is absent in effect (404).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from plasmaart.errors import NotFound
from plasmaart.generation.providers.fal.client import WEBHOOK_HEADERS, FalProvider
from plasmaart.generation.providers.fal.webhooks import FalWebhooks
from plasmaart.platform import Platform
from plasmaart.web.deps import PlatformDep

router = APIRouter(prefix="/v1", tags=["generations"])


class FalWebhookOut(BaseModel):
    request_id: str = Field(description="fal's request id, from the signed headers")
    outcome: Literal["woken", "finished", "unknown_request", "duplicate"] = Field(
        description="`woken`: the worker running the generation polls fal now; "
        "`finished`: the generation had already ended; `unknown_request`: no "
        "generation has this request id; `duplicate`: this delivery was received before"
    )


@router.post(
    "/webhooks/fal",
    response_model=FalWebhookOut,
    responses={
        400: {"description": "`invalid_signature`: missing, forged or stale `X-Fal-Webhook-*`"},
        404: {"description": "The provider is not fal"},
        422: {"description": "`invalid_input`: a signed body that is not a fal webhook"},
        503: {"description": "`provider_unavailable`: fal's webhook keys could not be fetched"},
    },
)
async def fal_webhook(request: Request, platform: PlatformDep) -> FalWebhookOut:
    """fal's completion callbacks, each recorded once by its request id."""
    # The signature is over the exact bytes sent: read them before anything parses them.
    body = await request.body()
    headers = {name: request.headers.get(name, "") for name in WEBHOOK_HEADERS}
    return await run_in_threadpool(_receive, platform, headers, body)


def _receive(platform: Platform, headers: dict[str, str], body: bytes) -> FalWebhookOut:
    provider = platform.provider
    if not isinstance(provider, FalProvider):
        raise NotFound("Not Found")
    # Checking the signature may fetch fal's keys: no transaction is open yet.
    # fal stamps its signatures with real time: check them against the job
    # clock, which the sandbox test clock's jumps do not move.
    webhooks = FalWebhooks(platform.job_clock, provider, platform.wakeups)
    webhook = webhooks.verify(headers, body)
    with platform.db.read() as conn:
        if webhooks.seen(conn, webhook):
            return FalWebhookOut(request_id=webhook.request_id, outcome="duplicate")
    try:
        with platform.db.write() as conn:
            recorded = webhooks.record(conn, webhook)
    except IntegrityError:
        # Another delivery of the same webhook won the race and recorded it.
        with platform.db.read() as conn:
            if not webhooks.seen(conn, webhook):
                raise
        return FalWebhookOut(request_id=webhook.request_id, outcome="duplicate")
    return FalWebhookOut(request_id=webhook.request_id, outcome=recorded.outcome or "duplicate")

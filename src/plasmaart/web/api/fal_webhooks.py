"""fal's webhook: ``POST /v1/webhooks/fal``.

Public: what authenticates it is the ED25519 signature in fal's
``X-Fal-Webhook-*`` headers, checked (``SignedFalWebhook``) before any
transaction opens, since it may fetch fal's keys. Each delivery is then
recorded once by fal's request id and wakes the worker running that
generation, which then polls fal for the result
(``plasmaart.generation.providers.fal.webhooks``). A repeat changes nothing;
an unknown request id is recorded and acknowledged, so fal never retries it.
Unless the provider is fal the route is absent in effect (404).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from plasmaart.errors import NotFound
from plasmaart.generation.providers.fal.client import FalProvider
from plasmaart.generation.providers.fal.verification import WEBHOOK_HEADERS
from plasmaart.generation.providers.fal.webhooks import FalWebhook, FalWebhooks
from plasmaart.web.deps import PlatformDep

router = APIRouter(prefix="/v1", tags=["generations"])


class FalWebhookOut(BaseModel):
    request_id: str = Field(description="fal's request id, from the signed headers")
    outcome: Literal["woken", "finished", "unknown_request", "duplicate"] = Field(
        description="`woken`: the worker running the generation polls fal now; "
        "`finished`: the generation had already ended; `unknown_request`: no "
        "generation has this request id; `duplicate`: this delivery was received before"
    )


def _fal_webhooks(platform: PlatformDep) -> FalWebhooks:
    provider = platform.provider
    if not isinstance(provider, FalProvider):
        raise NotFound("Not Found")
    # fal stamps its signatures with real time: check them against the job
    # clock, which the sandbox test clock's jumps do not move.
    return FalWebhooks(platform.job_clock, provider, platform.wakeups)


FalWebhooksDep = Annotated[FalWebhooks, Depends(_fal_webhooks)]


async def _signed_webhook(request: Request, webhooks: FalWebhooksDep) -> FalWebhook:
    # The signature is over the exact bytes sent: read them before anything parses them.
    body = await request.body()
    headers = {name: request.headers.get(name, "") for name in WEBHOOK_HEADERS}
    return await run_in_threadpool(webhooks.verify, headers, body)


SignedFalWebhook = Annotated[FalWebhook, Depends(_signed_webhook)]


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
def fal_webhook(
    webhook: SignedFalWebhook, webhooks: FalWebhooksDep, platform: PlatformDep
) -> FalWebhookOut:
    """fal's completion callbacks, each recorded once by its request id."""
    with platform.db.write() as conn:
        recorded = webhooks.record(conn, webhook)
    return FalWebhookOut(request_id=recorded.request_id, outcome=recorded.outcome)

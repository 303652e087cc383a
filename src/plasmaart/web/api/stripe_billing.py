"""Stripe's routes: its webhook, and the customer portal.

``POST /v1/webhooks/stripe`` is public: what authenticates it is the
``Stripe-Signature`` header (``plasmaart.billing.stripe.webhooks``). It
answers quickly, as Stripe wants: ``plasmaart.billing.stripe.delivery``
receives each delivery. Under sandbox billing both routes are absent in
effect (404, and 409 ``billing_portal_unavailable``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from plasmaart.billing.stripe.errors import BillingPortalUnavailable
from plasmaart.errors import NotFound
from plasmaart.platform import Platform
from plasmaart.web.auth import CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.schemas import shape

if TYPE_CHECKING:
    from plasmaart.billing.stripe import StripeBackend

router = APIRouter(prefix="/v1", tags=["billing"])


class PortalOut(BaseModel):
    url: str = Field(description="Stripe's customer portal, for this customer, for a while")


class WebhookOut(BaseModel):
    event_id: str
    outcome: Literal["applied", "ignored", "unknown_customer", "duplicate"]
    detail: str | None = None


def _stripe(platform: Platform) -> StripeBackend | None:
    backend = platform.billing.backends.get("stripe")
    if backend is None:
        return None  # the sandbox: the Stripe SDK is never imported
    from plasmaart.billing.stripe import StripeBackend

    return backend if isinstance(backend, StripeBackend) else None


@router.post(
    "/billing/portal",
    response_model=PortalOut,
    responses={
        409: {
            "description": "`billing_portal_unavailable`: billing is the sandbox, "
            "or you never paid through Stripe"
        }
    },
)
def billing_portal(principal: CurrentPrincipal, platform: PlatformDep) -> PortalOut:
    """A Stripe customer portal session: your cards, invoices and plan."""
    backend = _stripe(platform)
    if backend is None:
        raise BillingPortalUnavailable(
            "this server bills through the sandbox, which has no customer portal"
        )
    with platform.db.read() as conn:
        return PortalOut(url=backend.portal_url(conn, principal.user.id))


@router.post(
    "/webhooks/stripe",
    response_model=WebhookOut,
    responses={
        400: {"description": "`invalid_signature`: missing, forged or stale `Stripe-Signature`"},
        404: {"description": "Billing is not Stripe"},
    },
)
async def stripe_webhook(
    request: Request,
    platform: PlatformDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookOut:
    """Stripe's events, each applied exactly once by its id, in any order."""
    # The signature is over the exact bytes sent: read them before anything parses them.
    payload = await request.body()
    return await run_in_threadpool(_receive, platform, payload, stripe_signature)


def _receive(platform: Platform, payload: bytes, signature: str | None) -> WebhookOut:
    backend = _stripe(platform)
    secret = platform.settings.stripe_webhook_secret
    if backend is None or not secret:
        raise NotFound("Not Found")
    from plasmaart.billing.stripe import StripeWebhooks
    from plasmaart.billing.stripe.delivery import receive

    webhooks = StripeWebhooks(platform.clock, platform.billing, backend, secret=secret)
    return shape(WebhookOut, receive(platform.db, webhooks, payload, signature))

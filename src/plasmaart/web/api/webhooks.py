"""Outbound webhooks (API.md "Outbound webhooks", docs/webhooks.md): the
caller's endpoints, their secrets and rotations, the delivery log and
replays, and the account's own secret for per-generation ``webhook_url``s.

Only ever the caller's own: another user's endpoint id answers 404."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from plasmaart.clock import as_utc
from plasmaart.db.values import WebhookDeliveryStatus, WebhookEventType
from plasmaart.errors import InvalidInput
from plasmaart.outbox.webhooks import EVENT_TYPES
from plasmaart.web.auth import CurrentPrincipal
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.idempotency import SECRET_FIELDS_HEADER
from plasmaart.web.pagination import decode_cursor, encode_cursor
from plasmaart.web.schemas import StrictBody
from plasmaart.webhook_urls import MAX_URL_LENGTH
from plasmaart.webhooks.endpoints import (
    Attempt,
    Delivery,
    Endpoint,
    EndpointChange,
    secret_hint,
)

router = APIRouter(prefix="/v1", tags=["webhooks"])

Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="An https:// (or http://) URL whose host resolves only to public addresses",
    ),
]
Events = Annotated[
    list[str],
    Field(
        max_length=len(EVENT_TYPES) * 4,
        description=f"A non-empty subset of: {', '.join(EVENT_TYPES)}",
    ),
]
Description = Annotated[str, Field(max_length=200)]


class EndpointIn(StrictBody):
    url: Url
    events: Events
    description: Description = ""


class EndpointPatch(StrictBody):
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = Field(
        default=None,
        description="false disables it; true enables it again (forgetting since when it failed)",
    )


class EndpointOut(BaseModel):
    id: str
    url: str
    events: list[WebhookEventType]
    description: str
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None = Field(
        description="Why it is disabled: by you, or after days of failed deliveries"
    )
    failing_since: datetime | None = Field(
        description="Since when every delivery failed (null: the last one succeeded)"
    )
    secret_hint: str = Field(description="The secret's prefix and last four characters")
    previous_secret_expires_at: datetime | None = Field(
        description="Until when the secret replaced by the last rotation signs too"
    )
    created_at: datetime
    updated_at: datetime


class NewEndpointOut(EndpointOut):
    secret: str = Field(description="The whsec_ signing secret. Shown only in this response.")


class EndpointList(BaseModel):
    data: list[EndpointOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status (null: no answer)")
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str
    event_id: str = Field(description="The webhook-id the receiver sees (the same on a replay)")
    type: WebhookEventType
    url: str
    status: WebhookDeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut] = Field(description="Every attempt, oldest first")


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None


class SecretOut(BaseModel):
    secret: str = Field(description="The account's whsec_ secret")


def endpoint_out(endpoint: Endpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        secret_hint=secret_hint(endpoint.secret),
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def new_endpoint_out(endpoint: Endpoint, response: Response) -> NewEndpointOut:
    response.headers[SECRET_FIELDS_HEADER] = "secret"
    return NewEndpointOut(**endpoint_out(endpoint).model_dump(), secret=endpoint.secret)


def delivery_out(delivery: Delivery, attempts: tuple[Attempt, ...] = ()) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        event_id=delivery.event_id,
        type=delivery.type,
        url=delivery.url,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        attempt_log=[
            AttemptOut(
                attempted_at=a.attempted_at,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in attempts
        ],
    )


def _delivery_cursor(delivery: Delivery) -> str:
    return encode_cursor(f"{delivery.created_at.isoformat()}|{delivery.id}")


def _delivery_position(cursor: str) -> tuple[datetime, str]:
    created_at, _, delivery_id = decode_cursor(cursor).partition("|")
    try:
        when = as_utc(datetime.fromisoformat(created_at))
    except (ValueError, OverflowError):
        raise InvalidInput("not a cursor this API handed out", field="cursor") from None
    if not delivery_id:
        raise InvalidInput("not a cursor this API handed out", field="cursor")
    return when, delivery_id


@router.post("/webhook-endpoints", status_code=201, response_model=NewEndpointOut)
def create_endpoint(
    body: EndpointIn, response: Response, principal: CurrentPrincipal, platform: PlatformDep
) -> NewEndpointOut:
    """A new endpoint; its signing secret is in ``secret`` and never shown again."""
    url = platform.webhook_endpoints.check_url(body.url)
    with platform.db.write() as conn:
        endpoint = platform.webhook_endpoints.create(
            conn, principal.user.id, url, body.events, body.description
        )
    return new_endpoint_out(endpoint, response)


@router.get("/webhook-endpoints", response_model=EndpointList)
def list_endpoints(
    principal: CurrentPrincipal, platform: PlatformDep, paging: PageQuery
) -> EndpointList:
    """Your endpoints, oldest first (never their secrets)."""
    with platform.db.read() as conn:
        endpoints = platform.webhook_endpoints.endpoints_of(conn, principal.user.id)
    keys = [e.id for e in endpoints]
    start = 0
    if paging.cursor is not None:
        after = decode_cursor(paging.cursor)
        if after not in keys:
            raise InvalidInput("this cursor no longer points into the list", field="cursor")
        start = keys.index(after) + 1
    chunk = endpoints[start : start + paging.limit]
    more = start + paging.limit < len(endpoints)
    return EndpointList(
        data=[endpoint_out(e) for e in chunk],
        next_cursor=encode_cursor(chunk[-1].id) if more and chunk else None,
    )


@router.get("/webhook-endpoints/{endpoint_id}", response_model=EndpointOut)
def get_endpoint(
    endpoint_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> EndpointOut:
    with platform.db.read() as conn:
        endpoint = platform.webhook_endpoints.get(conn, principal.user.id, endpoint_id)
    return endpoint_out(endpoint)


@router.patch("/webhook-endpoints/{endpoint_id}", response_model=EndpointOut)
def change_endpoint(
    endpoint_id: str, body: EndpointPatch, principal: CurrentPrincipal, platform: PlatformDep
) -> EndpointOut:
    """Change the URL, the events, the description, or enable/disable it."""
    url = None if body.url is None else platform.webhook_endpoints.check_url(body.url)
    change = EndpointChange(
        url=url, events=body.events, description=body.description, enabled=body.enabled
    )
    with platform.db.write() as conn:
        endpoint = platform.webhook_endpoints.change(conn, principal.user.id, endpoint_id, change)
    return endpoint_out(endpoint)


@router.delete("/webhook-endpoints/{endpoint_id}", response_model=EndpointOut)
def delete_endpoint(
    endpoint_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> EndpointOut:
    """Delete the endpoint and its delivery log: nothing more is sent to it."""
    with platform.db.write() as conn:
        endpoint = platform.webhook_endpoints.delete(conn, principal.user.id, endpoint_id)
    return endpoint_out(endpoint)


@router.post("/webhook-endpoints/{endpoint_id}/rotate-secret", response_model=NewEndpointOut)
def rotate_endpoint_secret(
    endpoint_id: str, response: Response, principal: CurrentPrincipal, platform: PlatformDep
) -> NewEndpointOut:
    """A new secret (in ``secret``, shown only here); the old one signs too for 24 hours."""
    with platform.db.write() as conn:
        endpoint = platform.webhook_endpoints.rotate(conn, principal.user.id, endpoint_id)
    return new_endpoint_out(endpoint, response)


@router.get("/webhook-endpoints/{endpoint_id}/deliveries", response_model=DeliveryList)
def list_deliveries(
    endpoint_id: str, principal: CurrentPrincipal, platform: PlatformDep, paging: PageQuery
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts."""
    before = None if paging.cursor is None else _delivery_position(paging.cursor)
    with platform.db.read() as conn:
        log = platform.webhook_endpoints.deliveries(
            conn, principal.user.id, endpoint_id, limit=paging.limit, before=before
        )
    data = [delivery_out(d.delivery, d.attempts) for d in log.deliveries]
    last = log.deliveries[-1].delivery if log.deliveries else None
    return DeliveryList(
        data=data, next_cursor=_delivery_cursor(last) if log.more and last else None
    )


@router.post(
    "/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryOut,
)
def replay_delivery(
    endpoint_id: str, delivery_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> DeliveryOut:
    """Send the delivery's event again, now: a new delivery with the same ``webhook-id``."""
    with platform.db.write() as conn:
        delivery = platform.webhook_endpoints.replay(
            conn, principal.user.id, endpoint_id, delivery_id
        )
    return delivery_out(delivery)


@router.get("/webhook-secret", response_model=SecretOut)
def account_secret(principal: CurrentPrincipal, platform: PlatformDep) -> SecretOut:
    """The account's own secret, which signs deliveries to a per-generation
    ``webhook_url`` (made on first use)."""
    with platform.db.write() as conn:
        secret = platform.webhook_endpoints.account_secret(conn, principal.user.id)
    return SecretOut(secret=secret)


@router.post("/webhook-secret/rotate", response_model=SecretOut)
def rotate_account_secret(
    response: Response, principal: CurrentPrincipal, platform: PlatformDep
) -> SecretOut:
    """A new account secret, in force at once: the old one signs nothing more."""
    response.headers[SECRET_FIELDS_HEADER] = "secret"
    with platform.db.write() as conn:
        secret = platform.webhook_endpoints.rotate_account_secret(conn, principal.user.id)
    return SecretOut(secret=secret)

"""``GET /v1/events`` (the caller's live events as Server-Sent Events) and the
in-app notifications: ``GET /v1/notifications``,
``POST /v1/notifications/{id}/read``."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from plasmaart.errors import InvalidInput
from plasmaart.eventbus import Event, Subscription
from plasmaart.notify.notifications import ID_PREFIX
from plasmaart.web.auth import CurrentPrincipal
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.pagination import Page, decode_cursor, encode_cursor
from plasmaart.web.schemas import shape

router = APIRouter(prefix="/v1", tags=["events"])

# A comment line this often keeps proxies from closing an idle stream and
# lets the server notice a client that went away.
HEARTBEAT_S = 15.0
RETRY_MS = 3000
PING = b": ping\n\n"

_STREAM_DESCRIPTION = f"""Server-Sent Events for the caller, starting with `retry: {RETRY_MS}`.

Each event is `id: <n>`, `event: <type>`, `data: <json>`. Types:
`balance.updated` (`{{available, held}}`), `notification` (the notification
object), `generation.updated` (a generation's id, status, credits, `balance_after`,
`queue_position` and error: fetch the generation for its outputs; the caller's own,
and every generation of the caller's teams), and `resync`: events
may have been missed (a slow client, a reconnect), so fetch the current state
again. A `: ping` comment comes every {HEARTBEAT_S:g} seconds."""


def sse_frame(event_id: int, event: Event) -> bytes:
    # JSON text never contains a raw newline, so one data line suffices.
    return f"id: {event_id}\nevent: {event.type}\ndata: {event.data_json}\n\n".encode()


async def event_stream(subscription: Subscription, *, resumed: bool) -> AsyncIterator[bytes]:
    """The bytes of one stream: the retry hint, then events and heartbeats."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    ids = itertools.count(1)
    if resumed:
        # The client reconnected: whatever happened in between is lost.
        yield sse_frame(next(ids), Event.resync("reconnected"))
    while True:
        event = await subscription.next(HEARTBEAT_S)
        yield PING if event is None else sse_frame(next(ids), event)


class _EventStreamResponse(StreamingResponse):
    """Unsubscribes however the response ends, including a client that
    disconnects while the stream waits (the task is cancelled then)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@router.get(
    "/events",
    response_class=StreamingResponse,
    summary="Live events (Server-Sent Events)",
    description=_STREAM_DESCRIPTION,
    responses={
        200: {
            "description": "An endless `text/event-stream`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def events(
    request: Request, principal: CurrentPrincipal, platform: PlatformDep
) -> StreamingResponse:
    bus = platform.events
    subscription = bus.subscribe(principal.user.id)
    resumed = request.headers.get("last-event-id") is not None
    return _EventStreamResponse(
        event_stream(subscription, resumed=resumed), partial(bus.unsubscribe, subscription)
    )


class NotificationOut(BaseModel):
    id: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


@router.get("/notifications", response_model=Page[NotificationOut], tags=["notifications"])
def list_notifications(
    principal: CurrentPrincipal,
    platform: PlatformDep,
    unread: Annotated[bool, Query(description="Only unread notifications")] = False,
    *,
    paging: PageQuery,
) -> Page[NotificationOut]:
    """Your notifications, newest first."""
    cursor, after = paging.cursor, None
    if cursor is not None:
        after = decode_cursor(cursor)
        if not after.startswith(ID_PREFIX + "_"):
            raise InvalidInput("not a cursor this API handed out", field="cursor")
    with platform.db.read() as conn:
        page = platform.notifications.list(
            conn, principal.user.id, limit=paging.limit, cursor=after, unread_only=unread
        )
    return Page[NotificationOut](
        data=[shape(NotificationOut, item) for item in page.items],
        next_cursor=None if page.next_cursor is None else encode_cursor(page.next_cursor),
    )


@router.post(
    "/notifications/{notification_id}/read",
    response_model=NotificationOut,
    tags=["notifications"],
    responses={404: {"description": "No such notification of yours"}},
)
def mark_notification_read(
    notification_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> NotificationOut:
    """Mark a notification read; marking it again changes nothing."""
    with platform.db.write() as conn:
        notification = platform.notifications.mark_read(conn, principal.user.id, notification_id)
    return shape(NotificationOut, notification)

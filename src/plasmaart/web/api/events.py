"""``GET /v1/events`` (the caller's live events as Server-Sent Events) and the
in-app notifications: ``GET /v1/notifications``,
``POST /v1/notifications/{id}/read``."""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
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
# When this process shuts down (a restart, a deploy), open streams end at once
# with this retry hint: the client reconnects soon, to a process that serves.
RETRY_ON_SHUTDOWN_MS = 1000
SHUTDOWN_FRAME = f": server shutting down, reconnect\nretry: {RETRY_ON_SHUTDOWN_MS}\n\n".encode()
# Queued to a stream's subscription to end it: a type no publisher can use.
_END = Event("<end>", "null")

_STREAM_DESCRIPTION = f"""Server-Sent Events for the caller, starting with `retry: {RETRY_MS}`.

Each event is `id: <n>`, `event: <type>`, `data: <json>`. Types:
`balance.updated` (`{{available, held}}`), `notification` (the notification
object), `generation.updated` (a generation's id, status, credits, `balance_after`,
`queue_position` and error: fetch the generation for its outputs; the caller's own,
and every generation of the caller's teams), and `resync`: events
may have been missed (a slow client, a reconnect), so fetch the current state
again. A `: ping` comment comes every {HEARTBEAT_S:g} seconds.

When the server process shuts down (a restart, a deploy), the stream ends at
once with `retry: {RETRY_ON_SHUTDOWN_MS}`: reconnect (with `Last-Event-ID`)
and another process answers."""


class OpenStreams:
    """The event streams this process serves, so that a shutdown can end
    them all at once (``end_all``, from any thread, a signal handler too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Subscription] = set()
        self.ending = False

    def add(self, subscription: Subscription) -> bool:
        """Keep ``subscription``; False once the process is shutting down."""
        with self._lock:
            if self.ending:
                return False
            self._open.add(subscription)
            return True

    def discard(self, subscription: Subscription) -> None:
        with self._lock:
            self._open.discard(subscription)

    def end_all(self) -> int:
        """End every open stream (after what it has queued) and refuse new
        ones; how many were open."""
        with self._lock:
            self.ending = True
            streams = list(self._open)
        for subscription in streams:
            subscription.deliver(_END)
        return len(streams)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


def sse_frame(event_id: int, event: Event) -> bytes:
    # JSON text never contains a raw newline, so one data line suffices.
    return f"id: {event_id}\nevent: {event.type}\ndata: {event.data_json}\n\n".encode()


async def event_stream(
    subscription: Subscription, *, resumed: bool, ending: bool = False
) -> AsyncIterator[bytes]:
    """The bytes of one stream: the retry hint, then events and heartbeats,
    until the process shuts down (``ending``: it already is)."""
    if ending:
        yield SHUTDOWN_FRAME
        return
    yield f"retry: {RETRY_MS}\n\n".encode()
    ids = itertools.count(1)
    if resumed:
        # The client reconnected: whatever happened in between is lost.
        yield sse_frame(next(ids), Event.resync("reconnected"))
    while True:
        event = await subscription.next(HEARTBEAT_S)
        if event is _END:
            yield SHUTDOWN_FRAME
            return
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
    streams: OpenStreams = request.app.state.streams
    subscription = bus.subscribe(principal.user.id)
    open_now = streams.add(subscription)
    resumed = request.headers.get("last-event-id") is not None

    def close() -> None:
        streams.discard(subscription)
        bus.unsubscribe(subscription)

    return _EventStreamResponse(
        event_stream(subscription, resumed=resumed, ending=not open_now), close
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

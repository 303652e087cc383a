"""In-app notifications: stored, announced live after commit, listed newest
first with keyset pagination, marked read; never another user's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import notifications
from plasmaart.eventbus import Event
from plasmaart.notify.notifications import Notification
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.live_server import WAIT_S, live_server, open_stream

PROBLEM = "application/problem+json"


def notify(platform: Platform, user: TestUser, title: str, **data: Any) -> Notification:
    with platform.db.write() as conn:
        return platform.notifications.notify(
            conn, user.id, "catalog.change", title, f"{title}: the details.", data
        )


def notify_many(platform: Platform, user: TestUser, count: int) -> list[str]:
    """``count`` notifications, oldest first; ids are time-ordered by the
    millisecond, so each waits for the next one."""
    ids = []
    for n in range(count):
        ids.append(notify(platform, user, f"Notice {n}").id)
        time.sleep(0.002)
    return ids


def stored_count(platform: Platform) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(notifications)).scalar_one())


@pytest.fixture
def alice(platform: Platform) -> TestUser:
    return make_user(platform, "alice@example.com")


@pytest.fixture
def bob(platform: Platform) -> TestUser:
    return make_user(platform, "bob@example.com")


@pytest.fixture
def server(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from plasmaart.web.api import events as events_api

    monkeypatch.setattr(events_api, "HEARTBEAT_S", 0.2)
    with live_server(platform) as base_url:
        yield base_url


def test_a_notification_is_streamed_and_listed(
    platform: Platform, server: str, alice: TestUser, bob: TestUser, client: TestClient
) -> None:
    with (
        open_stream(server, alice.auth) as alice_events,
        open_stream(server, bob.auth) as bob_events,
    ):
        created = notify(platform, alice, "Flux Pro costs 3 credits from March 1", model="flux-pro")
        event = alice_events.next_event()
        assert event.event == "notification"
        listed = client.get("/v1/notifications", headers=alice.auth).json()
        assert listed == {"data": [event.data], "next_cursor": None}
        assert event.data == {
            "id": created.id,
            "kind": "catalog.change",
            "title": "Flux Pro costs 3 credits from March 1",
            "body": "Flux Pro costs 3 credits from March 1: the details.",
            "data": {"model": "flux-pro"},
            "created_at": "2026-01-01T00:00:00Z",
            "read_at": None,
        }
        assert bob_events.events_during(1.0) == []
    assert client.get("/v1/notifications", headers=bob.auth).json() == {
        "data": [],
        "next_cursor": None,
    }


def test_a_rolled_back_notification_is_neither_stored_nor_sent(
    platform: Platform, alice: TestUser
) -> None:
    class Abort(Exception):
        pass

    def notify_then_fail() -> None:
        with platform.db.write() as conn:
            platform.notifications.notify(conn, alice.id, "billing.failed", "Payment failed", "")
            raise Abort

    async def scenario() -> Event | None:
        platform.events.start()
        subscription = platform.events.subscribe(alice.id)
        try:
            with pytest.raises(Abort):
                notify_then_fail()
            notify(platform, alice, "Welcome")
            return await subscription.next(WAIT_S)
        finally:
            platform.events.unsubscribe(subscription)

    event = asyncio.run(scenario())
    # Had the rolled-back one been sent, it would have come first.
    assert event is not None
    assert (event.type, event.data()["title"]) == ("notification", "Welcome")
    assert stored_count(platform) == 1


def test_the_list_pages_newest_first(
    platform: Platform, client: TestClient, alice: TestUser, bob: TestUser
) -> None:
    ids = notify_many(platform, alice, 5)
    notify(platform, bob, "Bob's own")
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/notifications", params=params, headers=alice.auth).json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    # A new notification does not shift the pages of a listing in progress.
    first = client.get("/v1/notifications", params={"limit": "2"}, headers=alice.auth).json()
    notify(platform, alice, "Newer")
    second = client.get(
        "/v1/notifications",
        params={"limit": "2", "cursor": first["next_cursor"]},
        headers=alice.auth,
    ).json()
    assert [item["id"] for item in second["data"]] == [ids[2], ids[1]]


def test_mark_read_and_the_unread_filter(
    platform: Platform, client: TestClient, clock: ManualClock, alice: TestUser
) -> None:
    ids = notify_many(platform, alice, 3)
    clock.advance(timedelta(hours=1))
    answer = client.post(f"/v1/notifications/{ids[1]}/read", headers=alice.auth)
    assert answer.status_code == 200
    assert (answer.json()["id"], answer.json()["read_at"]) == (ids[1], "2026-01-01T01:00:00Z")
    # Marking again keeps the first time it was read.
    clock.advance(timedelta(hours=1))
    again = client.post(f"/v1/notifications/{ids[1]}/read", headers=alice.auth).json()
    assert again["read_at"] == "2026-01-01T01:00:00Z"
    unread = client.get("/v1/notifications", params={"unread": "true"}, headers=alice.auth)
    assert [item["id"] for item in unread.json()["data"]] == [ids[2], ids[0]]
    everything = client.get("/v1/notifications", headers=alice.auth).json()["data"]
    assert [(item["id"], item["read_at"]) for item in everything] == [
        (ids[2], None),
        (ids[1], "2026-01-01T01:00:00Z"),
        (ids[0], None),
    ]
    page = client.get(
        "/v1/notifications", params={"unread": "true", "limit": "1"}, headers=alice.auth
    ).json()
    rest = client.get(
        "/v1/notifications",
        params={"unread": "true", "limit": "1", "cursor": page["next_cursor"]},
        headers=alice.auth,
    ).json()
    assert [item["id"] for item in page["data"] + rest["data"]] == [ids[2], ids[0]]
    assert rest["next_cursor"] is None


def test_another_users_notification_is_not_found(
    platform: Platform, client: TestClient, alice: TestUser, bob: TestUser
) -> None:
    created = notify(platform, alice, "For Alice only")
    for user, notification_id in ((bob, created.id), (alice, "ntf_does_not_exist")):
        answer = client.post(f"/v1/notifications/{notification_id}/read", headers=user.auth)
        assert answer.status_code == 404
        assert answer.headers["content-type"] == PROBLEM
        assert answer.json()["code"] == "not_found"
    with platform.db.read() as conn:
        assert platform.notifications.get(conn, alice.id, created.id).read_at is None


def test_notifications_need_authentication(
    platform: Platform, client: TestClient, alice: TestUser
) -> None:
    created = notify(platform, alice, "Private")
    for answer in (
        client.get("/v1/notifications"),
        client.post(f"/v1/notifications/{created.id}/read"),
    ):
        assert answer.status_code == 401
        assert answer.json()["code"] == "unauthenticated"
    with platform.db.read() as conn:
        assert platform.notifications.get(conn, alice.id, created.id).read_at is None


def test_a_session_must_send_its_csrf_token_to_mark_read(
    platform: Platform, client: TestClient
) -> None:
    signed_up = client.post(
        "/v1/auth/signup", json={"email": "carol@example.com", "password": PASSWORD}
    )
    user_id = signed_up.json()["user"]["id"]
    with platform.db.write() as conn:
        created = platform.notifications.notify(conn, user_id, "welcome", "Welcome", "Hello.")
    assert client.get("/v1/notifications").json()["data"][0]["id"] == created.id
    refused = client.post(f"/v1/notifications/{created.id}/read")
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    accepted = client.post(
        f"/v1/notifications/{created.id}/read",
        headers={"X-CSRF-Token": client.cookies["pa_csrf"]},
    )
    assert accepted.status_code == 200
    assert accepted.json()["read_at"] is not None


def test_bad_list_parameters_are_refused(client: TestClient, alice: TestUser) -> None:
    for params in ({"cursor": "!!"}, {"cursor": "dXNyXzE"}, {"limit": "0"}, {"limit": "201"}):
        answer = client.get("/v1/notifications", params=params, headers=alice.auth)
        assert answer.status_code == 422, params
        assert answer.json()["code"] == "invalid_input"


def test_a_long_title_is_shortened_not_refused(platform: Platform, alice: TestUser) -> None:
    created = notify(platform, alice, "A team called " + "x" * 300)
    with platform.db.read() as conn:
        stored = platform.notifications.get(conn, alice.id, created.id)
    assert len(stored.title) == 200
    assert stored.title.endswith("…")
    assert stored == created

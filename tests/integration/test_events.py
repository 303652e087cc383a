"""Live events: ``GET /v1/events`` through a real HTTP server, and the bus
underneath it (in-process on SQLite, LISTEN/NOTIFY across processes on
PostgreSQL). Every wait is bounded, so a lost event fails instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from plasmaart.clock import ManualClock
from plasmaart.db.engine import normalise_url
from plasmaart.eventbus import (
    NOTIFY_LIMIT,
    Event,
    InProcessEventBus,
    LocalSocketEventBus,
    PostgresEventBus,
    notify_payloads,
)
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger import repository as ledger_repo
from plasmaart.ledger.balance_events import BalanceEvents
from plasmaart.platform import Platform
from plasmaart.web.api import events as events_api
from tests.support.accounts import TestUser, make_user
from tests.support.live_server import WAIT_S, EventStream, live_server, open_stream
from tests.support.platforms import running_platform, settings_for

HEARTBEAT_S = 0.2


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_api, "HEARTBEAT_S", HEARTBEAT_S)


@pytest.fixture
def server(platform: Platform, fast_heartbeat: None) -> Iterator[str]:
    with live_server(platform) as base_url:
        yield base_url


@pytest.fixture
def publisher(
    platform: Platform, database_url: str, clock: ManualClock, tmp_path: Path
) -> Iterator[Platform]:
    """Where events are published from: another "process" (a second Platform
    on the same database: NOTIFY on PostgreSQL, the file's peer sockets on
    SQLite)."""
    with running_platform(settings_for(database_url, tmp_path / "other"), clock) as other:
        yield other


def grant(platform: Platform, user: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        platform.ledger.grant(conn, user.wallet_id, credits, source="purchase", idempotency_key=key)


def wait_until(condition: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- GET /v1/events ------------------------------------------------------------


def test_balance_update_reaches_only_the_wallet_owner(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com", credits=10)
    bob = make_user(platform, "bob@example.com", credits=3)
    with (
        open_stream(server, alice.auth) as alice_events,
        open_stream(server, bob.auth) as bob_events,
    ):
        grant(platform, alice, 25, "grant-alice")
        event = alice_events.next_event()
        assert (event.id, event.event, event.data) == (
            "1",
            "balance.updated",
            {"available": 35, "held": 0},
        )
        with platform.db.write() as conn:
            platform.ledger.hold(conn, alice.wallet_id, 5, idempotency_key="hold-alice")
        event = alice_events.next_event()
        assert (event.id, event.event, event.data) == (
            "2",
            "balance.updated",
            {"available": 30, "held": 5},
        )
        # Bob's stream carries heartbeats and nothing of Alice's.
        assert bob_events.events_during(4 * HEARTBEAT_S) == []
        grant(platform, bob, 1, "grant-bob")
        event = bob_events.next_event()
        assert (event.event, event.data) == ("balance.updated", {"available": 4, "held": 0})
        assert alice_events.events_during(4 * HEARTBEAT_S) == []


def test_a_rolled_back_change_sends_no_event(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")

    class Abort(Exception):
        pass

    def grant_then_fail() -> None:
        with platform.db.write() as conn:
            platform.ledger.grant(
                conn, alice.wallet_id, 50, source="purchase", idempotency_key="rolled-back"
            )
            raise Abort

    with open_stream(server, alice.auth) as stream:
        with pytest.raises(Abort):
            grant_then_fail()
        grant(platform, alice, 7, "committed")
        # Had the rolled-back grant been announced, it would come first.
        event = stream.next_event()
        assert (event.event, event.data) == ("balance.updated", {"available": 7, "held": 0})


def test_events_from_another_process_reach_the_stream(
    platform: Platform, publisher: Platform, server: str
) -> None:
    expected = LocalSocketEventBus if platform.db.is_sqlite else PostgresEventBus
    assert type(platform.events) is expected
    assert type(publisher.events) is expected
    alice = make_user(platform, "alice@example.com")
    bob = make_user(platform, "bob@example.com")
    with open_stream(server, alice.auth) as stream:
        grant(publisher, alice, 12, "from-the-worker")
        event = stream.next_event()
        assert (event.event, event.data) == ("balance.updated", {"available": 12, "held": 0})
        generation = {"id": "gen_1", "status": "running", "queue_position": None}
        publisher.events.publish([bob.id, alice.id], "generation.updated", generation)
        event = stream.next_event()
        assert (event.id, event.event, event.data) == ("2", "generation.updated", generation)


def next_generation_update(stream: EventStream) -> dict[str, Any]:
    """The data of the stream's next ``generation.updated`` (other events skipped)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        event = stream.next_event()
        if event.event == "generation.updated":
            data: dict[str, Any] = event.data
            return data
    raise AssertionError("no generation.updated in time")


def generation_updates(stream: EventStream, seconds: float) -> list[dict[str, Any]]:
    return [e.data for e in stream.events_during(seconds) if e.event == "generation.updated"]


def test_team_generation_events_reach_every_current_member_and_nobody_else(
    platform: Platform, publisher: Platform, server: str
) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    member = make_user(platform, "member@example.com")
    former = make_user(platform, "former@example.com")
    outsider = make_user(platform, "outsider@example.com", plan="studio")
    teams = platform.teams
    with platform.db.write() as conn:
        team = teams.create_team(conn, platform.accounts.get(conn, owner.id), "Night Shift")
        invitations = [teams.invite(conn, team.id, owner.id, u.email) for u in (member, former)]
    for user, invitation in zip((member, former), invitations, strict=True):
        with platform.db.write() as conn:
            teams.accept_invitation(conn, invitation.token, platform.accounts.get(conn, user.id))
    with platform.db.write() as conn:
        teams.remove_member(conn, team.id, owner.id, former.id)

    def submit(user: TestUser, team_id: str | None) -> str:
        # From the other "process" on PostgreSQL: the event crosses LISTEN/NOTIFY.
        with publisher.db.write() as conn:
            request = GenerationRequest("flux-schnell", "a heron", team_id=team_id)
            account = publisher.accounts.get(conn, user.id)
            return publisher.generations.submit(conn, account, request).id

    with (
        open_stream(server, owner.auth) as owner_events,
        open_stream(server, member.auth) as member_events,
        open_stream(server, former.auth) as former_events,
        open_stream(server, outsider.auth) as outsider_events,
    ):
        by_member = submit(member, team.id)
        for stream in (owner_events, member_events):
            update = next_generation_update(stream)
            assert (update["id"], update["status"]) == (by_member, "queued")
        by_owner = submit(owner, team.id)
        assert next_generation_update(member_events)["id"] == by_owner
        assert next_generation_update(owner_events)["id"] == by_owner
        # The owner's personal generations stay the owner's.
        personal = submit(owner, None)
        assert next_generation_update(owner_events)["id"] == personal
        assert generation_updates(member_events, 4 * HEARTBEAT_S) == []
        assert generation_updates(former_events, HEARTBEAT_S) == []
        assert generation_updates(outsider_events, HEARTBEAT_S) == []


def test_a_reconnecting_client_is_told_to_resync(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")
    with open_stream(server, alice.auth, last_event_id="41") as stream:
        event = stream.next_event()
        assert (event.id, event.event, event.data) == ("1", "resync", {"reason": "reconnected"})
        grant(platform, alice, 2, "after-reconnect")
        assert stream.next_event().event == "balance.updated"


def test_closing_the_stream_removes_the_subscription(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")
    with open_stream(server, alice.auth), open_stream(server, alice.auth) as second:
        assert platform.events.subscriber_count(alice.id) == 2
        # Both of a user's streams get the user's events.
        grant(platform, alice, 1, "two-streams")
        assert second.next_event().data == {"available": 1, "held": 0}
    wait_until(lambda: platform.events.subscriber_count() == 0, "the subscriptions to end")


def test_events_need_authentication(client: TestClient, platform: Platform) -> None:
    answer = client.get("/v1/events")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "unauthenticated"
    answer = client.get("/v1/events", headers={"Authorization": "Bearer pa_not_a_key"})
    assert answer.status_code == 401
    assert platform.events.subscriber_count() == 0


# -- the bus -----------------------------------------------------------------


def test_a_slow_subscriber_loses_the_oldest_and_is_told_to_resync() -> None:
    bus = InProcessEventBus()

    async def scenario() -> list[Event | None]:
        subscription = bus.subscribe("usr_slow", capacity=3)
        for n in range(5):
            bus.publish(["usr_slow"], "generation.updated", {"n": n})
        await asyncio.sleep(0)  # let the hand-overs run
        got = [await subscription.next(WAIT_S) for _ in range(4)]
        got.append(await subscription.next(0.05))
        bus.unsubscribe(subscription)
        return got

    got = asyncio.run(scenario())
    assert got[0] == Event.resync("overflow", missed=2)
    assert [e.data() for e in got[1:4] if e is not None] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert got[4] is None
    assert bus.subscriber_count() == 0


def test_an_oversized_event_arrives_as_resync(platform: Platform) -> None:
    platform.events.start()

    async def scenario() -> Event | None:
        subscription = platform.events.subscribe("usr_big")
        try:
            platform.events.publish(["usr_big"], "generation.updated", {"blob": "x" * 7000})
            return await subscription.next(WAIT_S)
        finally:
            platform.events.unsubscribe(subscription)

    event = asyncio.run(scenario())
    assert event == Event.resync("event_too_large", type="generation.updated")


def test_an_event_for_many_users_reaches_each_of_them(platform: Platform) -> None:
    platform.events.start()
    users = [f"usr_{n:036d}" for n in range(400)]
    watched = [users[0], users[199], users[-1]]

    async def scenario() -> list[Event | None]:
        subscriptions = [platform.events.subscribe(user) for user in watched]
        try:
            platform.events.publish(users, "notification", {"title": "Prices change soon"})
            return [await s.next(WAIT_S) for s in subscriptions]
        finally:
            for subscription in subscriptions:
                platform.events.unsubscribe(subscription)

    got = asyncio.run(scenario())
    assert [e.data() if e else None for e in got] == [{"title": "Prices change soon"}] * 3


def testnotify_payloads_fit_and_carry_every_user() -> None:
    users = [f"usr_{n:036d}" for n in range(400)]
    event = Event("generation.updated", json.dumps({"blob": "y" * 5900}))
    payloads = notify_payloads(users, event)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= NOTIFY_LIMIT for p in payloads)
    decoded = [json.loads(p) for p in payloads]
    assert [u for d in decoded for u in d["u"]] == users
    assert all(d["t"] == "generation.updated" and d["d"] == {"blob": "y" * 5900} for d in decoded)


def test_bad_event_types_are_refused() -> None:
    bus = InProcessEventBus()
    for bad in ("", "Balance", "balance updated", "a\nb", "x."):
        with pytest.raises(ValueError, match="not an event type"):
            bus.publish(["usr_1"], bad, {})


def test_balance_events_resolve_each_owner_once(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_user(platform, "alice@example.com")
    published: list[tuple[list[str], str, dict[str, Any]]] = []
    lookups: list[str] = []
    real_lookup = ledger_repo.wallet_owner_user

    def counted_lookup(conn: Any, wallet_id: str) -> str | None:
        lookups.append(wallet_id)
        return real_lookup(conn, wallet_id)

    class Recorder(InProcessEventBus):
        def publish(self, user_ids: Any, type: str, data: Any) -> None:
            published.append((list(user_ids), type, dict(data)))

    monkeypatch.setattr(ledger_repo, "wallet_owner_user", counted_lookup)
    listener = BalanceEvents(platform.db, Recorder())
    listener(alice.wallet_id, 9, 1)
    listener(alice.wallet_id, 8, 2)
    listener("wal_unknown", 1, 0)
    listener("wal_unknown", 1, 0)
    assert published == [
        ([alice.id], "balance.updated", {"available": 9, "held": 1}),
        ([alice.id], "balance.updated", {"available": 8, "held": 2}),
    ]
    # Owners never change, so one lookup each; an unknown wallet is not cached.
    assert lookups == [alice.wallet_id, "wal_unknown", "wal_unknown"]


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_listener_reconnects_and_subscribers_resync(
    platform: Platform, publisher: Platform, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = platform.events
    assert isinstance(bus, PostgresEventBus)
    monkeypatch.setattr(PostgresEventBus, "BACKOFF_S", (0.05, 0.2))
    bus.start()
    assert bus.listening
    admin = create_engine(normalise_url(database_url))

    async def scenario() -> list[Event | None]:
        subscription = bus.subscribe("usr_reconnect")
        try:
            with admin.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = :name AND datname = current_database()"
                    ),
                    {"name": PostgresEventBus.APPLICATION_NAME},
                ).scalar_one()
                assert killed == 1
            resync = await subscription.next(WAIT_S)
            publisher.events.publish(["usr_reconnect"], "generation.updated", {"after": True})
            return [resync, await subscription.next(WAIT_S)]
        finally:
            bus.unsubscribe(subscription)

    try:
        got = asyncio.run(scenario())
    finally:
        admin.dispose()
    assert got == [
        Event.resync("reconnected"),
        Event("generation.updated", json.dumps({"after": True}, separators=(",", ":"))),
    ]
    assert bus.listening
    bus.close()
    assert not bus.listening


def test_a_team_wallets_balance_goes_to_the_team_owner_and_owners_are_evicted_past_the_cache(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    olga = make_user(platform, "olga@example.com", plan="studio")
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, olga.id), "Night Shift")
        team_wallet = platform.ledger.open_wallet(conn, "team", team.id)
    published: list[tuple[list[str], dict[str, Any]]] = []
    lookups: list[str] = []
    real_lookup = ledger_repo.wallet_owner_user

    def counted_lookup(conn: Any, wallet_id: str) -> str | None:
        lookups.append(wallet_id)
        return real_lookup(conn, wallet_id)

    class Recorder(InProcessEventBus):
        def publish(self, user_ids: Any, type: str, data: Any) -> None:
            assert type == "balance.updated"
            published.append((list(user_ids), dict(data)))

    monkeypatch.setattr(ledger_repo, "wallet_owner_user", counted_lookup)
    listener = BalanceEvents(platform.db, Recorder())
    listener.CACHE_SIZE = 1
    listener(team_wallet, 5, 0)
    listener(olga.wallet_id, 7, 0)  # the team wallet's owner leaves the cache
    listener(team_wallet, 4, 1)
    assert published == [
        ([olga.id], {"available": 5, "held": 0}),
        ([olga.id], {"available": 7, "held": 0}),
        ([olga.id], {"available": 4, "held": 1}),
    ]
    assert lookups == [team_wallet, olga.wallet_id, team_wallet]


def test_an_event_published_in_a_transaction_goes_out_with_its_commit_only(
    platform: Platform, publisher: Platform
) -> None:
    """``publish_in``: a rolled-back transaction sends nothing; a committed
    one sends its event, on PostgreSQL as a NOTIFY of the transaction itself
    (so not through the publisher's sender thread, which a killed process
    would take with it)."""
    bus = platform.events
    bus.start()

    async def scenario() -> list[Event | None]:
        subscription = bus.subscribe("usr_in_tx")
        try:
            with contextlib.suppress(RuntimeError), publisher.db.write() as conn:
                publisher.events.publish_in(conn, ["usr_in_tx"], "generation.updated", {"n": 1})
                raise RuntimeError("rolled back")
            with publisher.db.write() as conn:
                publisher.events.publish_in(conn, ["usr_in_tx"], "generation.updated", {"n": 2})
                sent_before_commit = getattr(publisher.events, "_sent_seq", 0)
            got = [await subscription.next(WAIT_S), await subscription.next(0.3)]
            # Nothing went through the sender: the NOTIFY was the transaction's.
            assert getattr(publisher.events, "_sent_seq", 0) == sent_before_commit
            return got
        finally:
            bus.unsubscribe(subscription)

    assert asyncio.run(scenario()) == [
        Event("generation.updated", json.dumps({"n": 2}, separators=(",", ":"))),
        None,
    ]

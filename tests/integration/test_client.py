"""The Python client against the real app, served by uvicorn on a local port
(on SQLite and on PostgreSQL): sessions with CSRF, keys, credits, teams,
notifications, admin calls, errors, the event stream, and the async client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plasmaart.client import (
    AccountSuspendedError,
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    FieldError,
    InsufficientCreditsError,
    InvalidInputError,
    NotFoundError,
    PermissionDenied,
    RateLimitedError,
    TransportError,
)
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.live_server import WAIT_S, live_server

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # the ManualClock's start


@pytest.fixture
def server(platform: Platform) -> Iterator[str]:
    with live_server(platform) as base_url:
        yield base_url


def client_as(server: str, user: TestUser | None = None) -> Client:
    return Client(server, user.api_key if user else None, timeout=WAIT_S, backoff=0.1)


def grant(platform: Platform, user: TestUser, credits: int, key: str) -> None:
    with platform.db.write() as conn:
        platform.ledger.grant(conn, user.wallet_id, credits, source="purchase", idempotency_key=key)


def generation(platform: Platform, user: TestUser, generation_id: str, credits: int) -> None:
    """A generation's ledger movements: a hold, then its capture (one output)."""
    with platform.db.write() as conn:
        held = platform.ledger.hold(
            conn,
            user.wallet_id,
            credits,
            idempotency_key=f"hold:{generation_id}",
            generation_id=generation_id,
            model="flux-pro-v1.1",
        )
        platform.ledger.capture(
            conn, held.hold_id, credits, idempotency_key=f"capture:{generation_id}", outputs=1
        )


# -- operations and catalog ----------------------------------------------------------


def test_health_and_catalog_without_credentials(platform: Platform, server: str) -> None:
    with client_as(server) as client:
        assert client.healthz().status == "ok"
        ready = client.readyz()
        assert ready.status == "ready"
        assert ready.database == platform.db.dialect
        models = client.models()
        assert [m.id for m in models] == [m.id for m in platform.catalogs.base.models]
        schnell = client.model("flux-schnell")
        assert (schnell.credits, schnell.kind, schnell.tier) == (1, "text-to-image", "image")
        assert schnell.available
        assert schnell.inputs.max_prompt_chars > 0
        premium = next(m for m in models if m.tier == "video-premium")
        assert not premium.available
        assert premium.required_plan == "pro"
        plans = client.plans()
        assert [p.id for p in plans] == ["free", "starter", "pro", "studio"]
        studio = plans[-1]
        assert (studio.team_seats, studio.watermark_removable) == (5, True)
        assert studio.concurrency.jobs == 8
        assert "veo3" in studio.models
        assert "veo3" not in plans[1].models
        assert "pixverse-v4.5" in plans[1].models
        packs = client.credit_packs()
        assert sorted(p.credits for p in packs) == [1000, 3000, 10000]
        assert {p.currency for p in packs} == {plans[0].currency}


# -- accounts ------------------------------------------------------------------------


def test_a_cookie_session_signs_up_writes_with_csrf_and_logs_out(server: str) -> None:
    with client_as(server) as client:
        user = client.signup("Carol@Example.com", PASSWORD)
        assert (user.email, user.role, user.status) == ("carol@example.com", "user", "active")
        assert user.created_at == NOW
        me = client.me()
        assert (me.id, me.plan, me.subscription.status) == (user.id, "free", "none")
        assert (me.balance.available, me.balance.held, me.teams) == (0, 0, ())
        # Cookie-authenticated writes: the server refuses them without the CSRF token.
        created = client.create_api_key("laptop")
        assert created.key is not None
        assert created.key.startswith("pa_live_")
        assert client.update_settings(remove_watermark=False).settings.remove_watermark is False
        client.logout()
        with pytest.raises(AuthenticationError):
            client.me()
        client.logout()  # already logged out: nothing to do
        assert client.login("carol@example.com", PASSWORD).id == user.id
        assert [key.name for key in client.api_keys()] == ["laptop"]
    # The key made in the session works on its own.
    with Client(server, created.key, timeout=WAIT_S) as keyed:
        assert keyed.me().email == "carol@example.com"


def test_api_keys_are_created_listed_and_revoked(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")
    with client_as(server, alice) as client:
        made = client.create_api_key("ci")
        assert made.name == "ci"
        assert made.key is not None
        assert made.revoked_at is None
        listed = client.api_keys()
        assert sorted(key.name for key in listed) == ["ci", "tests"]
        assert {key.id for key in listed} >= {made.id}
        with Client(server, made.key, timeout=WAIT_S) as second:
            assert second.me().id == alice.id
            revoked = client.revoke_api_key(made.id)
            assert revoked.revoked_at is not None
            with pytest.raises(AuthenticationError) as refused:
                second.me()
        assert (refused.value.status, refused.value.code) == (401, "unauthenticated")
        with pytest.raises(NotFoundError):
            client.revoke_api_key("key_nobody")


def test_refusals_raise_their_classes_with_their_fields(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")
    with client_as(server, alice) as client:
        with pytest.raises(NotFoundError) as missing:
            client.model("no-such-model")
        error = missing.value
        assert (error.status, error.code, error.title) == (404, "not_found", "Not found")
        assert "no-such-model" in error.detail
        assert error.request_id
        with pytest.raises(InvalidInputError) as invalid:
            client.create_api_key("")
        assert invalid.value.errors[0].field == "name"
        with pytest.raises(InvalidInputError) as bad_time:
            list(client.ledger(kind="grant", since="last tuesday"))
        assert bad_time.value.errors == (FieldError("since", bad_time.value.detail),)
        with pytest.raises(PermissionDenied) as denied:
            client.update_settings(remove_watermark=True)
        assert (denied.value.code, denied.value.extra["required_plan"]) == ("forbidden", "studio")
    with client_as(server) as anonymous:
        with pytest.raises(ConflictError) as taken:
            anonymous.signup("alice@example.com", PASSWORD)
        assert taken.value.code == "email_taken"
        with pytest.raises(AuthenticationError):
            anonymous.balance()
        for _ in range(5):
            with pytest.raises(AuthenticationError):
                anonymous.login("alice@example.com", "not the password")
        # Throttled for 15 minutes: far beyond what the client waits out.
        with pytest.raises(RateLimitedError) as throttled:
            anonymous.login("alice@example.com", PASSWORD)
        assert throttled.value.retry_after == 900
        assert throttled.value.code == "rate_limited"


# -- credits -------------------------------------------------------------------------


def test_balance_ledger_usage_and_csv(platform: Platform, server: str, tmp_path: Path) -> None:
    alice = make_user(platform, "alice@example.com")
    for n in range(7):
        grant(platform, alice, 10, f"grant-{n}")
    generation(platform, alice, "gen_fox", 8)
    with client_as(server, alice) as client:
        balance = client.balance()
        assert (balance.available, balance.held) == (62, 0)
        assert sum(lot.remaining for lot in balance.lots) == 62
        assert balance.next_expiry is None

        entries = list(client.ledger(page_size=2))
        assert len(entries) == 9
        assert [e.kind for e in entries[:2]] == ["capture", "hold"]
        assert sum(e.amount for e in entries) == 62
        assert entries[0].balance_after == 62
        assert entries[1].generation_id == "gen_fox"
        assert entries[1].created_at == NOW
        assert len({e.id for e in entries}) == 9
        assert list(client.ledger(limit=3, page_size=2)) == entries[:3]
        grants = list(client.ledger(kind="grant", page_size=3))
        assert [e.amount for e in grants] == [10] * 7

        assert [(r.key, r.generations, r.outputs, r.credits) for r in client.usage()] == [
            ("flux-pro-v1.1", 1, 1, 8)
        ]
        by_day = client.usage(
            group_by="day", since="2025-12-25", until=datetime(2026, 1, 2, tzinfo=UTC)
        )
        assert [(r.key, r.credits) for r in by_day] == [("2026-01-01", 8)]
        assert client.usage(since="2025-12-01", until="2025-12-31") == []

        text = client.usage_csv()
        lines = text.splitlines()
        assert lines[0] == (
            "time,generation_id,model,outputs,credits_consumed,remaining_balance,status"
        )
        assert lines[1].split(",")[1:3] == ["gen_fox", "flux-pro-v1.1"]
        target = tmp_path / "usage.csv"
        written = client.download_usage_csv(target)
        assert target.read_bytes().decode() == text
        assert written == len(text.encode())
        assert not (tmp_path / "usage.csv.part").exists()


# -- teams ---------------------------------------------------------------------------


def test_a_studio_team_from_invitation_to_removal(platform: Platform, server: str) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    bob = make_user(platform, "bob@example.com")
    eve = make_user(platform, "eve@example.com")
    with (
        client_as(server, owner) as owner_client,
        client_as(server, bob) as bob_client,
        client_as(server, eve) as eve_client,
    ):
        team = owner_client.create_team("Fox studio")
        assert (team.name, team.owner_id) == ("Fox studio", owner.id)
        assert (team.seats.used, team.seats.total) == (1, 5)
        with pytest.raises(ConflictError) as second:
            owner_client.create_team("Another")
        assert second.value.code == "already_owns_team"
        with pytest.raises(PermissionDenied) as free:
            eve_client.create_team("Eve's")
        assert free.value.extra["required_plan"] == "studio"

        invitation = owner_client.invite(team.id, "bob@example.com")
        assert invitation.token is not None
        assert invitation.email == "bob@example.com"
        assert [i.id for i in owner_client.invitations(team.id)] == [invitation.id]
        with pytest.raises(PermissionDenied) as not_hers:
            eve_client.accept_invitation(invitation.token)  # addressed to Bob
        assert not_hers.value.code == "invitation_for_another_address"
        joined = bob_client.accept_invitation(invitation.token)
        assert (joined.id, joined.seats.used, joined.seats.pending) == (team.id, 2, 0)
        assert [t.role for t in bob_client.me().teams] == ["member"]

        members = list(owner_client.members(team.id, page_size=1))
        assert [(m.user_id, m.role) for m in members] == [(owner.id, "owner"), (bob.id, "member")]
        assert owner_client.set_member_cap(team.id, bob.id, 500).monthly_credit_cap == 500
        assert owner_client.set_member_cap(team.id, bob.id, None).monthly_credit_cap is None
        with pytest.raises(PermissionDenied):
            bob_client.set_member_cap(team.id, bob.id, 10)
        with pytest.raises(NotFoundError):
            eve_client.team(team.id)

        second_invite = owner_client.invite(team.id, "eve@example.com")
        assert second_invite.url is not None
        assert second_invite.url.endswith(f"/invitations?token={second_invite.token}")
        resent = owner_client.resend_invitation(team.id, second_invite.id)
        assert (resent.id, resent.token != second_invite.token) == (second_invite.id, True)
        assert resent.token is not None
        seen = eve_client.invitation(resent.token)
        assert (seen.team_name, seen.email, seen.status) == (
            team.name,
            "eve@example.com",
            "pending",
        )
        third_invite = owner_client.invite(team.id, "zoe@example.com")
        assert third_invite.token is not None
        declined = eve_client.decline_invitation(third_invite.token)  # no need to be Zoe
        assert declined.status == "declined"
        with pytest.raises(ApiError) as used:
            eve_client.decline_invitation(third_invite.token)
        assert (used.value.status, used.value.code) == (400, "invalid_token")
        owner_client.revoke_invitation(team.id, second_invite.id)
        assert owner_client.invitations(team.id) == []
        owner_client.remove_member(team.id, bob.id)
        assert [m.user_id for m in owner_client.members(team.id)] == [owner.id]
        assert bob_client.me().teams == ()


# -- notifications ---------------------------------------------------------------------


def test_notifications_are_listed_and_marked_read(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")
    bob = make_user(platform, "bob@example.com")
    ids = []
    for n in range(3):
        with platform.db.write() as conn:
            made = platform.notifications.notify(
                conn, alice.id, "catalog.change", f"Notice {n}", "details", {"n": n}
            )
        ids.append(made.id)
    with client_as(server, alice) as client, client_as(server, bob) as bob_client:
        listed = list(client.notifications(page_size=2))
        assert sorted(n.id for n in listed) == sorted(ids)
        assert {n.data["n"] for n in listed} == {0, 1, 2}
        assert all(n.read_at is None and n.kind == "catalog.change" for n in listed)
        read = client.mark_notification_read(ids[0])
        assert read.read_at is not None
        assert sorted(n.id for n in client.notifications(unread=True)) == sorted(ids[1:])
        assert list(bob_client.notifications()) == []
        with pytest.raises(NotFoundError):
            bob_client.mark_notification_read(ids[1])


# -- admin -------------------------------------------------------------------------------


def test_admin_searches_suspends_reinstates_and_adjusts(platform: Platform, server: str) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    target = make_user(platform, "target@example.com")
    make_user(platform, "other@example.com")
    with client_as(server, admin) as admin_client, client_as(server, target) as target_client:
        found = list(admin_client.admin_users("target"))
        assert [(u.id, u.plan, u.available) for u in found] == [(target.id, "free", 0)]
        assert len(list(admin_client.admin_users(page_size=1))) == 3
        assert len(list(admin_client.admin_users(limit=2, page_size=1))) == 2

        suspended = admin_client.suspend_user(target.id, "spam")
        assert (suspended.status, suspended.status_reason) == ("suspended", "spam")
        # Read-only: it reads (and sees why), but may not write.
        me = target_client.me()
        assert (me.status, me.status_reason) == ("suspended", "spam")
        with pytest.raises(AccountSuspendedError) as refused:
            target_client.create_api_key("another")
        assert isinstance(refused.value, PermissionDenied)
        assert refused.value.code == "account_suspended"
        assert [u.id for u in admin_client.admin_users(status="suspended")] == [target.id]
        assert admin_client.reinstate_user(target.id).status == "active"
        assert target_client.me().status == "active"

        first = admin_client.adjust_credits(target.id, 50, "goodwill", idempotency_key="adj-1")
        again = admin_client.adjust_credits(target.id, 50, "goodwill", idempotency_key="adj-1")
        assert (first.available, again.available, again.lot_id) == (50, 50, first.lot_id)
        assert target_client.balance().available == 50
        with pytest.raises(InsufficientCreditsError) as short:
            admin_client.adjust_credits(target.id, -80, "correction")
        assert (short.value.required, short.value.available) == (80, 50)
        with pytest.raises(NotFoundError):
            list(target_client.admin_users())

        # The audit log of all that, newest first, across pages of one.
        log = list(admin_client.admin_audit(subject=target.id, page_size=1))
        assert [(e.actor, e.action, e.reason) for e in log] == [
            (admin.id, "credits.adjust", "goodwill"),
            (admin.id, "user.reinstate", None),
            (admin.id, "user.suspend", "spam"),
        ]
        assert log[0].data["amount"] == 50
        assert [e.id for e in admin_client.admin_audit(action="user.suspend")] == [log[2].id]
        assert list(admin_client.admin_audit(since=log[0].created_at, actor="cli")) == []
        with pytest.raises(NotFoundError):
            list(target_client.admin_audit())


# -- events --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_grant_arrives_as_a_balance_event(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com", credits=10)
    failures: list[BaseException] = []

    def grant_once_listening() -> None:
        try:
            wait_until(lambda: platform.events.subscriber_count(alice.id) == 1, "the stream")
            grant(platform, alice, 25, "live-grant")
        except BaseException as error:  # reported by the test's thread
            failures.append(error)

    granter = threading.Thread(target=grant_once_listening)
    with client_as(server, alice) as client:
        # No reconnects and a short read timeout: a lost event fails, never hangs.
        stream = client.events(max_reconnects=0, read_timeout=WAIT_S)
        granter.start()
        try:
            event = next(stream)
        finally:
            stream.close()
            granter.join(WAIT_S)
    assert failures == []
    assert (event.id, event.type, event.data) == (
        "1",
        "balance.updated",
        {"available": 35, "held": 0},
    )
    # Closing the iterator closed the connection, so the server let go.
    wait_until(lambda: platform.events.subscriber_count() == 0, "the unsubscription")


def test_a_stream_that_stays_silent_times_out(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com")
    with client_as(server, alice) as client, pytest.raises(TransportError):
        next(client.events(max_reconnects=0, read_timeout=0.3))


# -- the async client --------------------------------------------------------------------


def test_the_async_client_against_the_server(platform: Platform, server: str) -> None:
    alice = make_user(platform, "alice@example.com", credits=40)
    generation(platform, alice, "gen_async", 8)

    async def scenario() -> None:
        async with AsyncClient(server, timeout=WAIT_S) as client:
            user = await client.login("alice@example.com", PASSWORD)
            assert user.id == alice.id
            created = await client.create_api_key("async")  # a CSRF-checked write
            assert created.name == "async"
            assert (await client.balance()).available == 32
            kinds = [entry.kind async for entry in client.ledger(page_size=1)]
            assert kinds == ["capture", "hold", "grant"]
            usage = await client.usage()
            assert [(r.key, r.credits) for r in usage] == [("flux-pro-v1.1", 8)]
            assert "gen_async" in await client.usage_csv()
            assert len(await client.models()) == len(platform.catalogs.base.models)
            with pytest.raises(NotFoundError):
                await client.model("nope")
            await client.logout()
            with pytest.raises(AuthenticationError):
                await client.me()

    asyncio.run(scenario())

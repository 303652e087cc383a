"""The request path's caches (caches.py, accounts/principals.py): what every
request reads is served from memory, and every write that changes it is seen
at once in the process that made it and within a second in any other, on
SQLite (TTL) and PostgreSQL (LISTEN/NOTIFY).

"Another process" is a second ``Platform`` on the same database, with caches,
pool and listener of its own. The same-process tests make entries live a
minute, so that only the invalidation can make them pass; the cross-process
ones keep the real TTLs and measure the delay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from plasmaart import caches
from plasmaart.clock import ManualClock, as_utc
from plasmaart.db.tables import api_keys
from plasmaart.ledger import service as ledger_service
from plasmaart.ledger.errors import WalletNotFound
from plasmaart.ledger.service import LedgerService
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.platforms import api_client, running_platform, settings_for

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
ONE_IMAGE = {
    "model": "flux-schnell",
    "prompt": "a lighthouse",
    "params": {"sandbox": {"delay_s": 0}},
}
# Medium-tier video: Starter and up, not Free.
ONE_VIDEO = {"model": "wan-pro", "prompt": "a lighthouse", "params": {"sandbox": {"delay_s": 0}}}
# How late another process may see a change.
WITHIN_S = 1.0


@pytest.fixture
def long_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries live a minute: only an invalidation drops them in time."""
    monkeypatch.setattr(caches, "SQLITE_TTL_S", 60.0)
    monkeypatch.setattr(caches, "PG_TTL_S", 60.0)


@pytest.fixture
def other(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    """A second process on the same database."""
    with running_platform(settings_for(database_url, tmp_path / "var-other"), clock) as built:
        built.caches.start(wait=5)  # on PostgreSQL: listening, as a server is once started
        yield built


@pytest.fixture
def other_client(other: Platform) -> Iterator[TestClient]:
    with api_client(other) as test_client:
        yield test_client


def status_of(client: TestClient, user: TestUser) -> int:
    return client.get("/v1/balance", headers=user.auth).status_code


def one_second_after(committed: float) -> None:
    """Wait until ``WITHIN_S`` after ``committed`` (a ``time.monotonic()``):
    a request that starts then must see the change."""
    time.sleep(max(0.0, committed + WITHIN_S - time.monotonic()))


class Statements:
    """The SQL statements run on ``platform``'s engine while counting."""

    def __init__(self, platform: Platform) -> None:
        self.seen: list[str] = []
        self._engine = platform.db.engine
        event.listen(self._engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(statement)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)

    def touching(self, *tables: str) -> list[str]:
        return [s for s in self.seen if any(t in s for t in tables)]


# -- the cache serves ----------------------------------------------------------


def test_a_known_key_costs_no_query_and_its_last_use_is_written_later(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    clock.set(JAN_1)
    kai = make_user(platform, "kai@example.com")
    assert status_of(client, kai) == 200
    statements = Statements(platform)
    try:
        for _ in range(3):
            assert status_of(client, kai) == 200
    finally:
        statements.close()
    # Neither the key nor its user is read again, and nothing is written.
    assert statements.touching("api_keys", "FROM users") == []
    assert [s for s in statements.seen if s.lstrip().upper().startswith("UPDATE")] == []
    # The use is noted, and written by the batch (here at once; by the
    # background writer every LastUsed.FLUSH_S otherwise).
    assert platform.principals.last_used.pending == 1
    assert platform.principals.last_used.flush() == 1
    with platform.db.read() as conn:
        used = conn.execute(select(api_keys.c.last_used_at)).scalar_one()
    assert used is not None
    assert as_utc(used) == JAN_1


def wallet_of(platform: Platform, ledger: LedgerService, user_id: str) -> str:
    with platform.db.read() as conn:
        return ledger.wallet_of(conn, "user", user_id)


def test_a_wallet_id_is_read_once_per_owner_and_process(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wallet of an owner never changes: a process reads its id once, and
    keeps at most OWNER_WALLETS_KEPT of them (then starts over)."""
    monkeypatch.setattr(ledger_service, "OWNER_WALLETS_KEPT", 2)
    users = [make_user(platform, f"owner{n}@example.com") for n in range(3)]
    ledger = LedgerService(platform.clock)  # a process that has read no wallet yet
    first = [wallet_of(platform, ledger, u.id) for u in users[:2]]
    statements = Statements(platform)
    try:
        again = [wallet_of(platform, ledger, u.id) for u in users[:2]]
        assert again == first
        assert statements.touching("FROM wallets") == []
        # A third owner: the kept ids are dropped, the new one read and kept.
        third = wallet_of(platform, ledger, users[2].id)
        assert len(statements.touching("FROM wallets")) == 1
        assert wallet_of(platform, ledger, users[2].id) == third
        assert len(statements.touching("FROM wallets")) == 1
        # The first owner's id is read again (it was dropped), and is the same.
        assert wallet_of(platform, ledger, users[0].id) == first[0]
        assert len(statements.touching("FROM wallets")) == 2
    finally:
        statements.close()
    with pytest.raises(WalletNotFound):
        wallet_of(platform, ledger, "usr_nobody")


def test_the_last_uses_noted_are_written_at_shutdown(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    clock.set(JAN_1)
    settings = settings_for(database_url, tmp_path / "var")
    with running_platform(settings, clock) as built:
        kai = make_user(built, "kai@example.com")
        with api_client(built) as test_client:
            assert status_of(test_client, kai) == 200
    with running_platform(settings, clock) as again, again.db.read() as conn:
        used = conn.execute(select(api_keys.c.last_used_at)).scalar_one()
    assert used is not None
    assert as_utc(used) == JAN_1


# -- revoked keys ----------------------------------------------------------------


def test_a_revoked_key_is_refused_at_once_in_the_same_process(
    platform: Platform, client: TestClient, long_ttl: None
) -> None:
    kai = make_user(platform, "kai@example.com")
    keeper = client.post("/v1/api-keys", json={"name": "keeper"}, headers=kai.auth)
    assert keeper.status_code == 201, keeper.text
    spare = TestUser(kai.id, kai.email, kai.wallet_id, keeper.json()["key"])
    assert status_of(client, kai) == 200  # cached
    key_id = next(
        k["id"]
        for k in client.get("/v1/api-keys", headers=spare.auth).json()["data"]
        if k["name"] == "tests"
    )
    revoked = client.delete(f"/v1/api-keys/{key_id}", headers=spare.auth)
    assert revoked.status_code == 200, revoked.text
    refused = client.get("/v1/balance", headers=kai.auth)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "unauthenticated"
    assert status_of(client, spare) == 200


def test_a_revoked_key_is_refused_within_a_second_in_another_process(
    platform: Platform, client: TestClient, other: Platform, other_client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com")
    assert status_of(other_client, kai) == 200
    assert status_of(other_client, kai) == 200
    assert other.caches.stats()["api_keys"]["hits"] >= 1  # the other process caches it
    with platform.db.write() as conn:
        [key] = platform.credentials.list_api_keys(conn, kai.id)
        platform.credentials.revoke_api_key(conn, kai.id, key.id)
    committed = time.monotonic()
    assert status_of(client, kai) == 401  # this process: at once
    one_second_after(committed)
    assert status_of(other_client, kai) == 401


def test_logging_out_ends_the_session_at_once(
    platform: Platform, client: TestClient, long_ttl: None
) -> None:
    make_user(platform, "kai@example.com")
    login = client.post(
        "/v1/auth/login", json={"email": "kai@example.com", "password": "a long test password"}
    )
    assert login.status_code == 200, login.text
    session, csrf = client.cookies["pa_session"], client.cookies["pa_csrf"]
    assert client.get("/v1/balance").status_code == 200  # the session, cached
    assert client.post("/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    client.cookies.set("pa_session", session)  # the old cookie, replayed
    assert client.get("/v1/balance").status_code == 401


# -- suspension ----------------------------------------------------------------


def create_key(client: TestClient, user: TestUser) -> int:
    """A write a suspended account may not make."""
    return client.post("/v1/api-keys", json={"name": "another"}, headers=user.auth).status_code


def test_a_suspended_account_is_read_only_at_once_in_the_same_process(
    platform: Platform, client: TestClient, long_ttl: None
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    assert create_key(client, kai) == 201  # cached, active
    suspended = client.post(
        f"/v1/admin/users/{kai.id}/suspend", json={"reason": "spam"}, headers=admin.auth
    )
    assert suspended.status_code == 200, suspended.text
    refused = client.post("/v1/api-keys", json={"name": "third"}, headers=kai.auth)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "account_suspended"
    assert status_of(client, kai) == 200  # still reads
    reinstated = client.post(f"/v1/admin/users/{kai.id}/reinstate", headers=admin.auth)
    assert reinstated.status_code == 200, reinstated.text
    assert create_key(client, kai) == 201


def test_a_suspended_accounts_writes_are_refused_within_a_second_in_another_process(
    platform: Platform, client: TestClient, other: Platform, other_client: TestClient
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com", credits=100)

    def quote() -> int:
        # A POST that writes nothing (so invalidates nothing by itself), which
        # a suspended account may not make.
        return other_client.post("/v1/quotes", json=ONE_IMAGE, headers=kai.auth).status_code

    assert quote() == 200
    assert quote() == 200  # served from the other's cache
    suspended = client.post(
        f"/v1/admin/users/{kai.id}/suspend", json={"reason": "spam"}, headers=admin.auth
    )
    committed = time.monotonic()
    assert suspended.status_code == 200, suspended.text
    one_second_after(committed)
    assert quote() == 403


# -- plans -----------------------------------------------------------------------


def test_a_plan_change_is_seen_by_the_next_submission(
    platform: Platform, client: TestClient, long_ttl: None
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1000)
    free = client.post("/v1/generations", json=ONE_VIDEO, headers=kai.auth)
    assert free.status_code == 403, free.text
    assert free.json()["code"] == "model_not_in_plan"
    assert free.headers["RateLimit-Limit"] == "10"  # Free's requests a minute
    subscribed = client.post("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert subscribed.status_code == 201, subscribed.text
    accepted = client.post("/v1/generations", json=ONE_VIDEO, headers=kai.auth)
    assert accepted.status_code == 201, accepted.text
    assert accepted.headers["RateLimit-Limit"] == "30"  # Starter's


def test_a_plan_change_in_another_process_is_seen_within_a_second(
    platform: Platform, client: TestClient, other: Platform, other_client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com", credits=1000)

    def submission() -> int:
        return other_client.post("/v1/quotes", json=ONE_VIDEO, headers=kai.auth).json()["allowed"]

    assert submission() is False
    subscribed = client.post("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    committed = time.monotonic()
    assert subscribed.status_code == 201, subscribed.text
    one_second_after(committed)
    assert submission() is True


def test_joining_a_team_is_seen_at_once_by_the_members_limits(
    platform: Platform, client: TestClient, long_ttl: None
) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    bob = make_user(platform, "bob@example.com", credits=100)
    before = client.post("/v1/quotes", json=ONE_IMAGE, headers=bob.auth)
    assert before.status_code == 200, before.text
    limit_alone = before.headers["RateLimit-Limit"]  # Free's, cached
    team = client.post("/v1/teams", json={"name": "Night Shift"}, headers=owner.auth)
    assert team.status_code == 201, team.text
    invited = client.post(
        f"/v1/teams/{team.json()['id']}/invitations",
        json={"email": bob.email},
        headers=owner.auth,
    )
    assert invited.status_code == 201, invited.text
    token = invited.json()["token"]
    joined = client.post(f"/v1/invitations/{token}/accept", headers=bob.auth)
    assert joined.status_code == 200, joined.text
    after = client.post("/v1/quotes", json=ONE_IMAGE, headers=bob.auth)
    # A Studio team's member works at Studio's pace, from the next request.
    assert int(after.headers["RateLimit-Limit"]) > int(limit_alone)


# -- the catalog in force ------------------------------------------------------------


def test_a_catalog_change_takes_effect_at_its_time(
    platform: Platform, client: TestClient, clock: ManualClock, long_ttl: None
) -> None:
    clock.set(JAN_1)
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com", credits=1000)

    def price() -> int:
        answer = client.post("/v1/quotes", json=ONE_IMAGE, headers=kai.auth)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["credits"])

    old = price()  # the catalog in force, cached
    effective = JAN_1 + timedelta(days=14)
    made = client.post(
        "/v1/admin/catalog/changes",
        json={
            "target": "model",
            "id": "flux-schnell",
            "field": "credits",
            "value": old + 3,
            "effective_at": effective.isoformat().replace("+00:00", "Z"),
        },
        headers=admin.auth,
    )
    assert made.status_code == 201, made.text
    clock.set(effective - timedelta(microseconds=1))
    assert price() == old
    clock.set(effective)
    assert price() == old + 3
    # Withdrawn before its time, it never applies.
    later = effective + timedelta(days=20)
    again = client.post(
        "/v1/admin/catalog/changes",
        json={
            "target": "model",
            "id": "flux-schnell",
            "field": "credits",
            "value": old + 5,
            "effective_at": later.isoformat().replace("+00:00", "Z"),
        },
        headers=admin.auth,
    )
    assert again.status_code == 201, again.text
    assert price() == old + 3  # the list with the new change is cached now
    withdrawn = client.delete(f"/v1/admin/catalog/changes/{again.json()['id']}", headers=admin.auth)
    assert withdrawn.status_code == 200, withdrawn.text
    clock.set(later)
    assert price() == old + 3


def test_a_test_clock_move_drops_what_was_reckoned_from_the_old_time(
    platform: Platform, client: TestClient, long_ttl: None
) -> None:
    # The sandbox billing clock (the platform fixture's billing) moves by
    # /v1/admin/clock/advance; whatever the caches hold goes with it.
    admin = make_user(platform, "root@example.com", admin=True)
    kai = make_user(platform, "kai@example.com")
    assert status_of(client, kai) == 200
    assert platform.caches.stats()["api_keys"]["size"] == 1
    moved = client.post("/v1/admin/clock/advance", json={"days": 1}, headers=admin.auth)
    assert moved.status_code == 200, moved.text
    assert platform.caches.stats()["api_keys"]["size"] == 0

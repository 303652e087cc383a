"""``DELETE /v1/me`` on SQLite and PostgreSQL: a wrong password (or a
missing two-factor code) deletes nothing; a deletion ends the subscription
(sandbox and Stripe), cancels the jobs and releases their credits, ends
sessions and keys, erases personal data, removes the files, forfeits the
credits left through the ledger, and the books still balance; the old
login fails like a wrong password; the address can sign up again; a team's
owner dissolves the team, a member leaves it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import ColumnElement, Table, func, select

from plasmaart.accounts.tokens_repository import totp_state
from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    api_keys,
    audit_log,
    generation_outputs,
    generations,
    journal_entries,
    login_failures,
    notification_outbox,
    notifications,
    team_members,
    uploads,
    users,
)
from plasmaart.leaving.deletion import FORFEIT_REASON, deleted_address
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.web.auth import CSRF_COOKIE
from plasmaart.worker import Worker, outbox_delivery
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.fake_stripe import FakeStripe
from tests.support.leaving import AT_ONCE, make_busy, storage_keys, submit
from tests.support.matrix import changes, snapshot
from tests.support.platforms import api_client, running_platform, settings_for


def delete_me(
    client: TestClient, who: TestUser, password: str = PASSWORD, **extra: str
) -> Response:
    return client.request(
        "DELETE", "/v1/me", headers=who.auth, json={"password": password, **extra}
    )


def count(platform: Platform, table: Table, *where: ColumnElement[bool]) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def assert_books_balance(platform: Platform) -> None:
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


def login(client: TestClient, email: str, password: str = PASSWORD) -> Response:
    return client.post("/v1/auth/login", json={"email": email, "password": password})


# -- refusals that write nothing ----------------------------------------------------


def test_a_wrong_password_deletes_nothing(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com", plan="pro", credits=100)
    make_busy(platform, client, (alice, "alice"))
    before = snapshot(platform)
    refused = delete_me(client, alice, "not the password at all")
    assert refused.status_code == 403
    assert refused.json()["code"] == "wrong_password"
    assert "not the password" not in refused.text  # the secret is never echoed
    assert changes(before, snapshot(platform)) == []
    # Still there, still working.
    assert client.get("/v1/me", headers=alice.auth).status_code == 200


def test_two_factor_is_required_when_on(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com", credits=10)
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, alice.id)
        secret = platform.second_factor.begin(conn, user).secret
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, alice.id)
        codes = platform.second_factor.enable(
            conn, user, pyotp.TOTP(secret).at(platform.job_clock.now())
        )
        assert isinstance(codes, list)
    before = snapshot(platform)
    missing = delete_me(client, alice)
    assert (missing.status_code, missing.json()["code"]) == (401, "otp_required")
    assert changes(before, snapshot(platform)) == []
    wrong = delete_me(client, alice, otp="000000")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    # Only the failed code was counted: the account is untouched.
    assert [c.split(":")[0] for c in changes(before, snapshot(platform))] == ["auth_throttle"]
    assert count(platform, users, users.c.deleted_at.is_not(None)) == 0
    done = delete_me(client, alice, otp=codes[0])  # a recovery code works too
    assert done.status_code == 200, done.text
    with platform.db.read() as conn:
        state = totp_state(conn, alice.id)
    assert (state.secret, state.pending_secret) == (None, None)


def test_a_suspended_account_cannot_delete_itself(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com")
    admin = make_user(platform, "admin@example.com", admin=True)
    with platform.db.write() as conn:
        platform.suspensions.suspend(conn, alice.id, actor=admin.id, reason="review")
    refused = delete_me(client, alice)
    assert (refused.status_code, refused.json()["code"]) == (403, "account_suspended")


def test_the_cookie_delete_needs_the_csrf_token(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com")
    assert login(client, alice.email).status_code == 200
    before = snapshot(platform)
    forged = client.request("DELETE", "/v1/me", json={"password": PASSWORD})
    assert (forged.status_code, forged.json()["code"]) == (403, "forbidden")
    assert changes(before, snapshot(platform)) == []
    csrf = client.cookies[CSRF_COOKIE]
    done = client.request(
        "DELETE", "/v1/me", json={"password": PASSWORD}, headers={"X-CSRF-Token": csrf}
    )
    assert done.status_code == 200, done.text
    assert done.json()["id"] == alice.id
    assert client.get("/v1/me").status_code == 401  # the cookies went with the account


# -- the deletion ---------------------------------------------------------------------


def test_the_deletion_and_what_stays(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com", plan="pro", credits=300)
    bob = make_user(platform, "bob@example.com", credits=40)
    admin = make_user(platform, "admin@example.com", admin=True)
    mine, theirs = make_busy(platform, client, (alice, "alice"), (bob, "bob"))
    running = submit(platform, alice, "alice: in the works", params=AT_ONCE)
    # One of alice's two waiting jobs starts (whichever the queue picks first).
    worker = Worker(platform)
    alices = {mine.queued, running.id}
    started = None
    for _ in range(3):  # alice's, bob's and alice's other are waiting
        claim = worker.claim()
        assert claim is not None
        if claim.id in alices:
            started = claim.id
            break
    assert started is not None
    keys = storage_keys(platform, alice.id)
    assert len(keys) == 3
    assert all(platform.storage.exists(key) for key in keys)
    # Two failed logins of alice's address, and an audit entry naming it.
    for _ in range(2):
        assert login(client, alice.email, "a wrong password!").status_code == 401
    assert count(platform, login_failures, login_failures.c.email == alice.email) == 2
    with platform.db.write() as conn:
        platform.accounts.set_password(
            conn, platform.accounts.get(conn, alice.id), PASSWORD, actor=admin.id
        )
    with platform.db.read() as conn:
        before = platform.ledger.balance(conn, alice.wallet_id)
    assert before.held > 0
    session = login(client, alice.email)
    assert session.status_code == 200
    cookies = dict(client.cookies)
    client.cookies.clear()

    done = delete_me(client, alice)
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["id"] == alice.id
    assert answer["subscription_ended"] is True
    assert answer["generations_canceled"] == 2  # the queued and the running job
    assert answer["forfeited_credits"] == before.available + before.held
    assert answer["team_dissolved"] is None

    # Signed out everywhere: the key and the session are dead at once.
    assert client.get("/v1/me", headers=alice.auth).status_code == 401
    client.cookies.update(cookies)
    assert client.get("/v1/me").status_code == 401
    client.cookies.clear()
    assert (
        count(platform, api_keys, api_keys.c.user_id == alice.id, api_keys.c.revoked_at.is_(None))
        == 0
    )
    # The subscription is over, the jobs canceled and their credits released
    # (then forfeited); the books balance.
    with platform.db.read() as conn:
        subscription = platform.billing.plans.subscription(conn, alice.wallet_id)
        balance = platform.ledger.balance(conn, alice.wallet_id)
        jobs = dict(
            conn.execute(
                select(generations.c.id, generations.c.status).where(
                    generations.c.user_id == alice.id
                )
            ).all()
        )
        prompts = set(
            conn.execute(
                select(generations.c.prompt).where(generations.c.user_id == alice.id)
            ).scalars()
        )
        forfeit = conn.execute(
            select(journal_entries.c.kind, journal_entries.c.credits).where(
                journal_entries.c.wallet_id == alice.wallet_id,
                journal_entries.c.memo == FORFEIT_REASON,
            )
        ).all()
        row = conn.execute(select(users).where(users.c.id == alice.id)).one()
    assert subscription is not None
    assert subscription.status == "canceled"
    assert jobs[mine.queued] == jobs[running.id] == "canceled"
    assert started in jobs
    assert (balance.available, balance.held) == (0, 0)
    # One entry per lot it took from (subscription, purchase), all adjustments.
    assert {kind for kind, _ in forfeit} == {"adjustment"}
    assert sum(credits for _, credits in forfeit) == answer["forfeited_credits"]
    assert_books_balance(platform)
    # Personal data: erased or anonymized.
    assert row.email == deleted_address(alice.id)
    assert row.deleted_at is not None
    assert row.totp_secret is None
    assert prompts == {""}
    assert count(platform, notifications, notifications.c.user_id == alice.id) == 0
    assert count(platform, login_failures, login_failures.c.email == "alice@example.com") == 0
    assert count(platform, uploads, uploads.c.user_id == alice.id) == 0
    assert (
        count(platform, generation_outputs, generation_outputs.c.generation_id.in_(mine.finished))
        == 0
    )
    with platform.db.read() as conn:
        logged = " ".join(str(tuple(r)) for r in conn.execute(select(audit_log)).all())
    assert "alice@example.com" not in logged
    assert deleted_address(alice.id) in logged
    # The files are gone from storage; bob's are all there.
    assert not any(platform.storage.exists(key) for key in keys)
    assert all(platform.storage.exists(key) for key in theirs.storage_keys)
    # The only message left for alice is the goodbye letter, to her old address.
    with platform.db.read() as conn:
        queued = conn.execute(
            select(notification_outbox.c.kind, notification_outbox.c.to_address).where(
                notification_outbox.c.user_id == alice.id
            )
        ).all()
    assert [tuple(q) for q in queued] == [("account.deleted", "alice@example.com")]
    outbox_delivery(platform).run("w")
    [goodbye] = [m for m in platform.mail_folder.messages() if m.to == "alice@example.com"]
    assert goodbye.subject == "Your PlasmaArt account was deleted"
    assert "credits left in your wallet" in goodbye.text
    assert "tax" in goodbye.text

    # The old login fails exactly as a wrong password does.
    old = login(client, "alice@example.com")
    wrong = login(client, bob.email, "a wrong password!")
    assert old.status_code == wrong.status_code == 401
    assert old.json() == wrong.json()
    assert login(client, deleted_address(alice.id), "!deleted").status_code == 401
    # The admin finds her by id, shown deleted, not by her old address.
    found = client.get("/v1/admin/users", params={"q": "alice@example.com"}, headers=admin.auth)
    assert found.json()["data"] == []
    by_id = client.get("/v1/admin/users", params={"q": alice.id}, headers=admin.auth).json()
    assert [(u["email"], u["deleted_at"] is not None) for u in by_id["data"]] == [
        (deleted_address(alice.id), True)
    ]
    admin_page = client.get("/admin", headers=admin.auth)
    assert admin_page.status_code == 200
    listed = admin_page.text.split(f'data-user-id="{alice.id}"')[1].split("</tr>")[0]
    assert '<span class="status status-deleted">deleted</span>' in listed
    assert "Suspend" not in listed
    assert "alice@example.com" not in admin_page.text
    # Bob is untouched.
    assert client.get("/v1/me", headers=bob.auth).status_code == 200
    assert (
        count(platform, generations, generations.c.user_id == bob.id, generations.c.prompt == "")
        == 0
    )
    # The address signs up again, as a new account.
    again = client.post(
        "/v1/auth/signup", json={"email": "alice@example.com", "password": PASSWORD}
    )
    assert again.status_code == 201, again.text
    assert again.json()["user"]["id"] != alice.id
    assert_books_balance(platform)


def test_files_left_by_a_crash_are_removed_by_the_worker(
    platform: Platform, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_user(platform, "alice@example.com", credits=20)
    make_busy(platform, client, (alice, "alice"))
    keys = storage_keys(platform, alice.id)

    def storage_down(_key: str) -> None:
        raise OSError("storage unreachable")

    monkeypatch.setattr(platform.storage, "delete", storage_down)
    done = delete_me(client, alice)
    assert done.status_code == 200, done.text  # the account is deleted regardless
    assert all(platform.storage.exists(key) for key in keys)
    assert storage_keys(platform, alice.id) == keys  # the rows say what is left
    monkeypatch.undo()
    Worker(platform).run_once()
    assert not any(platform.storage.exists(key) for key in keys)
    assert storage_keys(platform, alice.id) == ()


# -- teams ------------------------------------------------------------------------


def test_an_owner_dissolves_the_team(platform: Platform, client: TestClient) -> None:
    olga = make_user(platform, "olga@example.com", plan="studio", credits=100)
    mia = make_user(platform, "mia@example.com", credits=5)
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, olga.id), "Crew")
        invited = platform.teams.invite(conn, team.id, olga.id, mia.email)
        platform.teams.accept_invitation(conn, invited.token, platform.accounts.get(conn, mia.id))
        platform.teams.invite(conn, team.id, olga.id, "later@example.com")
    waiting = submit(platform, mia, "mia: on the team's credits", team_id=team.id)
    done = delete_me(client, olga)
    assert done.status_code == 200, done.text
    assert done.json()["team_dissolved"] == team.id
    assert count(platform, team_members, team_members.c.team_id == team.id) == 0
    me = client.get("/v1/me", headers=mia.auth).json()
    assert me["teams"] == []
    with platform.db.read() as conn:
        status = conn.execute(
            select(generations.c.status).where(generations.c.id == waiting.id)
        ).scalar_one()
        told = (
            conn.execute(
                select(notification_outbox.c.kind).where(notification_outbox.c.user_id == mia.id)
            )
            .scalars()
            .all()
        )
        mia_balance = platform.ledger.balance(conn, mia.wallet_id).available
    assert status == "canceled"
    # Besides the invitation mailed to her before she joined: the dissolution.
    assert told == ["team.invitation", "team.dissolved"]
    assert mia_balance == 5  # her own wallet is hers
    refused = client.post(
        f"/v1/teams/{team.id}/invitations", headers=mia.auth, json={"email": "x@example.com"}
    )
    assert refused.status_code == 404
    assert_books_balance(platform)


def test_a_member_leaves_the_team(platform: Platform, client: TestClient) -> None:
    olga = make_user(platform, "olga@example.com", plan="studio", credits=100)
    mia = make_user(platform, "mia@example.com", credits=5)
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, olga.id), "Crew")
        invited = platform.teams.invite(conn, team.id, olga.id, mia.email)
        platform.teams.accept_invitation(conn, invited.token, platform.accounts.get(conn, mia.id))
    waiting = submit(platform, mia, "mia: on the team's credits", team_id=team.id)
    done = delete_me(client, mia)
    assert done.status_code == 200, done.text
    assert done.json()["team_dissolved"] is None
    members = client.get(f"/v1/teams/{team.id}/members", headers=olga.auth).json()["data"]
    assert [m["user_id"] for m in members] == [olga.id]
    with platform.db.read() as conn:
        status = conn.execute(
            select(generations.c.status).where(generations.c.id == waiting.id)
        ).scalar_one()
        olga_balance = platform.ledger.balance(conn, olga.wallet_id)
    assert status == "canceled"
    assert (olga_balance.available, olga_balance.held) == (100 + 11_000, 0)
    assert_books_balance(platform)


# -- Stripe ------------------------------------------------------------------------


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeStripe]:
    with FakeStripe(clock) as server:
        yield server


@pytest.fixture
def stripe_platform(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeStripe
) -> Iterator[Platform]:
    settings = settings_for(database_url, tmp_path / "var", **fake.platform_settings())
    with running_platform(settings, clock) as built:
        yield built


def test_stripe_subscription_ends_at_once(stripe_platform: Platform, fake: FakeStripe) -> None:
    from tests.integration.test_billing_stripe import deliver, subscribe

    with api_client(stripe_platform) as client:
        kai = make_user(stripe_platform, "kai@example.com")
        stripe_id, _session = subscribe(client, fake, kai, "starter")
        assert fake.subscriptions[stripe_id]["status"] == "active"

        fake.outage = True
        before = snapshot(stripe_platform)
        refused = delete_me(client, kai)
        assert refused.status_code == 503
        assert refused.json()["code"] == "unavailable"
        assert int(refused.headers["retry-after"]) > 0
        assert changes(before, snapshot(stripe_platform)) == []
        assert client.get("/v1/me", headers=kai.auth).status_code == 200

        fake.outage = False
        done = delete_me(client, kai)
        assert done.status_code == 200, done.text
        assert done.json()["subscription_ended"] is True
        assert fake.subscriptions[stripe_id]["status"] == "canceled"
        # The refused attempt met Stripe's outage; this one, the same request
        # (one key per subscription: a retry replays Stripe's first answer).
        asked = fake.calls_to("DELETE", "/v1/subscriptions/")
        assert len(asked) >= 2
        assert {(c.path, c.idempotency_key) for c in asked} == {
            (f"/v1/subscriptions/{stripe_id}", asked[0].idempotency_key)
        }
        with stripe_platform.db.read() as conn:
            ours = stripe_platform.billing.plans.subscription(conn, kai.wallet_id)
        assert ours is not None
        assert ours.status == "canceled"
        # Stripe's word that it ended changes nothing more.
        ended = fake.event("customer.subscription.deleted", fake.subscriptions[stripe_id])
        assert deliver(client, fake, ended).status_code == 200
        assert_books_balance(stripe_platform)

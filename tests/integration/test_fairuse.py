"""Fair use over HTTP, on SQLite and PostgreSQL: rate limits per plan and per
account (headers, 429 with Retry-After, many API keys counting together,
failing open without Redis), the queued-jobs cap, and each abuse signal
leading to a flag and then an automatic suspension that cancels the queued
jobs and releases their credits, the admin's view and the reinstatement.

Signals found on the request path are written by the flusher within a second
(fairuse/tasks.py); the helpers that read an outcome flush first, as a client
reading a second later would see it."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from plasmaart.accounts.service import User
from plasmaart.billing.tasks import run_billing_clock
from plasmaart.bootstrap import bootstrap
from plasmaart.catalog.loader import DEFAULT_CATALOG_PATH
from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import (
    abuse_flags,
    abuse_signals,
    audit_log,
    generations,
    idempotency_records,
)
from plasmaart.fairuse.service import PLAN_LIMIT_CACHE_S
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from plasmaart.web.problems import PROBLEM_JSON
from tests.support.accounts import TestUser, make_user
from tests.support.matrix import changes, snapshot
from tests.support.pgserver import free_port

ONE_IMAGE = {"model": "flux-schnell", "prompt": "a red fox in snow"}
# Low thresholds, so that a test reaches them in a few dozen requests.
LOW = {"fairuse_flag_score": 10, "fairuse_suspend_score": 20}
# Credits for an account that never paid (granted by hand, no payment).
UNPAID_CREDITS = 11_000

Build = Callable[..., tuple[Platform, TestClient]]


@pytest.fixture
def build(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Build]:
    """A platform with some settings changed, and a test client of its app."""
    made: list[tuple[Platform, TestClient]] = []

    def factory(**overrides: Any) -> tuple[Platform, TestClient]:
        settings = Settings(
            database_url=database_url, var_dir=tmp_path / f"var{len(made)}", **overrides
        )
        platform = bootstrap(settings, clock=clock, migrate=False)
        client = TestClient(create_app(platform, embedded_worker=False))
        client.__enter__()
        made.append((platform, client))
        return platform, client

    yield factory
    for platform, client in made:
        client.__exit__(None, None, None)
        with platform.db.read() as conn:
            assert check_ledger(conn) == []
        platform.close()


def assert_problem(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


def roomy_free_plan(tmp_path: Path) -> Path:
    """Operator data: a catalog whose Free plan allows 120 generation
    requests a minute and 100 queued jobs (Studio's), so that a test can send
    dozens in a row from an account that never paid."""
    catalog = tmp_path / "roomy-catalog.toml"
    text = DEFAULT_CATALOG_PATH.read_text()
    for line in ("requests_per_minute = 10\n", "max_queued_jobs = 10\n"):
        assert text.count(line) == 1
        text = text.replace(line, line.replace("10", "120" if "requests" in line else "100"))
    catalog.write_text(text)
    return catalog


def settled(platform: Platform) -> Any:
    """The database's rows once the queued signals are written."""
    return snapshot(platform)


def user_of(platform: Platform, user: TestUser) -> User:
    platform.fairuse.flush()
    with platform.db.read() as conn:
        return platform.accounts.get(conn, user.id)


def queue_jobs(platform: Platform, user: TestUser, count: int) -> list[str]:
    """Jobs that stay queued (no worker runs here), submitted past the API."""
    ids = []
    for n in range(count):
        with platform.db.write() as conn:
            account = platform.accounts.get(conn, user.id)
            request = GenerationRequest("flux-schnell", f"keeper {n}", num_outputs=2)
            ids.append(platform.generations.submit(conn, account, request).id)
    return ids


def queued_ids(platform: Platform, user: TestUser) -> list[str]:
    with platform.db.read() as conn:
        rows = conn.execute(
            select(generations.c.id).where(
                generations.c.user_id == user.id, generations.c.status == "queued"
            )
        )
        return [row.id for row in rows]


def wallet(platform: Platform, user: TestUser) -> tuple[int, int]:
    with platform.db.read() as conn:
        balance = platform.ledger.balance(conn, user.wallet_id)
    return balance.available, balance.held


def flags(platform: Platform, user: TestUser) -> list[Any]:
    platform.fairuse.flush()
    with platform.db.read() as conn:
        return list(conn.execute(select(abuse_flags).where(abuse_flags.c.user_id == user.id)))


def audit_actions(platform: Platform, user: TestUser) -> list[str]:
    platform.fairuse.flush()
    with platform.db.read() as conn:
        rows = conn.execute(
            select(audit_log.c.action).where(audit_log.c.target == user.id).order_by(audit_log.c.id)
        )
        return [row.action for row in rows]


def admin_view(client: TestClient, admin: TestUser, **query: str) -> list[dict[str, Any]]:
    platform: Platform = client.app.state.platform  # type: ignore[attr-defined]
    platform.fairuse.flush()
    answer = client.get("/v1/admin/abuse", headers=admin.auth, params=query)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def assert_suspended_with_jobs_released(
    platform: Platform, client: TestClient, user: TestUser, keepers: list[str], credits: int
) -> None:
    """Suspended automatically: new requests refused, every queued job
    canceled and its credits back, the flag says so, the audit log too."""
    assert user_of(platform, user).status == "suspended"
    assert_problem(
        client.post("/v1/quotes", json=ONE_IMAGE, headers=user.auth), 403, "account_suspended"
    )
    assert wallet(platform, user) == (credits, 0)
    with platform.db.read() as conn:
        rows = conn.execute(select(generations).where(generations.c.user_id == user.id)).all()
    queued = [row for row in rows if row.id in keepers]
    assert [(row.status, row.error_code) for row in queued] == [
        ("canceled", "account_suspended")
    ] * len(keepers)
    assert all(row.status != "queued" for row in rows)
    (flag,) = flags(platform, user)
    assert flag.status == "suspended"
    actions = audit_actions(platform, user)
    assert (
        actions.index("abuse.flag") < actions.index("user.suspend") < actions.index("abuse.suspend")
    )


def reinstate(client: TestClient, admin: TestUser, user: TestUser) -> None:
    answer = client.post(f"/v1/admin/users/{user.id}/reinstate", headers=admin.auth)
    assert answer.status_code == 200, answer.text


# -- rate limits ---------------------------------------------------------------


def test_every_answer_carries_the_headers_and_the_limit_answers_429(build: Build) -> None:
    platform, client = build()
    ann = make_user(platform, "ann@example.com", credits=100)  # Free: 10 a minute
    for n in range(10):
        answer = client.post("/v1/generations", json=ONE_IMAGE, headers=ann.auth)
        assert answer.status_code == 201, answer.text
        assert answer.headers["RateLimit-Limit"] == "10"
        assert answer.headers["RateLimit-Remaining"] == str(9 - n)
        assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 60
        assert answer.headers["RateLimit-Policy"] == "10;w=60"
    assert platform.fairuse.flusher is not None
    platform.fairuse.flusher.stop()  # this test flushes by hand
    before = settled(platform)
    refused = client.post("/v1/generations", json=ONE_IMAGE, headers=ann.auth)
    problem = assert_problem(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Limit"] == "10"
    assert problem["limit"] == 10
    # The refusal wrote nothing; its abuse signal is written off the request
    # path, by the flusher.
    assert changes(before, snapshot(platform, settle=False)) == []
    assert [change.split(":")[0] for change in changes(before, settled(platform))] == [
        "abuse_signals"
    ]
    # Nor under an Idempotency-Key: the refusal is not stored for replay.
    keyed = {**ann.auth, "Idempotency-Key": "k1"}
    for _ in range(2):
        again = client.post("/v1/generations", json=ONE_IMAGE, headers=keyed)
        assert_problem(again, 429, "rate_limited")
        assert "Idempotent-Replayed" not in again.headers
    with platform.db.read() as conn:
        assert conn.execute(select(idempotency_records)).all() == []
    # Quotes have a budget of their own, four times larger.
    quoted = client.post("/v1/quotes", json=ONE_IMAGE, headers=ann.auth)
    assert quoted.status_code == 200, quoted.text
    assert (quoted.headers["RateLimit-Limit"], quoted.headers["RateLimit-Remaining"]) == (
        "40",
        "39",
    )
    assert quoted.headers["RateLimit-Policy"] == "40;w=60"
    # Reads are not limited and carry no rate-limit headers.
    listed = client.get("/v1/generations", headers=ann.auth)
    assert listed.status_code == 200
    assert "RateLimit-Limit" not in listed.headers


def test_submit_cancel_and_upload_share_a_budget_and_quotes_have_theirs(build: Build) -> None:
    platform, client = build()
    ann = make_user(platform, "ann@example.com", credits=100)
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(image, "PNG")
    made = client.post("/v1/generations", json=ONE_IMAGE, headers=ann.auth)
    canceled = client.post(f"/v1/generations/{made.json()['id']}/cancel", headers=ann.auth)
    quoted = client.post("/v1/quotes", json=ONE_IMAGE, headers=ann.auth)
    uploaded = client.post(
        "/v1/uploads",
        files={"file": ("fox.png", image.getvalue(), "image/png")},
        headers=ann.auth,
    )
    missing = client.post("/v1/generations/gen_nope/cancel", headers=ann.auth)
    answers = [made, canceled, quoted, uploaded, missing]
    assert [a.status_code for a in answers] == [201, 200, 200, 201, 404]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["9", "8", "39", "7", "6"]


def test_many_api_keys_of_one_account_count_together(build: Build) -> None:
    platform, client = build()
    ann = make_user(platform, "ann@example.com", credits=100)
    bob = make_user(platform, "bob@example.com", credits=100)
    with platform.db.write() as conn:
        keys = [ann.api_key] + [
            platform.credentials.create_api_key(conn, ann.id, f"rotated {n}").secret
            for n in range(4)
        ]
    codes = [
        client.post(
            "/v1/generations", json=ONE_IMAGE, headers={"Authorization": f"Bearer {keys[n % 5]}"}
        ).status_code
        for n in range(14)
    ]
    assert codes == [201] * 10 + [429] * 4
    # A new key does not help either; another account has its own budget.
    with platform.db.write() as conn:
        fresh = platform.credentials.create_api_key(conn, ann.id, "fresh").secret
    fresh_answer = client.post(
        "/v1/generations", json=ONE_IMAGE, headers={"Authorization": f"Bearer {fresh}"}
    )
    assert_problem(fresh_answer, 429, "rate_limited")
    assert client.post("/v1/generations", json=ONE_IMAGE, headers=bob.auth).status_code == 201


def test_the_limit_is_the_plans_and_a_team_member_gets_the_teams(build: Build) -> None:
    platform, client = build()
    owner = make_user(platform, "owner@example.com", plan="studio")
    member = make_user(platform, "member@example.com")
    pro = make_user(platform, "pro@example.com", plan="pro")

    def limit(user: TestUser) -> str:
        answer = client.post("/v1/generations/gen_nope/cancel", headers=user.auth)
        assert answer.status_code == 404, answer.text
        return answer.headers["RateLimit-Limit"]

    assert (limit(owner), limit(member), limit(pro)) == ("120", "10", "60")
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, user_of_conn(platform, conn, owner), "Studio A")
        invitation = platform.teams.invite(conn, team.id, owner.id, member.email)
        platform.teams.accept_invitation(
            conn, invitation.token, user_of_conn(platform, conn, member)
        )
    # A process reads an account's plan limits at most once a second.
    time.sleep(PLAN_LIMIT_CACHE_S)
    assert limit(member) == "120"


def user_of_conn(platform: Platform, conn: Any, user: TestUser) -> User:
    return platform.accounts.get(conn, user.id)


def test_an_unreachable_redis_fails_open(build: Build) -> None:
    # Nothing listens on this port: every request still goes through, without
    # rate-limit headers, and quickly.
    platform, client = build(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    ann = make_user(platform, "ann@example.com", credits=100)
    for _ in range(15):  # more than the Free plan's 10 a minute
        started = time.monotonic()
        answer = client.post("/v1/generations/gen_nope/cancel", headers=ann.auth)
        assert answer.status_code == 404, answer.text
        assert "RateLimit-Limit" not in answer.headers
        assert time.monotonic() - started < 3
    platform.fairuse.flush()
    with platform.db.read() as conn:
        assert conn.execute(select(abuse_signals)).all() == []


# -- the queued-jobs cap ----------------------------------------------------------


def test_the_queued_jobs_cap_is_429_concurrency_limit(build: Build, tmp_path: Path) -> None:
    # Operator data: a catalog whose Free plan queues at most 2 jobs.
    catalog = tmp_path / "catalog.toml"
    text = DEFAULT_CATALOG_PATH.read_text()
    assert text.count("max_queued_jobs = 10\n") == 1
    catalog.write_text(text.replace("max_queued_jobs = 10\n", "max_queued_jobs = 2\n"))
    platform, client = build(catalog_file=catalog)
    ann = make_user(platform, "ann@example.com", credits=100)
    for _ in range(2):
        assert client.post("/v1/generations", json=ONE_IMAGE, headers=ann.auth).status_code == 201
    before = settled(platform)
    refused = client.post("/v1/generations", json=ONE_IMAGE, headers=ann.auth)
    problem = assert_problem(refused, 429, "concurrency_limit")
    assert (problem["limit"], refused.headers["Retry-After"]) == (2, "10")
    assert changes(before, settled(platform)) == []
    quote = client.post("/v1/quotes", json=ONE_IMAGE, headers=ann.auth).json()
    assert quote["allowed"] is False
    assert "queues at most 2" in quote["reason"]
    # "Try again later" is not stored under an Idempotency-Key: once a job
    # has left the queue, the client's retry with the same key goes through.
    keyed = {**ann.auth, "Idempotency-Key": "retry-me"}
    assert_problem(
        client.post("/v1/generations", json=ONE_IMAGE, headers=keyed), 429, "concurrency_limit"
    )
    first = client.get("/v1/generations", headers=ann.auth).json()["data"][0]
    assert client.post(f"/v1/generations/{first['id']}/cancel", headers=ann.auth).status_code == 200
    retried = client.post("/v1/generations", json=ONE_IMAGE, headers=keyed)
    assert retried.status_code == 201, retried.text
    assert "Idempotent-Replayed" not in retried.headers


# -- abuse signals: flag, then suspension -------------------------------------------


def test_repeated_rate_limit_hits_flag_then_suspend(build: Build) -> None:
    platform, client = build(**LOW, fairuse_rate_limit_signal_interval_s=0)
    admin = make_user(platform, "admin@example.com", admin=True)
    bot = make_user(platform, "bot@example.com", credits=100)
    keepers = queue_jobs(platform, bot, 3)
    assert wallet(platform, bot) == (94, 6)
    for _ in range(40):  # the Free plan's quotes a minute
        assert client.post("/v1/quotes", json=ONE_IMAGE, headers=bot.auth).status_code == 200
    # 2 points for each hit beyond the first 5: the 10th hit flags (10).
    for _ in range(10):
        assert_problem(
            client.post("/v1/quotes", json=ONE_IMAGE, headers=bot.auth), 429, "rate_limited"
        )
    (flagged,) = admin_view(client, admin)
    assert (flagged["user_id"], flagged["status"], flagged["score"]) == (bot.id, "open", 10)
    assert flagged["evidence"]["by_kind"] == {"rate_limited": {"count": 10, "points": 10}}
    assert flagged["evidence"]["signals"][0]["evidence"]["path"] == "/v1/quotes"
    assert user_of(platform, bot).status == "active"
    assert wallet(platform, bot) == (94, 6)
    # ... and the 15th suspends (20).
    for _ in range(5):
        assert_problem(
            client.post("/v1/quotes", json=ONE_IMAGE, headers=bot.auth), 429, "rate_limited"
        )
    assert_suspended_with_jobs_released(platform, client, bot, keepers, 100)
    (suspended,) = admin_view(client, admin)
    assert (suspended["status"], suspended["user_status"], suspended["score"]) == (
        "suspended",
        "suspended",
        20,
    )


def test_submit_then_cancel_churn_flags_then_suspends(
    build: Build, clock: ManualClock, tmp_path: Path
) -> None:
    platform, client = build(**LOW, catalog_file=roomy_free_plan(tmp_path))
    bot = make_user(platform, "bot@example.com", credits=UNPAID_CREDITS)  # never paid
    keepers = queue_jobs(platform, bot, 3)

    def churn() -> str:
        made = client.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth)
        assert made.status_code == 201, made.text
        clock.advance(timedelta(seconds=5))
        canceled = client.post(f"/v1/generations/{made.json()['id']}/cancel", headers=bot.auth)
        assert canceled.status_code == 200, canceled.text
        return str(made.json()["id"])

    # A cancel a while after the submission is a changed mind, not churn.
    made = client.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth).json()
    clock.advance(timedelta(seconds=61))
    assert client.post(f"/v1/generations/{made['id']}/cancel", headers=bot.auth).status_code == 200
    # 3 points for each quick cancel beyond 10: the 14th flags (12) ...
    last = [churn() for _ in range(14)][-1]
    # Cancelling one job twice counts once, and the repeat writes nothing.
    before = settled(platform)
    assert client.post(f"/v1/generations/{last}/cancel", headers=bot.auth).status_code == 200
    assert changes(before, settled(platform)) == []
    (flag,) = flags(platform, bot)
    assert (flag.status, flag.score) == ("open", 12)
    assert user_of(platform, bot).status == "active"
    # ... and the 17th suspends (21).
    for _ in range(2):
        churn()
    made = client.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth).json()
    client.post(f"/v1/generations/{made['id']}/cancel", headers=bot.auth)
    assert user_of(platform, bot).status == "suspended"
    assert_suspended_with_jobs_released(platform, client, bot, keepers, UNPAID_CREDITS)
    platform.fairuse.flush()
    with platform.db.read() as conn:
        kinds = [row.kind for row in conn.execute(select(abuse_signals))]
    assert kinds == ["submit_cancel"] * 17


def test_identical_prompt_floods_flag_then_suspend(build: Build, tmp_path: Path) -> None:
    platform, client = build(
        **LOW, fairuse_identical_prompts_allowed=2, catalog_file=roomy_free_plan(tmp_path)
    )
    bot = make_user(platform, "bot@example.com", credits=UNPAID_CREDITS)
    # Not copies: the same prompt with another seed, another model, another
    # number of outputs, or a seed against none.
    for variant in (
        {**ONE_IMAGE, "params": {"seed": 1}},
        {**ONE_IMAGE, "params": {"seed": 2}},
        {**ONE_IMAGE, "params": {"seed": 3}},
        {**ONE_IMAGE, "model": "flux-dev"},
        {**ONE_IMAGE, "model": "seedream-v3"},
        {**ONE_IMAGE, "num_outputs": 2},
        {**ONE_IMAGE, "num_outputs": 3},
    ):
        made = client.post("/v1/generations", json=variant, headers=bot.auth)
        assert made.status_code == 201, made.text
    platform.fairuse.flush()
    with platform.db.read() as conn:
        assert conn.execute(select(abuse_signals)).all() == []
    ids = queued_ids(platform, bot)
    # The 3rd copy in 10 minutes is the first signal (4 points): the 5th
    # copy flags (12) and the 7th suspends (20).
    for copy in range(1, 8):
        made = client.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth)
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
        status = [flag.status for flag in flags(platform, bot)]
        assert status == ([] if copy < 5 else ["open"] if copy < 7 else ["suspended"])
    # The submission that tipped it was canceled along with the others.
    tipped = client.get(f"/v1/generations/{made.json()['id']}", headers=bot.auth)
    assert (tipped.json()["status"], tipped.json()["error"]["code"]) == (
        "canceled",
        "account_suspended",
    )
    assert_suspended_with_jobs_released(platform, client, bot, ids, UNPAID_CREDITS)
    (flag,) = flags(platform, bot)
    assert '"identical_prompt"' in flag.evidence


def test_bursts_of_invalid_input_flag_then_suspend(build: Build, tmp_path: Path) -> None:
    platform, client = build(**LOW, catalog_file=roomy_free_plan(tmp_path))
    bot = make_user(platform, "bot@example.com", credits=UNPAID_CREDITS)
    keepers = queue_jobs(platform, bot, 2)
    bad_bodies = [
        {"model": "flux-schnell", "prompt": ""},  # refused by the service
        {"model": "flux-schnell", "prompt": "x", "num_outputs": 99},  # by the schema
        {"model": "no-such-model", "prompt": "x"},
    ]
    # The first 20 an hour are free and write nothing.
    before = settled(platform)
    for n in range(20):
        refused = client.post("/v1/generations", json=bad_bodies[n % 3], headers=bot.auth)
        assert_problem(refused, 422, "invalid_input")
    assert changes(before, settled(platform)) == []
    # 1 point for each further one: the 30th flags (10), the 40th suspends (20).
    for n in range(10):
        client.post("/v1/quotes", json=bad_bodies[n % 3], headers=bot.auth)
    (flag,) = flags(platform, bot)
    assert (flag.status, flag.score) == ("open", 10)
    for n in range(10):
        client.post("/v1/generations", json=bad_bodies[n % 3], headers=bot.auth)
    assert_suspended_with_jobs_released(platform, client, bot, keepers, UNPAID_CREDITS)


def test_refunds_after_spending_flag_then_suspend(build: Build) -> None:
    # One clawed-back purchase (40 points) flags, a second suspends (80).
    platform, client = build(fairuse_flag_score=30, fairuse_suspend_score=70)
    admin = make_user(platform, "admin@example.com", admin=True)
    bot = make_user(platform, "bot@example.com")

    def buy_and_spend(n: int) -> Any:
        bought = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=bot.auth)
        assert bought.status_code == 201, bought.text
        with platform.db.write() as conn:
            hold = platform.ledger.hold(conn, bot.wallet_id, 100, idempotency_key=f"spend:{n}")
            platform.ledger.capture(conn, hold.hold_id, 100, idempotency_key=f"spend:{n}:capture")
            return platform.billing.payments.history(conn, bot.id, limit=1)[0]

    def refund(payment: Any) -> None:
        with platform.db.write() as conn:
            platform.billing.clawbacks.claw_back(conn, payment, reason="refund", actor="test")

    refund(buy_and_spend(1))
    (flag,) = flags(platform, bot)
    assert (flag.status, flag.score) == ("open", 40)
    # A refund of a purchase nothing was spent of is no signal.
    bought = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=bot.auth)
    assert bought.status_code == 201
    with platform.db.read() as conn:
        unspent = platform.billing.payments.history(conn, bot.id, limit=1)[0]
    refund(unspent)
    assert flags(platform, bot)[0].score == 40
    second = buy_and_spend(2)
    with platform.db.write() as conn:
        platform.ledger.grant(conn, bot.wallet_id, 50, source="promo", idempotency_key="promo")
    keepers = queue_jobs(platform, bot, 3)  # held from the promo lot, burned first
    assert wallet(platform, bot) == (900 + 44, 6)
    refund(second)
    assert_suspended_with_jobs_released(platform, client, bot, keepers, 50)
    (suspended,) = admin_view(client, admin)
    assert suspended["evidence"]["by_kind"] == {"clawback": {"count": 2, "points": 80}}
    assert suspended["evidence"]["signals"][0]["evidence"]["credits_spent"] == 100


# -- review and reinstatement -------------------------------------------------------


def test_reinstatement_resolves_the_flag_and_wipes_the_slate(
    build: Build, clock: ManualClock, tmp_path: Path
) -> None:
    platform, client = build(
        **LOW, fairuse_identical_prompts_allowed=1, catalog_file=roomy_free_plan(tmp_path)
    )
    admin = make_user(platform, "admin@example.com", admin=True)
    bot = make_user(platform, "bot@example.com", credits=UNPAID_CREDITS)
    for _ in range(6):  # 5 copies too many: 20 points, suspended
        client.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth)
    assert user_of(platform, bot).status == "suspended"
    reinstate(client, admin, bot)
    assert user_of(platform, bot).status == "active"
    assert admin_view(client, admin) == []
    (resolved,) = admin_view(client, admin, status="resolved")
    assert (resolved["resolved_by"], resolved["status"]) == (admin.id, "resolved")
    assert audit_actions(platform, bot)[-2:] == ["user.reinstate", "abuse.resolve"]
    # Earlier signals no longer count: 4 more copies are 16 points (a new
    # flag), not 36 (a suspension).
    clock.advance(timedelta(seconds=1))
    for _ in range(4):
        assert client.post("/v1/generations", json=ONE_IMAGE, headers=bot.auth).status_code == 201
    assert user_of(platform, bot).status == "active"
    (flagged,) = admin_view(client, admin)
    assert (flagged["status"], flagged["score"]) == ("open", 16)


def test_admins_are_flagged_but_never_suspended_automatically(build: Build) -> None:
    platform, client = build(**LOW, fairuse_identical_prompts_allowed=1)
    admin = make_user(platform, "admin@example.com", admin=True, plan="studio")
    for _ in range(8):
        assert client.post("/v1/generations", json=ONE_IMAGE, headers=admin.auth).status_code == 201
    assert user_of(platform, admin).status == "active"
    (flag,) = admin_view(client, admin)
    assert (flag["status"], flag["score"]) == ("open", 28)
    assert "never suspended" in flag["evidence"]["note"]


# -- paying accounts: volume flags, exploitation suspends ---------------------------


def test_a_seed_sweep_of_a_paying_studio_account_is_no_abuse(
    build: Build, clock: ManualClock
) -> None:
    """Issue 13, item 4: 45 submissions of one prompt within ten minutes, with
    different seeds or models, suspended a paying Studio account. With the
    default settings they are not even a signal: each is another request."""
    platform, client = build()
    creator = make_user(platform, "creator@example.com", plan="studio")
    prompt = "a lighthouse on a basalt cliff at dusk, volumetric fog, 35mm"
    models = ["flux-schnell", "flux-dev", "seedream-v3", "flux-pro-v1.1", "imagen4-preview"]
    for n in range(45):
        body = {"model": models[n % 5] if n >= 30 else "flux-dev", "prompt": prompt}
        body["params"] = {"seed": 1000 + n, "aspect_ratio": "1:1"}
        made = client.post("/v1/generations", json=body, headers=creator.auth)
        assert made.status_code == 201, made.text
        assert made.json()["status"] == "queued"
        clock.advance(timedelta(seconds=13))  # 45 in 9 minutes 45 seconds
    assert user_of(platform, creator).status == "active"
    assert flags(platform, creator) == []
    platform.fairuse.flush()
    with platform.db.read() as conn:
        assert conn.execute(select(abuse_signals)).all() == []


def test_a_paying_account_is_flagged_for_volume_never_suspended(
    build: Build, clock: ManualClock
) -> None:
    platform, client = build(**LOW, fairuse_identical_prompts_allowed=1)
    admin = make_user(platform, "admin@example.com", admin=True)
    heavy = make_user(platform, "heavy@example.com", plan="studio")
    keepers = queue_jobs(platform, heavy, 2)
    # 12 copies too many: 48 points, more than twice the suspension score.
    for _ in range(13):
        made = client.post("/v1/generations", json=ONE_IMAGE, headers=heavy.auth)
        assert made.status_code == 201, made.text
        assert made.json()["status"] == "queued"
        clock.advance(timedelta(seconds=2))
    assert user_of(platform, heavy).status == "active"
    (flag,) = admin_view(client, admin)
    assert (flag["user_id"], flag["status"], flag["score"]) == (heavy.id, "open", 48)
    assert flag["evidence"]["exploit_score"] == 0
    assert "only exploitation signals" in flag["evidence"]["note"]
    assert set(keepers) <= set(queued_ids(platform, heavy))
    assert "user.suspend" not in audit_actions(platform, heavy)


def test_a_team_member_counts_as_paying_through_the_team(build: Build, clock: ManualClock) -> None:
    platform, client = build(**LOW, fairuse_identical_prompts_allowed=1)
    owner = make_user(platform, "owner@example.com", plan="studio")
    member = make_user(platform, "member@example.com")  # Free, never paid
    loner = make_user(platform, "loner@example.com", credits=100)  # Free, never paid
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, user_of_conn(platform, conn, owner), "Studio A")
        invitation = platform.teams.invite(conn, team.id, owner.id, member.email)
        platform.teams.accept_invitation(
            conn, invitation.token, user_of_conn(platform, conn, member)
        )
    team_id = team.id
    for user, body in ((member, {**ONE_IMAGE, "team_id": team_id}), (loner, ONE_IMAGE)):
        for _ in range(7):  # 6 copies too many: 24 points, over the suspension score
            client.post("/v1/generations", json=body, headers=user.auth)
            clock.advance(timedelta(seconds=2))
    assert user_of(platform, member).status == "active"
    assert [flag.status for flag in flags(platform, member)] == ["open"]
    assert user_of(platform, loner).status == "suspended"


def test_card_testing_on_packs_flags_then_suspends_even_a_paying_account(
    build: Build, clock: ManualClock
) -> None:
    platform, client = build()
    admin = make_user(platform, "admin@example.com", admin=True)
    tester = make_user(platform, "tester@example.com", plan="starter")
    card = f"/v1/admin/users/{tester.id}/billing/sandbox-card"
    assert client.post(card, json={"declines": True}, headers=admin.auth).status_code == 200

    def buy() -> Any:
        clock.advance(timedelta(seconds=20))
        return client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=tester.auth)

    # A declined card now and then is ordinary: three an hour are free and
    # write nothing but their signal.
    before = settled(platform)
    for _ in range(3):
        assert_problem(buy(), 402, "payment_failed")
    written = changes(before, settled(platform))
    assert [change.split(":")[0] for change in written] == ["abuse_signals"], written
    assert flags(platform, tester) == []
    # 34 points for each further one in the hour: the 4th flags, the 6th suspends.
    assert_problem(buy(), 402, "payment_failed")
    assert [flag.status for flag in flags(platform, tester)] == ["open"]
    assert_problem(buy(), 402, "payment_failed")
    assert user_of(platform, tester).status == "active"
    assert_problem(buy(), 402, "payment_failed")
    assert user_of(platform, tester).status == "suspended"
    (flag,) = admin_view(client, admin)
    assert flag["evidence"]["by_kind"] == {"payment_declined": {"count": 6, "points": 102}}
    assert flag["evidence"]["signals"][0]["evidence"]["what"] == "pack"
    with platform.db.read() as conn:
        assert len(platform.billing.payments.history(conn, tester.id, limit=10)) == 1  # the plan


def test_upgrade_downgrade_cycling_flags_then_suspends(build: Build, clock: ManualClock) -> None:
    platform, client = build()
    cycler = make_user(platform, "cycler@example.com", plan="starter")

    def cycle() -> None:
        with platform.db.read() as conn:
            subscription = platform.billing.plans.subscription(conn, cycler.wallet_id)
        assert subscription is not None
        # Up to Studio two days before the period ends, back to Starter at once.
        clock.set(subscription.current_period_end - timedelta(days=2))
        for plan in ("studio", "starter"):
            changed = client.patch("/v1/subscription", json={"plan": plan}, headers=cycler.auth)
            assert changed.status_code == 200, changed.text
        clock.set(subscription.current_period_end + timedelta(minutes=1))
        assert run_billing_clock(platform.db, platform.billing)["downgraded"] == 1

    # Two cycles in 90 days may be a busy month or two: nothing.
    for _ in range(2):
        cycle()
    assert flags(platform, cycler) == []
    # The upgrade that starts a third flags, the one that starts a fourth suspends.
    cycle()
    assert [flag.status for flag in flags(platform, cycler)] == ["open"]
    with platform.db.read() as conn:
        subscription = platform.billing.plans.subscription(conn, cycler.wallet_id)
    assert subscription is not None
    clock.set(subscription.current_period_end - timedelta(days=2))
    upgraded = client.patch("/v1/subscription", json={"plan": "studio"}, headers=cycler.auth)
    assert upgraded.status_code == 200, upgraded.text
    assert user_of(platform, cycler).status == "suspended"
    (flag,) = flags(platform, cycler)
    assert flag.status == "suspended"
    assert '"plan_cycling"' in flag.evidence


def test_a_purchase_taken_back_no_longer_makes_an_account_paying(
    build: Build, clock: ManualClock, tmp_path: Path
) -> None:
    platform, client = build(
        **LOW, fairuse_identical_prompts_allowed=1, catalog_file=roomy_free_plan(tmp_path)
    )
    kept = make_user(platform, "kept@example.com")
    refunded = make_user(platform, "refunded@example.com")
    for user in (kept, refunded):
        bought = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=user.auth)
        assert bought.status_code == 201, bought.text
    with platform.db.write() as conn:
        (payment,) = platform.billing.payments.history(conn, refunded.id, limit=5)
        # Refunded before anything was spent: no signal, but no longer paid.
        platform.billing.clawbacks.claw_back(conn, payment, reason="refund", actor="test")
    with platform.db.write() as conn:
        platform.ledger.grant(conn, refunded.wallet_id, 100, source="promo", idempotency_key="p")
    for user in (kept, refunded):
        for _ in range(7):  # 6 copies too many: 24 points, over the suspension score
            made = client.post("/v1/generations", json=ONE_IMAGE, headers=user.auth)
            assert made.status_code in (201, 403), made.text
            clock.advance(timedelta(seconds=2))
    assert (user_of(platform, kept).status, flags(platform, kept)[0].status) == ("active", "open")
    assert user_of(platform, refunded).status == "suspended"

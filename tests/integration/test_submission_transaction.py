"""The shape of a submission's transactions (docs/generations.md, "The
transaction of a submission"), on SQLite and PostgreSQL: every read before
the write, a write transaction holding only the statements that decide it,
no reload after it; and what makes that safe: an idempotent retry that raced
another still holds once, and concurrent bursts never pass the queued-jobs cap
or a member's monthly cap."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, func, select

from plasmaart.db.group_commit import GroupCommitError
from plasmaart.db.tables import generations, holds
from plasmaart.errors import DomainError, SpendLimitReached
from plasmaart.generation.errors import ConcurrencyLimit
from plasmaart.generation.service import Generation, GenerationRequest, Submission
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.integration.test_teams import accept, create_team, invite
from tests.support.accounts import TestUser, make_user

ONE_IMAGE = {"model": "flux-schnell", "prompt": "a kite over the dunes", "params": {"seed": 3}}
# Tables only the read step reads: the catalog's announced changes, the
# subscription (the plan), uploads, teams and their members, outputs.
READ_STEP_TABLES = ("catalog_changes", "subscriptions", "uploads", "team", "generation_outputs")


@dataclass
class Transaction:
    write: bool
    # (owner, SQL): the owner is the package that issued the statement.
    statements: list[tuple[str, str]] = field(default_factory=list)

    def of(self, owner: str) -> list[str]:
        return [sql for who, sql in self.statements if who == owner]

    def touches(self, table: str) -> bool:
        return any(re.search(rf"\b{table}\b", sql) for _, sql in self.statements)


def _owner() -> str:
    """Who issued the statement being executed: the ledger and fair use
    (their internals belong to them), else the generation code."""
    frame = sys._getframe(2)
    owner = "generation"
    for _ in range(200):  # bounded walk up the stack
        if frame is None:
            break
        name = frame.f_code.co_filename
        if "/plasmaart/ledger/" in name:
            return "ledger"
        if "/plasmaart/fairuse/" in name:
            owner = "fairuse"
        frame = frame.f_back
    return owner


@contextmanager
def recorded(platform: Platform) -> Iterator[list[Transaction]]:
    """Every transaction on the platform's engine while inside, with its statements."""
    engine = platform.db.engine
    found: list[Transaction] = []
    current: dict[int, Transaction] = {}

    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("plasmaart_begin") == "IMMEDIATE"
        current[id(conn)] = Transaction(write)
        found.append(current[id(conn)])

    def on_execute(conn: Connection, _c: Any, sql: str, _p: Any, _x: Any, _m: bool) -> None:
        transaction = current.get(id(conn))
        if transaction is not None and not sql.startswith("BEGIN"):
            transaction.statements.append((_owner(), " ".join(sql.split())))

    def on_end(conn: Connection) -> None:
        current.pop(id(conn), None)

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("begin", on_begin),
        ("before_cursor_execute", on_execute),
        ("commit", on_end),
        ("rollback", on_end),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        yield found
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)


def the_submissions_write(transactions: list[Transaction]) -> tuple[int, Transaction]:
    (found,) = [
        (n, t)
        for n, t in enumerate(transactions)
        if any(sql.startswith("INSERT INTO generations") for _, sql in t.statements)
    ]
    return found


def counts(platform: Platform, wallet_id: str) -> tuple[int, int, int]:
    """(generations, holds, available) of the wallet."""
    with platform.db.read() as conn:
        jobs = conn.execute(
            select(func.count())
            .select_from(generations)
            .where(generations.c.wallet_id == wallet_id)
        ).scalar_one()
        held = conn.execute(
            select(func.count()).select_from(holds).where(holds.c.wallet_id == wallet_id)
        ).scalar_one()
        available = platform.ledger.balance(conn, wallet_id).available
        assert check_ledger(conn) == []
    return int(jobs), int(held), available


# -- the shape -----------------------------------------------------------------


def test_the_write_transaction_holds_only_the_guarded_statements(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    # Warm up: the key's first use is recorded, outside what is measured.
    assert client.get("/v1/balance", headers=sam.auth).status_code == 200
    headers = {**sam.auth, "Idempotency-Key": "kite-1"}
    with recorded(platform) as transactions:
        answer = client.post("/v1/generations", json=ONE_IMAGE, headers=headers)
    assert answer.status_code == 201, answer.text
    at, write = the_submissions_write(transactions)
    assert write.write
    # Of the generation code, one statement: the job inserted only while the
    # wallet's queue has room. No idempotency lookup, validation, plan,
    # catalog, quote or reload in the write.
    (insert,) = write.of("generation")
    assert re.match(r"INSERT INTO generations \(.*\) SELECT .* WHERE \(SELECT count", insert)
    assert re.search(r"RETURNING (generations\.)?id$", insert)
    assert not [table for table in READ_STEP_TABLES if write.touches(table)]
    # The hold is the ledger's (a guarded update of the wallet among them).
    assert any(sql.startswith("UPDATE wallets") for sql in write.of("ledger"))
    # Before it, one read transaction read everything the write needed (what
    # caches do not answer).
    reads = [t for t in transactions[:at] if t.touches("generations")]
    assert [t.write for t in reads] == [False]
    # After it, nothing reads the job back: the answer is what was written.
    assert not [t for t in transactions[at + 1 :] if t.touches("generations")]
    body = answer.json()
    assert (body["status"], body["credits_held"], body["balance_after"]) == ("queued", 1, 1999)
    assert (body["queue_position"], body["outputs"], body["license"]) == (1, [], "personal")
    # ... and it is the job as a read finds it.
    again = client.get(f"/v1/generations/{body['id']}", headers=sam.auth).json()
    assert {k: v for k, v in again.items() if k != "can_cancel"} == {
        k: v for k, v in body.items() if k != "can_cancel"
    }


def test_a_capped_member_is_checked_again_under_the_wallets_lock(
    client: TestClient, platform: Platform
) -> None:
    _, bob, team_id = capped_team(client, platform, cap=50)
    assert client.get("/v1/balance", headers=bob.auth).status_code == 200
    with recorded(platform) as transactions:
        answer = client.post(
            "/v1/generations", json={**ONE_IMAGE, "team_id": team_id}, headers=bob.auth
        )
    assert answer.status_code == 201, answer.text
    _, write = the_submissions_write(transactions)
    (insert,) = write.of("generation")
    assert insert.startswith("INSERT INTO generations")
    # The member's spending is counted by the hold's spend guard, under the
    # wallet's lock: after the lock, before the hold's writes.
    statements = [sql for _, sql in write.statements]
    (spend,) = [sql for sql in statements if "sum(CASE WHEN" in sql]
    assert "generations.team_id" in spend
    assert "generations.user_id" in spend
    lock = next(n for n, sql in enumerate(statements) if "FROM wallets" in sql)
    first_write = next(
        n for n, sql in enumerate(statements) if sql.startswith(("UPDATE", "INSERT"))
    )
    assert lock < statements.index(spend) < first_write
    assert not [table for table in READ_STEP_TABLES if write.touches(table)]


def test_a_balance_read_is_one_read_transaction(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", credits=40)
    assert client.get("/v1/balance", headers=sam.auth).status_code == 200
    with recorded(platform) as transactions:
        answer = client.get("/v1/balance", headers=sam.auth)
    assert answer.json()["available"] == 40
    assert [t for t in transactions if t.write] == []
    assert len([t for t in transactions if t.touches("lots")]) == 1


# -- what makes it safe ----------------------------------------------------------


def test_a_retry_that_raced_its_first_run_answers_its_job_and_holds_once(
    platform: Platform,
) -> None:
    sam = make_user(platform, "sam@example.com", credits=100)
    with platform.db.read() as conn:
        user = platform.accounts.get(conn, sam.id)
    request = GenerationRequest("flux-schnell", "a kite", params={"seed": 1})
    prepare = platform.generations.prepare
    others: list[Generation] = []
    raced = threading.Event()

    def racing_prepare(
        conn: Connection, user: Any, request: GenerationRequest, *, idempotency_key: str | None
    ) -> Generation | Submission:
        prepared = prepare(conn, user, request, idempotency_key=idempotency_key)
        if not raced.is_set():
            raced.set()
            # The other run of the same request passes its read step and
            # commits between this one's read step and its write.
            others.append(platform.submissions.submit(user, request, idempotency_key="k-1"))
        return prepared

    platform.generations.prepare = racing_prepare  # type: ignore[method-assign]
    try:
        first = platform.submissions.submit(user, request, idempotency_key="k-1")
    finally:
        del platform.generations.prepare
    assert first.id == others[0].id
    assert (first.status, first.credits_held) == ("queued", 1)
    assert counts(platform, sam.wallet_id) == (1, 1, 99)


def burst(n: int, submit: Callable[[int], Generation]) -> tuple[int, list[DomainError]]:
    """``n`` submissions at once: how many were accepted, and the refusals."""
    start = threading.Barrier(n, timeout=30)

    def one(i: int) -> Generation | DomainError:
        start.wait()
        try:
            return submit(i)
        except DomainError as refused:
            return refused

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n), timeout=120))
    refused = [a for a in answers if isinstance(a, DomainError)]
    return len(answers) - len(refused), refused


def test_a_burst_never_passes_the_queued_jobs_cap(platform: Platform) -> None:
    bot = make_user(platform, "bot@example.com", credits=100)  # Free: 10 queued at most
    with platform.db.read() as conn:
        user = platform.accounts.get(conn, bot.id)
    accepted, refused = burst(
        16,
        lambda i: platform.submissions.submit(
            user, GenerationRequest("flux-schnell", f"burst {i}"), idempotency_key=f"b{i}"
        ),
    )
    assert accepted == 10
    assert {type(r) for r in refused} == {ConcurrencyLimit}
    assert counts(platform, bot.wallet_id) == (10, 10, 90)


def test_a_burst_never_passes_a_members_monthly_cap(client: TestClient, platform: Platform) -> None:
    owner, bob, team_id = capped_team(client, platform, cap=6)
    with platform.db.read() as conn:
        user = platform.accounts.get(conn, bob.id)
        before = platform.ledger.balance(conn, owner.wallet_id).available
    accepted, refused = burst(
        12,
        lambda i: platform.submissions.submit(
            user, GenerationRequest("flux-schnell", f"team burst {i}", team_id=team_id)
        ),
    )
    assert accepted == 6
    assert {type(r) for r in refused} == {SpendLimitReached}
    assert {r.limit for r in refused if isinstance(r, SpendLimitReached)} == {"member_monthly"}
    assert counts(platform, owner.wallet_id) == (6, 6, before - 6)


def capped_team(
    client: TestClient, platform: Platform, *, cap: int
) -> tuple[TestUser, TestUser, str]:
    owner = make_user(platform, "owner@example.com", plan="studio")
    team_id = create_team(client, owner)["id"]
    bob = make_user(platform, "bob@example.com")
    accept(client, bob, invite(client, owner, team_id, "bob@example.com")["token"])
    capped = client.patch(
        f"/v1/teams/{team_id}/members/{bob.id}",
        json={"monthly_credit_cap": cap},
        headers=owner.auth,
    )
    assert capped.status_code == 200, capped.text
    return owner, bob, team_id


# -- a writer that cannot answer -------------------------------------------------


def test_a_writer_that_cannot_answer_is_a_503_that_writes_nothing(
    client: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")

    def no_answer(_fn: Callable[[Connection], Any]) -> Any:
        raise GroupCommitError("the writer stopped before this write ran")

    monkeypatch.setattr(platform.db, "run_write", no_answer)
    answer = client.post("/v1/generations", json=ONE_IMAGE, headers=sam.auth)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "unavailable"
    assert int(answer.headers["Retry-After"]) >= 1
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(generations)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(holds)).scalar_one() == 0

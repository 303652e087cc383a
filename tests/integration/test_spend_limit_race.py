"""Concurrent submissions cannot pass a spend limit together, on SQLite and
PostgreSQL: 32 submissions race through the real ``SubmissionService``
(their read steps all pass before any write), against a wallet's monthly
limit, and against an API key's daily limit while the key spends from two
wallets at once (its owner's and a team's). Exactly as many as fit are
accepted, the rest are refused with ``spend_limit_reached``, and the credits
held and charged never pass the limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, select

from plasmaart.accounts.credentials import KeyLimits
from plasmaart.db.tables import generations
from plasmaart.errors import DomainError, SpendLimitReached
from plasmaart.generation import repository as generation_repo
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.integration.test_teams import accept, create_team, invite
from tests.support.accounts import make_user

RACERS = 32
T = TypeVar("T")


def race(platform: Platform, submit: Callable[[int], Generation]) -> tuple[int, list[DomainError]]:
    """``RACERS`` submissions at once, every read step done (and its read
    transaction closed) before the first write step starts: how many were
    accepted, and the refusals."""
    prepared = threading.Barrier(RACERS, timeout=60)
    run_write = platform.db.run_write

    def wait_then_write(fn: Callable[[Connection], T]) -> T:
        prepared.wait()
        return run_write(fn)

    def one(i: int) -> Generation | DomainError:
        try:
            return submit(i)
        except DomainError as refused:
            return refused

    platform.db.run_write = wait_then_write  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(RACERS) as pool:
            answers = list(pool.map(one, range(RACERS), timeout=180))
    finally:
        del platform.db.run_write
    refused = [a for a in answers if isinstance(a, DomainError)]
    return len(answers) - len(refused), refused


def spent(platform: Platform, *conditions: Any) -> int:
    """Credits held or charged by the jobs ``conditions`` select."""
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        total = conn.execute(
            select(
                func.coalesce(
                    func.sum(generations.c.credits_held - generations.c.credits_charged), 0
                )
                + func.coalesce(func.sum(generations.c.credits_charged), 0)
            ).where(*conditions, generations.c.status.in_(("queued", "running", "succeeded")))
        ).scalar_one()
    return int(total)


def test_a_race_never_passes_a_wallets_monthly_limit(platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="pro", credits=1000)
    with platform.db.write() as conn:
        platform.spend_limits.set_wallet_limit(conn, sam.wallet_id, 11, actor_id=sam.id)
        user = platform.accounts.get(conn, sam.id)
    accepted, refused = race(
        platform,
        lambda i: platform.submissions.submit(
            user,
            GenerationRequest("flux-schnell", f"a race {i}", params={"seed": i}),
            idempotency_key=f"race-{i}",
        ),
    )
    # flux-schnell costs 1 credit: exactly 11 fit.
    assert accepted == 11
    assert {(type(r), getattr(r, "limit", None)) for r in refused} == {
        (SpendLimitReached, "wallet_monthly")
    }
    assert spent(platform, generations.c.wallet_id == sam.wallet_id) == 11
    with platform.db.read() as conn:
        assert platform.spend_limits.wallet_limit(conn, sam.wallet_id).spent == 11


def test_a_race_on_two_wallets_never_passes_a_keys_daily_limit(
    client: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The two wallets' locks do not exclude each other: only the key's does.
    # Each write step dawdles between its count and its commit, so that
    # without the key's lock two of them would both count what fits.
    insert = generation_repo.insert_queued_within

    def slow_insert(conn: Connection, values: dict[str, Any], max_queued: int) -> bool:
        time.sleep(0.02)
        return insert(conn, values, max_queued)

    monkeypatch.setattr(generation_repo, "insert_queued_within", slow_insert)
    owner = make_user(platform, "owner@example.com", plan="studio")
    team_id = create_team(client, owner)["id"]
    bob = make_user(platform, "bob@example.com", plan="pro", credits=1000)
    accept(client, bob, invite(client, owner, team_id, "bob@example.com")["token"])
    with platform.db.write() as conn:
        key = platform.credentials.create_api_key(conn, bob.id, "robot", daily_credit_limit=9)
        user = platform.accounts.get(conn, bob.id)
    limits = KeyLimits(key.key.id, daily=9)
    accepted, refused = race(
        platform,
        lambda i: platform.submissions.submit(
            user,
            GenerationRequest(
                "flux-schnell",
                f"a key race {i}",
                params={"seed": i},
                # Half on Bob's wallet, half on the team's (its owner's).
                team_id=team_id if i % 2 else None,
                api_key=limits,
            ),
        ),
    )
    assert accepted == 9
    assert {(type(r), getattr(r, "limit", None)) for r in refused} == {
        (SpendLimitReached, "key_daily")
    }
    assert spent(platform, generations.c.api_key_id == key.key.id) == 9
    # Both wallets took part: the limit held across them.
    with platform.db.read() as conn:
        wallets = set(
            conn.execute(
                select(generations.c.wallet_id).where(generations.c.api_key_id == key.key.id)
            ).scalars()
        )
    assert wallets == {bob.wallet_id, owner.wallet_id}

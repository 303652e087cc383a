"""The auto top-up under a burst (docs/credits.md, "One run in flight"), on
SQLite and PostgreSQL: 32 submissions racing across the threshold, each in
its own thread through ``SubmissionService``, start exactly one run; the
worker then buys exactly one pack, added to what is left."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.db.tables import auto_topups, payments, topup_runs
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import make_user

RACERS = 32
THRESHOLD = 1000
# Above the threshold by half the burst: the 17th hold crosses it.
START = THRESHOLD + RACERS // 2


def test_32_submissions_racing_across_the_threshold_buy_one_pack(
    platform: Platform, client: TestClient
) -> None:
    ava = make_user(platform, "ava@example.com", plan="studio")  # 11,000 credits, 100 queued
    with platform.db.write() as conn:
        now = platform.ledger.balance(conn, ava.wallet_id).available
        platform.ledger.adjust(
            conn, ava.wallet_id, START - now, idempotency_key="race:start", reason="test"
        )
    answer = client.put(
        "/v1/auto-topup",
        json={
            "enabled": True,
            "threshold": THRESHOLD,
            "pack": "pack-1000",
            "monthly_cap_cents": 100_000,
        },
        headers=ava.auth,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["in_flight"] is False
    with platform.db.read() as conn:
        user = platform.accounts.get(conn, ava.id)
    start = threading.Barrier(RACERS, timeout=30)

    def submit(i: int) -> Generation:
        start.wait()
        return platform.submissions.submit(
            user,
            GenerationRequest("flux-schnell", f"a lighthouse at dusk, take {i}"),
            idempotency_key=f"race-{i}",
        )

    with ThreadPoolExecutor(RACERS) as pool:
        accepted = list(pool.map(submit, range(RACERS), timeout=120))
    assert len({g.id for g in accepted}) == RACERS
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, ava.wallet_id).available == START - RACERS
        assert conn.execute(select(func.count()).select_from(topup_runs)).scalar_one() == 1

    worker = Worker(platform)
    worker.charge_topups()
    worker.charge_topups()  # a second pass finds nothing left to charge
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
        statuses = conn.execute(select(topup_runs.c.status)).scalars().all()
        packs = conn.execute(
            select(func.count()).select_from(payments).where(payments.c.kind == "pack")
        ).scalar_one()
        left = platform.ledger.balance(conn, ava.wallet_id).available
    assert statuses == ["succeeded"]
    assert packs == 1
    assert left == START - RACERS + 1000


def test_concurrent_first_saves_of_one_wallet_all_succeed(
    platform: Platform, client: TestClient
) -> None:
    """The settings row is created once, whichever save comes first: the
    wallet's lock puts them one after the other."""
    ava = make_user(platform, "ava@example.com", credits=5000)
    savers = 8
    start = threading.Barrier(savers, timeout=30)

    def save(i: int) -> int:
        start.wait()
        answer = client.put(
            "/v1/auto-topup",
            json={
                "enabled": True,
                "threshold": 100 + i,
                "pack": "pack-1000",
                "monthly_cap_cents": 5000,
            },
            headers=ava.auth,
        )
        return answer.status_code

    with ThreadPoolExecutor(savers) as pool:
        statuses = list(pool.map(save, range(savers), timeout=120))
    assert statuses == [200] * savers
    final = client.get("/v1/auto-topup", headers=ava.auth).json()
    assert 100 <= final["threshold"] < 100 + savers
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(auto_topups)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(topup_runs)).scalar_one() == 0

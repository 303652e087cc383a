"""Statement budgets of the hot paths, on SQLite and PostgreSQL.

How many transactions and SQL statements one piece of work sends to the
database is the speed that no timed test can guard on a shared machine: this
test counts them (``tests/support/statements.py``) for

* ``submission``: one ``POST /v1/generations`` through the real ASGI app, as
  the benchmark sends it (an API key, no Idempotency-Key);
* ``submission-idempotent``: the same with an ``Idempotency-Key``, as the
  Python client sends every POST;
* ``balance``: one ``GET /v1/balance``;
* ``hold+capture``: one ``LedgerService.hold`` and one ``capture`` of it, each
  in its own ``db.write()``, on a wallet with two lots (as
  ``benchmarks/ledger_tps.py`` does);
* ``job``: one job from its claim to its capture (``Worker.claim`` then
  ``JobRunner.run``) with the sandbox provider at zero delay;

each after one warm-up of the same work, so caches count as warm. It fails
when one of them exceeds its budget below, and prints what was sent.

The budgets are the counts measured when they were set: lower one (never
raise it without a reason written beside it) when a change makes the work
cheaper, so that the gain cannot erode unnoticed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import pytest
from fastapi.testclient import TestClient

from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.statements import Counts, StatementCounter


class Budget(NamedTuple):
    transactions: int  # BEGINs: read and write transactions both
    writes: int  # of which write transactions (Database.write(), BEGIN IMMEDIATE on SQLite)
    statements: int  # SQL statements, transaction control (BEGIN, COMMIT, ...) not included
    savepoints: int = 0


# fmt: off
# One line per path and database: (transactions, writes, statements[, savepoints]).
BUDGETS: dict[tuple[str, str], Budget] = {
    ("submission", "sqlite"):              Budget(transactions= 2, writes=1, statements=10),
    ("submission", "postgres"):            Budget(transactions= 4, writes=1, statements=13),
    ("submission-idempotent", "sqlite"):   Budget(transactions= 4, writes=3, statements=14),
    ("submission-idempotent", "postgres"): Budget(transactions= 6, writes=3, statements=17),
    ("balance", "sqlite"):                 Budget(transactions= 1, writes=0, statements= 2),
    ("balance", "postgres"):               Budget(transactions= 1, writes=0, statements= 2),
    ("hold+capture", "sqlite"):            Budget(transactions= 2, writes=2, statements=14),
    ("hold+capture", "postgres"):          Budget(transactions= 4, writes=2, statements=18),
    ("job", "sqlite"):                     Budget(transactions= 2, writes=2, statements=15),
    ("job", "postgres"):                   Budget(transactions= 5, writes=3, statements=18),
}
# fmt: on

AT_ONCE = {"sandbox": {"delay_s": 0}}
_prompts = itertools.count()


def within_budget(platform: Platform, backend: str, name: str, work: Callable[[], None]) -> Counts:
    """Run ``work`` once to warm up, then once counted; fail past the budget
    of ``name`` on ``backend``."""
    work()  # warm-up: caches filled, pools connected, statements compiled
    with StatementCounter(platform.db.engine) as counts:
        work()
    budget = BUDGETS[(name, backend)]
    measured = Budget(counts.transactions, counts.writes, counts.statements, counts.savepoints)
    print(  # noqa: T201 - the counts are meant to be read (pytest -s)
        f"\n{name} on {backend}: {counts.summary()}; budget: {budget}"
    )
    over = [
        f"{field}: {used} > {allowed}"
        for field, used, allowed in zip(Budget._fields, measured, budget, strict=True)
        if used > allowed
    ]
    assert not over, (
        f"{name} on {backend} is over its statement budget ({', '.join(over)}); "
        f"it sent:\n{counts.listing()}"
    )
    return counts


def submit(client: TestClient, user: TestUser, *, idempotent: bool) -> None:
    """One submission of a fresh prompt (fair use counts copies of one prompt)."""
    number = next(_prompts)
    headers = dict(user.auth)
    if idempotent:
        headers["Idempotency-Key"] = f"budget-{number}"
    answer = client.post(
        "/v1/generations",
        json={
            "model": "flux-schnell",
            "prompt": f"a red fox in snow, take {number}",
            "params": AT_ONCE,
        },
        headers=headers,
    )
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotency-key"])
def test_one_submission(
    platform: Platform, client: TestClient, backend: str, idempotent: bool
) -> None:
    user = make_user(platform, "sam@example.com", plan="studio")
    name = "submission-idempotent" if idempotent else "submission"
    counts = within_budget(
        platform, backend, name, lambda: submit(client, user, idempotent=idempotent)
    )
    assert counts.writes >= 1  # a submission holds credits: it cannot be read-only


def test_one_balance_read(platform: Platform, client: TestClient, backend: str) -> None:
    user = make_user(platform, "sam@example.com", plan="starter")

    def read() -> None:
        answer = client.get("/v1/balance", headers=user.auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["available"] == 2000

    within_budget(platform, backend, "balance", read)


def test_one_hold_and_capture(platform: Platform, backend: str) -> None:
    user = make_user(platform, "sam@example.com", plan="starter", credits=500)
    ledger, db = platform.ledger, platform.db
    steps = itertools.count()

    def hold_and_capture() -> None:
        step = next(steps)
        with db.write() as conn:
            hold = ledger.hold(conn, user.wallet_id, 8, idempotency_key=f"budget:hold:{step}")
        with db.write() as conn:
            ledger.capture(conn, hold.hold_id, 8, idempotency_key=f"budget:capture:{step}")

    within_budget(platform, backend, "hold+capture", hold_and_capture)
    with db.read() as conn:
        assert ledger.balance(conn, user.wallet_id).available == 2500 - 16


def test_one_job_from_claim_to_capture(
    platform: Platform, client: TestClient, backend: str
) -> None:
    user = make_user(platform, "sam@example.com", plan="studio")
    worker = Worker(platform, concurrency=4)
    worker.runner.sleep = lambda _seconds: None
    # Both jobs queued beforehand: only a claim and a run are counted.
    submit(client, user, idempotent=False)
    submit(client, user, idempotent=False)
    ran: list[str] = []

    def one_job() -> None:
        claimed = worker.claim()
        assert claimed is not None
        worker.runner.run(claimed)
        ran.append(claimed.id)

    counts = within_budget(platform, backend, "job", one_job)
    assert worker.claim() is None  # two jobs, two runs: none left
    for generation_id in ran:
        answer = client.get(f"/v1/generations/{generation_id}", headers=user.auth)
        assert answer.json()["status"] == "succeeded", answer.text
    assert counts.writes >= 2  # the claim, and the end of the job with its capture

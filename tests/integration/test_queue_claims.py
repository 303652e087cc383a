"""The queue at the speed of the database, on SQLite and PostgreSQL: a worker
claims every free slot in one transaction, in the fair order with the caps and
the reserved slot, and a job goes from claim to capture in two transactions
(claim, end); each output but the last is recorded before the next fetch,
so a job resumed after a crash fetches only the rest."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select

from plasmaart.clock import ManualClock
from plasmaart.db.tables import generation_outputs, generations
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import make_user

FAST = {"sandbox": {"delay_s": 0}}
SLOW = {"sandbox": {"delay_s": 60}}


def submit(platform: Platform, email: str, request: GenerationRequest) -> Generation:
    with platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        return platform.generations.submit(conn, user, request)


def worker(platform: Platform, concurrency: int = 4) -> Worker:
    made = Worker(platform, concurrency)
    made.runner.sleep = lambda _seconds: None
    return made


class Traffic:
    """The transactions and statements this thread sends (other threads of
    the platform, such as the listener of events, are not the job's)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.transactions: list[list[str]] = []

    def begin(self, _conn: Any) -> None:
        if threading.get_ident() == self.thread:
            self.transactions.append([])

    def statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.get_ident() == self.thread and not statement.startswith("BEGIN"):
            self.transactions[-1].append(statement)

    def of_jobs(self) -> list[list[str]]:
        """Leaving out the events' own NOTIFY transactions (PostgreSQL)."""
        return [t for t in self.transactions if not all("pg_notify" in s for s in t)]


@contextmanager
def traffic(platform: Platform) -> Iterator[Traffic]:
    seen = Traffic()
    event.listen(platform.db.engine, "begin", seen.begin)
    event.listen(platform.db.engine, "before_cursor_execute", seen.statement)
    try:
        yield seen
    finally:
        event.remove(platform.db.engine, "begin", seen.begin)
        event.remove(platform.db.engine, "before_cursor_execute", seen.statement)


def test_a_worker_claims_its_free_slots_in_one_transaction_in_fair_order(
    platform: Platform, clock: ManualClock
) -> None:
    make_user(platform, "fay@example.com", credits=100)  # Free: 1 job at a time
    make_user(platform, "sam@example.com", plan="starter")  # 2 at a time
    make_user(platform, "stu@example.com", plan="studio")
    ids: dict[str, list[str]] = {"fay": [], "sam": [], "stu": []}
    for who, jobs in (("fay", 3), ("sam", 3), ("stu", 2)):  # Studio's boost puts it first
        for n in range(jobs):
            job = submit(
                platform,
                f"{who}@example.com",
                GenerationRequest("flux-schnell", f"{n}", params=FAST),
            )
            ids[who].append(job.id)
            # A tick between submissions: jobs enqueued at one instant are
            # ordered by id, whose random part does not follow submission
            # order within a millisecond.
            clock.advance(timedelta(milliseconds=1))
    four = worker(platform, concurrency=4)  # the catalog keeps 1 slot for Studio
    with traffic(platform) as seen:
        claimed = four.claim_many()
    assert len(seen.of_jobs()) == 1
    # Studio's two, then Starter's first; Starter's second would take the
    # slot kept for Studio, and Free's are behind.
    assert [c.id for c in claimed] == [ids["stu"][0], ids["stu"][1], ids["sam"][0]]
    with platform.db.read() as conn:
        rows = {
            row.id: row
            for row in conn.execute(
                select(generations).where(generations.c.id.in_([c.id for c in claimed]))
            )
        }
    for claim in claimed:
        row = rows[claim.id]
        assert (row.status, row.lease_owner, int(row.attempts)) == ("running", four.id, 1)
        assert int(row.fencing_token) == claim.token
        assert row.deadline_at is not None
        assert row.lease_expires_at is not None
        assert not claim.resumed
    # The slot kept for Studio: nobody else may take it, a Studio job may.
    four._busy = 3
    assert four.claim_many() == []
    ids["stu"].append(
        submit(platform, "stu@example.com", GenerationRequest("flux-schnell", "2", params=FAST)).id
    )
    last = four.claim_many()
    assert [c.id for c in last] == [ids["stu"][2]]
    # The jobs claimed in a batch run to the end, each charged once.
    for claim in [*claimed, *last]:
        four.runner.run(claim)
    with platform.db.read() as conn:
        done = dict(
            conn.execute(
                select(generations.c.id, generations.c.status).where(
                    generations.c.id.in_([c.id for c in [*claimed, *last]])
                )
            ).all()
        )
        assert set(done.values()) == {"succeeded"}
        assert check_ledger(conn) == []


def test_batch_claims_respect_each_wallets_cap(platform: Platform) -> None:
    make_user(platform, "fay@example.com", credits=100)  # Free: 1 job at a time
    make_user(platform, "sam@example.com", plan="starter")  # 2 at a time
    for who in ("fay", "sam"):
        for n in range(4):
            submit(
                platform,
                f"{who}@example.com",
                GenerationRequest("flux-schnell", f"{n}", params=SLOW),
            )
    eight = worker(platform, concurrency=8)
    claimed = eight.claim_many()
    with platform.db.read() as conn:
        owners = [
            conn.execute(select(generations.c.user_id).where(generations.c.id == c.id)).scalar_one()
            for c in claimed
        ]
    assert len(claimed) == 3  # one of Free's, two of Starter's
    assert len(set(owners)) == 2
    assert eight.claim_many() == []  # both wallets at their caps


def test_one_job_from_claim_to_capture_in_two_transactions(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    job = submit(platform, "sam@example.com", GenerationRequest("flux-schnell", "x", params=FAST))
    one = worker(platform)
    with traffic(platform) as seen:
        claimed = one.claim()
        assert claimed is not None
        one.runner.run(claimed)
    transactions = seen.of_jobs()
    # The claim (read the queue, caps, plans; UPDATE … RETURNING), and the
    # end (lock the job, its output, the ledger's capture, the status).
    assert len(transactions) == 2, transactions
    assert len(transactions[0]) <= 5, transactions[0]
    assert sum(len(t) for t in transactions) <= 21, transactions
    with platform.db.read() as conn:
        row = conn.execute(select(generations).where(generations.c.id == job.id)).one()
        assert (row.status, row.credits_charged) == ("succeeded", 1)
        assert row.provider_request_id is not None  # stored with the end
        assert check_ledger(conn) == []


class SlowDownloads:
    """The platform's provider; its downloads count, and one may crash."""

    def __init__(self, provider: Any, crash_at: int | None) -> None:
        self.provider = provider
        self.name = provider.name
        self.downloads = 0
        self.crash_at = crash_at

    def download(self, output: Any) -> bytes:
        self.downloads += 1
        if self.downloads == self.crash_at:
            raise RuntimeError("the worker dies fetching this output")
        data: bytes = self.provider.download(output)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)


def test_outputs_are_recorded_on_the_way_and_not_fetched_again(
    platform: Platform, clock: Any
) -> None:
    from datetime import timedelta

    from plasmaart.generation.runner import LEASE

    make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        "sam@example.com",
        GenerationRequest("flux-schnell", "x", num_outputs=3, params=FAST),
    )
    first = worker(platform)
    crashing = SlowDownloads(platform.provider, crash_at=3)
    first.runner.provider = crashing
    claimed = first.claim()
    assert claimed is not None
    try:
        first.runner.run(claimed)
    except RuntimeError:
        pass
    else:  # pragma: no cover - the download raised
        raise AssertionError("the third download should have crashed the worker")
    with platform.db.read() as conn:
        recorded = conn.execute(
            select(generation_outputs.c.position).where(
                generation_outputs.c.generation_id == job.id
            )
        ).scalars()
        assert sorted(recorded) == [0, 1]
    clock.advance(LEASE + timedelta(seconds=1))
    second = worker(platform)
    counting = SlowDownloads(platform.provider, crash_at=None)
    second.runner.provider = counting
    resumed = second.claim()
    assert resumed is not None
    assert resumed.resumed
    second.runner.run(resumed)
    assert counting.downloads == 1  # only the output not recorded
    with platform.db.read() as conn:
        row = conn.execute(select(generations).where(generations.c.id == job.id)).one()
        assert (row.status, row.credits_charged) == ("succeeded", 3)
        assert check_ledger(conn) == []

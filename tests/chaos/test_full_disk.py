"""The disk fills up under SQLite and the media folder, mid-burst.

In-process first: a write too large for what is left of a nearly full disk,
batched by the group-commit writer with small ones. SQLite rolls the whole
transaction back; the large write alone fails (``StorageFull``), the others
run again and commit, and the writer goes on without a restart.

Then real processes: ``plasmaart serve --no-worker`` and ``plasmaart worker``
with the database and the media folder on a size-limited filesystem
(tests/support/faults/disk.py). Creators submit generations with the Python
client and buy packs; mid-burst the disk is filled to its last byte, then
freed. Checked: every answer is 2xx, a documented 4xx or 507
``storage_full`` (with ``Retry-After``; never a 500), reads keep working,
``/readyz`` says ``database_disk_full`` while it lasts and nothing after; no
half-written row (``check_ledger`` clean, every 201 has its job and its hold,
a refused submission or purchase left nothing); once freed, without a
restart, submissions are accepted again and every job ends succeeded with all
its outputs, charged for exactly those; every output's file is whole and no
other file (a partial or orphan one) is in the media folder.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection, select, text

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.client import Client
from plasmaart.client.errors import ApiError
from plasmaart.clock import ManualClock
from plasmaart.db import disk_full
from plasmaart.db.disk_full import WATCH, StorageFull
from plasmaart.db.engine import create_database
from plasmaart.db.tables import generation_outputs, generations, holds, payments
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.faults.disk import DiskFull, SizeLimitedDir, size_limited_dir
from tests.support.platforms import running_platform, settings_for
from tests.support.processes import ServerProcess, WorkerProcess, child_env

SIZE_MB = 24
WAIT_S = 20.0
CREATORS = 3


def until(condition: Callable[[], bool], what: str, within: float = WAIT_S) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.05)


# -- the group-commit writer on a nearly full disk ---------------------------


def test_a_write_too_large_for_the_disk_fails_alone_and_its_batch_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with size_limited_dir(16) as disk:
        db = create_database(f"sqlite:///{disk.path}/batch.db")
        try:
            with db.write() as conn:
                conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)"))
            disk.fill()
            disk.make_room(256 << 10)  # room for small writes, not for 4 MiB
            gate = threading.Event()
            results: dict[str, object] = {}

            def insert(key: str, size: int, wait: bool = False) -> Callable[[Connection], str]:
                def write(conn: Connection) -> str:
                    if wait:  # holds the writer while the others queue into one batch
                        gate.wait(10)
                    conn.execute(
                        text("INSERT INTO t (k, v) VALUES (:k, randomblob(:n))"),
                        {"k": key, "n": size},
                    )
                    return key

                return write

            def call(key: str, fn: Callable[[Connection], str]) -> None:
                try:
                    results[key] = db.run_write(fn)
                except Exception as exc:
                    results[key] = exc

            first = threading.Thread(target=call, args=("first", insert("first", 10, wait=True)))
            first.start()
            until(lambda: db.group_commit is not None and db.group_commit._runner is not None, "")
            batch = [("b", 100), ("c", 100), ("large", 4 << 20), ("d", 100)]
            threads = [threading.Thread(target=call, args=(k, insert(k, n))) for k, n in batch]
            for thread in threads:
                thread.start()
            assert db.group_commit is not None
            until(lambda: db.group_commit is not None and db.group_commit.queued() == 4, "queued")
            gate.set()
            for thread in [first, *threads]:
                thread.join(timeout=WAIT_S)

            assert isinstance(results.pop("large"), StorageFull)
            assert results == {"first": "first", "b": "b", "c": "c", "d": "d"}
            with db.read() as conn:
                keys = conn.execute(text("SELECT k FROM t ORDER BY k")).scalars().all()
            assert keys == ["b", "c", "d", "first"]
            assert "database" in WATCH.full()  # until a write succeeds a while after

            disk.free()
            # Past the quiet spell that ends an outage, a write ends it.
            monkeypatch.setattr(disk_full, "QUIET_S", 0.0)
            assert db.run_write(insert("large again", 4 << 20)) == "large again"
            assert WATCH.full() == []
            with db.read() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        finally:
            db.dispose()


# -- the worker, the media folder's disk full (SQLite and PostgreSQL) ---------


def test_a_worker_whose_media_disk_fills_hands_the_job_back_and_ends_it_once_there_is_room(
    database_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        disk = stack.enter_context(size_limited_dir(8))
        media = disk.path / "media"
        settings = settings_for(database_url, tmp_path / "var", storage_dir=media)
        platform = stack.enter_context(running_platform(settings, clock))
        user = make_user(platform, "creator@example.com", plan="pro")
        with platform.db.write() as conn:
            job = platform.generations.submit(
                conn,
                platform.accounts.get(conn, user.id),
                GenerationRequest(
                    "flux-schnell", "a heron", num_outputs=2, params={"sandbox": {"delay_s": 0}}
                ),
            )
        # Room for the first output (at most 480 KiB), not for the second.
        disk.fill()
        disk.make_room(700 << 10)
        worker = Worker(platform, concurrency=1)
        worker.runner.sleep = lambda _seconds: None

        assert worker.drain() == 1
        with platform.db.read() as conn:
            row = conn.execute(select(generations).where(generations.c.id == job.id)).one()
            kept = list(
                conn.execute(
                    select(generation_outputs).where(generation_outputs.c.generation_id == job.id)
                )
            )
            hold = conn.execute(select(holds).where(holds.c.id == row.hold_id)).one()
        # The first output was recorded before the second was fetched; the
        # second's file is gone; nothing charged; the job waits a lease,
        # this attempt counted (the next must read the first output back).
        assert row.status == "running"
        assert row.attempts == 1
        assert [o.position for o in kept] == [0]
        assert (hold.status, hold.captured) == ("pending", 0)
        expected = {kept[0].storage_key, f".meta/{kept[0].storage_key}.json"}
        assert media_files(media) == expected
        assert worker.drain() == 0  # not before its time

        disk.free()
        clock.advance(timedelta(seconds=platform.settings.job_lease_s + 1))
        assert worker.drain() == 1
        with platform.db.read() as conn:
            row = conn.execute(select(generations).where(generations.c.id == job.id)).one()
            outputs = list(
                conn.execute(
                    select(generation_outputs).where(generation_outputs.c.generation_id == job.id)
                )
            )
            assert check_ledger(conn) == []
        assert row.status == "succeeded"
        assert sorted(o.position for o in outputs) == [0, 1]
        assert row.credits_charged == 2 * row.credits_per_output
        assert media_files(media) == {o.storage_key for o in outputs} | {
            f".meta/{o.storage_key}.json" for o in outputs
        }
        for output in outputs:
            assert (media / output.storage_key).stat().st_size == output.size


# -- real processes, a full disk mid-burst -----------------------------------


@dataclass
class Creator:
    name: str
    user: TestUser
    url: str
    accepted: dict[str, str] = field(default_factory=dict)  # key -> generation id
    refused_full: set[str] = field(default_factory=set)  # submissions answered 507
    packs: set[str] = field(default_factory=set)  # purchase keys answered 201
    packs_refused: set[str] = field(default_factory=set)  # answered 507
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        # No retries: every answer is the server's own.
        self.client = Client(self.url, self.user.api_key, max_retries=0, timeout=15)
        self.http = httpx.Client(base_url=self.url, headers=self.user.auth, timeout=15)

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def round(self, submissions: int, packs: int) -> list[int]:
        """Submit, then buy; the statuses answered."""
        statuses = [self.submit() for _ in range(submissions)]
        statuses += [self.buy() for _ in range(packs)]
        return statuses

    def until_refused(self, limit: int) -> None:
        """Alternate submissions and purchases until one is refused 507."""
        for n in range(limit):
            if (self.buy() if n % 2 == 0 else self.submit()) == 507:
                return

    def submit(self) -> int:
        self.sent += 1
        key = f"{self.name}-{self.sent}"
        try:
            generation = self.client.create_generation(
                "flux-schnell",
                f"{key}: a lighthouse in fog",
                params={"sandbox": {"delay_s": 0}},
                idempotency_key=key,
            )
        except ApiError as refused:
            self.statuses.append(refused.status)
            if refused.status != 507:
                self.errors.append(f"{key}: {refused}")
                return refused.status
            if refused.code != "storage_full" or refused.extra.get("retry_after") != 30:
                self.errors.append(f"{key}: {refused} {refused.extra}")
            self.refused_full.add(key)
            return refused.status
        self.statuses.append(201)
        self.accepted[key] = generation.id
        return 201

    def buy(self) -> int:
        self.sent += 1
        key = f"{self.name}-pack-{self.sent}"
        answer = self.http.post(
            "/v1/credit-purchases", json={"pack": "pack-1000"}, headers={"Idempotency-Key": key}
        )
        self.statuses.append(answer.status_code)
        if answer.status_code == 201:
            self.packs.add(key)
        elif answer.status_code == 507:
            if answer.headers.get("retry-after") != "30":
                self.errors.append(f"{key}: 507 without Retry-After: {answer.headers}")
            self.packs_refused.add(key)
        else:
            self.errors.append(f"{key}: {answer.status_code} {answer.text}")
        return answer.status_code


def together(creators: list[Creator], work: Callable[[Creator], object]) -> list[object]:
    """``work`` for every creator at once, in threads; their results."""
    with ThreadPoolExecutor(len(creators)) as pool:
        return list(pool.map(work, creators, timeout=WAIT_S))


@pytest.fixture
def disk() -> Iterator[SizeLimitedDir]:
    with size_limited_dir(SIZE_MB) as mounted:
        yield mounted


@pytest.fixture
def platform(disk: SizeLimitedDir, sqlite_template: Path, tmp_path: Path) -> Iterator[Platform]:
    """The test's platform: its database and media folder on the small disk."""
    database = disk.path / "plasmaart.db"
    shutil.copyfile(sqlite_template, database)
    settings = settings_for(
        f"sqlite:///{database}", tmp_path / "var", storage_dir=disk.path / "media"
    )
    with running_platform(settings, ManualClock()) as built:
        yield built


def media_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_full_disk_mid_burst_refuses_writes_cleanly_and_recovers_by_itself(
    platform: Platform, disk: SizeLimitedDir, tmp_path: Path
) -> None:
    media = disk.path / "media"
    env = child_env(platform.settings.database_url, tmp_path / "var") | {
        "PLASMAART_STORAGE_DIR": str(media),
        "PLASMAART_JOB_LEASE_S": "2",
    }
    full = DiskFull(disk)
    with ExitStack() as stack:
        server = ServerProcess("api", env, tmp_path)
        stack.callback(server.close)
        worker = WorkerProcess("worker", env, tmp_path, concurrency=4)
        stack.callback(worker.close)
        creators = []
        for n in range(CREATORS):
            user = make_user(platform, f"creator{n}@example.com", plan="pro")
            with platform.db.write() as conn:
                backend = platform.billing.backend
                assert isinstance(backend, SandboxBackend)
                backend.set_card(conn, user.id, declines=False, requires_action=False)
            creator = Creator(f"c{n}", user, server.url)
            stack.callback(creator.close)
            creators.append(creator)
        server.start()

        # Before: accepted, and jobs running when the disk fills.
        assert together(creators, lambda c: c.round(2, 1)) == [[201, 201, 201]] * CREATORS
        full.inject()
        together(creators, lambda c: c.until_refused(12))
        assert all(c.refused_full or c.packs_refused for c in creators)
        # Reads go on; /readyz is ready, and says what is degraded.
        reader = creators[0].client
        assert reader.balance().available > 0
        assert reader.generation(next(iter(creators[0].accepted.values()))).id
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 200
        assert "database_disk_full" in ready.json()["degraded"]
        until(lambda: "disk is full; nothing charged" in worker.log(), "a job stopped", 10)
        full.heal()
        # After: accepted again, without a restart.
        assert together(creators, lambda c: c.round(1, 1)) == [[201, 201]] * CREATORS
        until(lambda: httpx.get(f"{server.url}/readyz").json()["degraded"] == [], "readyz clear")

        def all_ended() -> bool:
            with platform.db.read() as conn:
                return not conn.execute(
                    select(generations.c.id).where(generations.c.status.in_(("queued", "running")))
                ).first()

        until(all_ended, "every job ended", within=40)
        api_log, worker_log = server.log(), worker.log()

    problems = [error for c in creators for error in c.errors]
    statuses = sorted({s for c in creators for s in c.statuses})
    assert set(statuses) <= {201, 429, 507}, statuses
    with platform.db.read() as conn:
        problems += check_ledger(conn)
        jobs = {row.id: row for row in conn.execute(select(generations))}
        outputs = list(conn.execute(select(generation_outputs)))
        all_holds = {row.id: row for row in conn.execute(select(holds))}
        pack_payments = conn.execute(
            select(payments.c.wallet_id).where(payments.c.kind == "pack")
        ).all()
    for c in creators:
        for key, generation_id in c.accepted.items():
            job = jobs.get(generation_id)
            if job is None:
                problems.append(f"{key}: answered 201 as {generation_id}, no such job")
            elif job.hold_id not in all_holds:
                problems.append(f"{key}: job {generation_id} without its hold")
        paid = sum(1 for (wallet,) in pack_payments if wallet == c.user.wallet_id)
        if paid != len(c.packs):
            problems.append(
                f"{c.name}: {paid} pack payments for {len(c.packs)} purchases answered 201"
            )
    # A refused submission left nothing: every job is one a client was told of.
    accepted = {gid for c in creators for gid in c.accepted.values()}
    problems += [f"{gid}: a job no client was told of" for gid in set(jobs) - accepted]
    stored: dict[str, list[object]] = {}
    for output in outputs:
        stored.setdefault(output.generation_id, []).append(output)
        data = media / output.storage_key
        if not data.is_file() or data.stat().st_size != output.size:
            problems.append(f"{output.storage_key}: missing or not whole")
    for job in jobs.values():
        count = len(stored.get(job.id, []))
        hold = all_holds[job.hold_id]
        if job.status != "succeeded" or count != job.num_outputs:
            problems.append(
                f"{job.id}: {job.status} with {count}/{job.num_outputs} ({job.error_message})"
            )
        if (
            job.credits_charged != count * job.credits_per_output
            or hold.captured != job.credits_charged
        ):
            problems.append(f"{job.id}: charged {job.credits_charged} for {count} outputs")
    expected = {o.storage_key for o in outputs} | {f".meta/{o.storage_key}.json" for o in outputs}
    leftovers = media_files(media) - expected
    problems += [f"{name}: a file no output owns (partial or orphan)" for name in sorted(leftovers)]
    assert "the database disk is full" in api_log
    assert "takes writes again" in api_log or "has room again" in api_log
    assert "Traceback" not in api_log, api_log[-4000:]
    assert "Traceback" not in worker_log, worker_log[-4000:]
    assert problems == [], problems[:20]
    refused = sum(len(c.refused_full) + len(c.packs_refused) for c in creators)
    stopped = worker_log.count("disk is full; nothing charged")
    print(  # noqa: T201 - the chaos report is meant to be read
        f"\nfull disk: {len(jobs)} jobs accepted, "
        f"{sum(len(c.packs) for c in creators)} packs bought, "
        f"{refused} writes refused 507 storage_full, {stopped} job runs handed back by the "
        f"worker; every job succeeded with all its outputs, {len(outputs)} files whole, "
        f"no leftover file, ledger clean"
    )

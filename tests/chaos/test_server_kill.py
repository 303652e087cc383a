"""The API server killed with SIGKILL in the middle of submissions, on SQLite
and PostgreSQL (DESIGN.md §4: nothing accepted is lost, no credit is held
without its job).

Two things are shown:

* In-process, deterministically: a submission that fails after its hold was
  written but before its job row (the only window where a hold could be
  orphaned) leaves nothing at all, because the hold and the job are written
  in one transaction.
* With real processes and real time: clients submit generations with
  ``Idempotency-Key``s, as fast as the server answers, while the test kills
  ``plasmaart serve`` with SIGKILL at random moments and starts it again. A
  client whose request got no answer retries it with the same key, as the
  Python client does. At the end every key that was ever answered 201 has
  exactly one job, every job has exactly one pending hold of its credits,
  no hold is without its job, the wallets equal their initial credits, and
  the books balance (``check_ledger``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings
from plasmaart.db.tables import generations, holds, journal_entries
from plasmaart.generation import repository as generation_repository
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.processes import ServerProcess, child_env

# Bounds: kills, submissions per client, and the whole run.
KILLS = 4
CLIENTS = 3
SUBMISSIONS_PER_CLIENT = 25
RUN_WITHIN_S = 120.0
REQUEST_TIMEOUT_S = 5.0
SEED = 20261126
TAKEOVER_S = 2


def test_a_failure_between_hold_and_job_leaves_nothing(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user(platform, "crash@example.com", plan="pro")
    with platform.db.read() as conn:
        before = platform.ledger.balance(conn, user.wallet_id)
        entries_before = conn.execute(select(func.count()).select_from(journal_entries)).scalar()

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the process died here")

    # The job insert runs after the hold, in the same transaction.
    monkeypatch.setattr(generation_repository, "insert_queued_within", crash)
    with platform.db.read() as conn:
        account = platform.accounts.get(conn, user.id)

    def submit() -> None:
        # As the API submits: the read step, then the write function.
        platform.submissions.submit(account, GenerationRequest("flux-schnell", "a lost job", 2))

    with pytest.raises(RuntimeError, match="died here"):
        submit()
    with platform.db.read() as conn:
        after = platform.ledger.balance(conn, user.wallet_id)
        assert (after.available, after.held) == (before.available, before.held)
        assert conn.execute(select(func.count()).select_from(holds)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(generations)).scalar() == 0
        entries = conn.execute(select(func.count()).select_from(journal_entries)).scalar()
        assert entries == entries_before
        assert check_ledger(conn) == []


@dataclass
class Client:
    """One creator submitting in a loop; each key is retried until answered."""

    user: TestUser
    name: str
    accepted: dict[str, str] = field(default_factory=dict)  # key -> generation id
    refused: dict[str, int] = field(default_factory=dict)  # key -> status
    retries: int = 0  # requests that got no answer (the server was down)
    waits: int = 0  # 409 answers: the key's first request died with the server
    answered: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self, server: ServerProcess, deadline: float) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
            for n in range(SUBMISSIONS_PER_CLIENT):
                key = f"{self.name}-{n}"
                body = {
                    "model": "flux-schnell",
                    "prompt": f"{self.name} submission {n}: a kite over dunes",
                    "num_outputs": 1 + n % 3,
                }
                while True:
                    if time.monotonic() > deadline:
                        self.errors.append(f"{key}: no answer before the deadline")
                        return
                    try:
                        response = http.post(
                            f"{server.url}/v1/generations",
                            json=body,
                            headers={**self.user.auth, "Idempotency-Key": key},
                        )
                    except httpx.TransportError:
                        # The server died or is restarting: the same key again.
                        self.retries += 1
                        time.sleep(0.05)
                        continue
                    if response.status_code == 201:
                        generation_id = response.json()["id"]
                        if self.accepted.setdefault(key, generation_id) != generation_id:
                            self.errors.append(f"{key}: answered with two different jobs")
                    elif response.status_code == 409:
                        # The first attempt is still running (or died holding the
                        # key's lock): wait and ask again.
                        self.waits += 1
                        time.sleep(0.1)
                        continue
                    elif response.status_code == 429:
                        self.refused[key] = 429
                    else:
                        self.errors.append(f"{key}: {response.status_code} {response.text}")
                    self.answered += 1
                    break


def test_killing_the_server_mid_submission_loses_nothing(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    platform = bootstrap(
        Settings(database_url=database_url, var_dir=tmp_path / "var"), migrate=False
    )
    env = child_env(database_url, tmp_path / "var")
    # A key whose request died with the server is taken over after this.
    env["PLASMAART_IDEMPOTENCY_TAKEOVER_S"] = str(TAKEOVER_S)
    server = ServerProcess("serve", env, tmp_path)
    try:
        clients = [
            Client(make_user(platform, f"kill{n}@example.com", plan="studio"), f"c{n}")
            for n in range(CLIENTS)
        ]
        with platform.db.read() as conn:
            initial = {
                c.user.wallet_id: platform.ledger.balance(conn, c.user.wallet_id).available
                for c in clients
            }
        server.start()
        deadline = started + RUN_WITHIN_S
        threads = [
            threading.Thread(target=c.run, args=(server, deadline), name=c.name) for c in clients
        ]
        for thread in threads:
            thread.start()
        pick = random.Random(SEED)
        kills = 0
        total = CLIENTS * SUBMISSIONS_PER_CLIENT
        while kills < KILLS and any(t.is_alive() for t in threads):
            # Spread the kills over the burst, each at a random moment of a
            # request (the server is busy answering all the time).
            if sum(c.answered for c in clients) < total * (kills + 1) // (KILLS + 2):
                time.sleep(0.01)
                continue
            time.sleep(pick.uniform(0.0, 0.05))
            server.kill()
            kills += 1
            time.sleep(pick.uniform(0.0, 0.3))
            server.start()
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 1))
            assert not thread.is_alive(), f"{thread.name} did not finish"
        problems = [error for c in clients for error in c.errors]

        with platform.db.read() as conn:
            jobs = {row.id: row for row in conn.execute(select(generations))}
            all_holds = {row.id: row for row in conn.execute(select(holds))}
            by_key = Counter((row.user_id, row.idempotency_key) for row in jobs.values())
            for c in clients:
                for key, generation_id in c.accepted.items():
                    if generation_id not in jobs:
                        problems.append(f"{key}: accepted as {generation_id}, but no job")
                for key in c.refused:
                    if by_key[(c.user.id, key)]:
                        problems.append(f"{key}: refused, yet a job exists")
            problems += [f"{key}: {n} jobs" for key, n in by_key.items() if n > 1]
            accepted_ids = {gid for c in clients for gid in c.accepted.values()}
            # A job whose 201 never reached the client is fine only if the
            # client's retry with the same key was answered with it.
            problems += [f"{gid}: a job no client was told of" for gid in set(jobs) - accepted_ids]
            held_by_job = {row.hold_id: row for row in jobs.values()}
            for hold in all_holds.values():
                job = held_by_job.get(hold.id)
                if job is None:
                    problems.append(f"hold {hold.id}: no job (an orphan hold)")
                elif (hold.status, int(hold.amount)) != ("pending", int(job.credits_held)):
                    problems.append(f"hold {hold.id}: {hold.status} {hold.amount} for {job.id}")
            problems += [f"{j.id}: {j.status}" for j in jobs.values() if j.status != "queued"]
            for c in clients:
                balance = platform.ledger.balance(conn, c.user.wallet_id)
                if balance.available + balance.held != initial[c.user.wallet_id]:
                    problems.append(f"{c.name}: {balance} from {initial[c.user.wallet_id]}")
            problems += check_ledger(conn)
        accepted = sum(len(c.accepted) for c in clients)
        with capsys.disabled():
            print(  # noqa: T201 - the chaos report is meant to be read
                f"\nserver kill ({platform.db.dialect}): {kills} SIGKILLs, "
                f"{CLIENTS * SUBMISSIONS_PER_CLIENT} submissions, {accepted} accepted, "
                f"{sum(len(c.refused) for c in clients)} refused, "
                f"{sum(c.retries for c in clients)} retries after no answer, "
                f"{sum(c.waits for c in clients)} 409s while a dead request's key was held, "
                f"{len(all_holds)} holds checked, violations: {len(problems)}, "
                f"{time.monotonic() - started:.1f} s"
            )
        assert kills == KILLS
        assert accepted > 0
        assert not problems, "\n".join(problems) + "\n" + server.log()[-3000:]
    finally:
        server.close()
        platform.close()

"""A provider that lies (docs/reliability.md, "The provider lies"), on SQLite
and PostgreSQL: the platform with the fal provider and a real worker, against
the fake fal (``tests/support/fake_fal.py``) told to hang, answer 500s,
answer malformed JSON, deliver k of n outputs, or answer after the job's
deadline, each lie chosen per request by a marker in its prompt, then a mixed
burst of random lies with ``ProviderLies`` switching them on and off, and
the harness driving ``plasmaart serve`` and ``plasmaart worker`` child
processes (``fal_env``), as the bank test would.

However the provider lies, every job ends in a terminal state, charged for
exactly the outputs it stored (credits per output x outputs), which are
exactly the files the fake served (its own record), its hold resolved once
for that amount, and ``check_ledger`` clean. Jobs run on the test's manual
clock: a retry's backoff moves it by the delay (and, without webhooks, a
wait between polls by 10 s), so the 5-minute wait deadline of an image job
comes in a few real seconds, while a hang costs the real client timeout.

Timing holds on a slow, loaded machine (CI: two cores, the whole suite): the
client timeout is generous, so that only a hang reaches it, and a hang lasts
far longer than it (until the fake heals or closes), so that a hang and an
honest answer never race; a late answer arrives when the test says so, and
every wait is for a condition, bounded.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import select

from plasmaart.bootstrap import bootstrap
from plasmaart.clock import ManualClock, SystemClock
from plasmaart.config import Settings
from plasmaart.db.tables import fal_webhooks, generation_outputs, generations, holds
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.fake_fal import Behaviour, FakeFal, Lie
from tests.support.faults.provider import ProviderLies, fal_env, random_lie
from tests.support.live_server import live_server
from tests.support.pgserver import free_port
from tests.support.platforms import running_platform, settings_for
from tests.support.processes import ServerProcess, WorkerProcess, child_env

T = TypeVar("T")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
WAIT_S = 20.0
# One call to fal waits this long for an answer: what a hang costs. No honest
# answer of the fake, even on a slow machine, takes this long.
CLIENT_TIMEOUT_S = 1.5
# How long a hang lasts (unless the fake heals or closes first): far longer
# than the client waits, so a hang is always cut short by the client.
HANG_S = 120.0
PARAMS = {"seed": 7, "aspect_ratio": "1:1"}


@dataclass
class Rig:
    platform: Platform
    fake: FakeFal
    clock: ManualClock
    worker: Worker
    user: TestUser


@contextmanager
def rig(
    database_url: str,
    clock: ManualClock,
    tmp_path: Path,
    *,
    webhooks: bool,
) -> Iterator[Rig]:
    """The platform with the fal provider pointed at a fake fal, a worker,
    and a Pro user; with ``webhooks``, served by uvicorn so that the fake's
    webhooks reach ``POST /v1/webhooks/fal``."""
    with ExitStack() as stack:
        fake = stack.enter_context(FakeFal(clock))
        fake.hang_s = HANG_S
        fake.default = Behaviour(queued_polls=0, running_polls=1)
        port = free_port()
        extra: dict[str, Any] = {"fal_timeout_s": CLIENT_TIMEOUT_S}
        if webhooks:
            extra.update(
                fal_webhook_url=f"http://127.0.0.1:{port}/v1/webhooks/fal",
                fal_poll_interval_s=0.05,
            )
        settings = settings_for(database_url, tmp_path / "var", **fake.platform_settings(), **extra)
        platform = stack.enter_context(running_platform(settings, clock))
        if webhooks:
            stack.enter_context(live_server(platform, port=port))
        worker = Worker(platform, concurrency=4)
        runner = worker.runner
        runner.retry_delays_s = (60.0, 120.0)
        if webhooks:  # polls wait for the webhook in real time
            runner.sleep = lambda seconds: clock.advance(timedelta(seconds=seconds)) and None
        else:
            runner.sleep = lambda seconds: (
                clock.advance(timedelta(seconds=max(seconds, 10))) and None
            )
        user = make_user(platform, "lied-to@example.com", plan="pro")
        yield Rig(platform, fake, clock, worker, user)


def submit(rig: Rig, prompt: str, *, model: str = "flux-dev", outputs: int = 4) -> str:
    params = PARAMS if model == "flux-dev" else {"duration_s": 5}
    with rig.platform.db.write() as conn:
        user = rig.platform.accounts.get_by_email(conn, "lied-to@example.com")
        job = rig.platform.generations.submit(
            conn, user, GenerationRequest(model, prompt, num_outputs=outputs, params=params)
        )
    return job.id


def wait_for(value: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = value()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def row(rig: Rig, generation_id: str) -> Any:
    with rig.platform.db.read() as conn:
        return conn.execute(select(generations).where(generations.c.id == generation_id)).one()


def settled(rig: Rig) -> dict[str, tuple[str, str | None, int]]:
    """Every job's (status, error code, outputs stored), once each is checked
    against the books and the fake's record: terminal; each output stored a
    file the fake served for its request; charged == stored x credits per
    output; its hold captured or released once, for exactly that. (The cases
    of one lie also check the count stored against what the fake served.)"""
    with rig.platform.db.read() as conn:
        assert check_ledger(conn) == []
        jobs = list(conn.execute(select(generations)))
        stored: dict[str, set[int]] = {}
        for output in conn.execute(select(generation_outputs)):
            stored.setdefault(output.generation_id, set()).add(int(output.position))
        by_id = {hold.id: hold for hold in conn.execute(select(holds))}
    served = rig.fake.record()
    outcome: dict[str, tuple[str, str | None, int]] = {}
    for job in jobs:
        positions = stored.get(job.id, set())
        count = len(positions)
        assert job.status in TERMINAL, f"{job.id} still {job.status}"
        record = served.get(job.provider_request_id or "")
        # Each output stored is a file the fake served (one it served may
        # not have arrived: a client timeout mid-download leaves it out).
        delivered = set(record.downloads) if record is not None else set()
        assert positions <= delivered, f"{job.id}: {positions} stored, the fake served {record}"
        charged = int(job.credits_charged)
        assert charged == count * int(job.credits_per_output), f"{job.id} charged {charged}"
        hold = by_id[job.hold_id]
        assert (hold.status, int(hold.captured), int(hold.released)) == (
            "captured" if charged else "released",
            charged,
            int(job.credits_held) - charged,
        ), f"{job.id}: hold {hold}"
        outcome[job.id] = (job.status, job.error_code, count)
    return outcome


def test_a_hang_is_bounded_by_the_client_timeout_retried_then_failed(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    with rig(database_url, clock, tmp_path, webhooks=False) as r:
        # Each hang costs a (generous) client timeout: few of them, by one
        # retry and a minute between two polls of the 5-minute wait.
        r.worker.runner.retry_delays_s = (60.0,)
        r.worker.runner.sleep = lambda seconds: (
            clock.advance(timedelta(seconds=max(seconds, 60))) and None
        )
        passes = submit(r, "fox " + Lie("hang", "status", times=1).marker())
        at_submit = submit(r, "owl " + Lie("hang", "submit").marker())
        at_result = submit(r, "elk " + Lie("hang", "result").marker())
        started = time.monotonic()
        assert r.worker.drain() == 3
        # Each hang costs one client timeout (some 8 of them, one after
        # another: 12 s), never the fake's two-minute hang.
        assert time.monotonic() - started < HANG_S / 2
        outcome = settled(r)
    assert outcome[passes] == ("succeeded", None, 4)
    assert outcome[at_submit] == ("failed", "provider_unavailable", 0)
    assert outcome[at_result] == ("failed", "provider_unavailable", 0)
    told = {record.told[:2] for record in r.fake.record().values()}
    assert ("status:hang",) in told
    assert ("result:hang", "result:hang") in told


def test_500s_are_retried_then_fail_the_job_if_they_last(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    with rig(database_url, clock, tmp_path, webhooks=False) as r:
        passes = submit(r, "fox " + Lie("error", "status", times=2).marker())
        at_submit = submit(r, "owl " + Lie("error", "submit").marker())
        at_result = submit(r, "elk " + Lie("error", "result").marker())
        assert r.worker.drain() == 3
        outcome = settled(r)
        assert r.fake.submit_lies.count("submit:error") >= 2  # retried before giving up
        error = row(r, at_result).error_message
    assert outcome[passes] == ("succeeded", None, 4)
    assert outcome[at_submit] == ("failed", "provider_unavailable", 0)
    assert outcome[at_result] == ("failed", "provider_unavailable", 0)
    assert "HTTP 500" in error, error


def test_malformed_answers_are_provider_errors_retried_or_failed(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    with rig(database_url, clock, tmp_path, webhooks=False) as r:
        jobs = {
            "submit, not JSON, once": submit(r, "a " + Lie("malformed", "submit", 1).marker()),
            "status, wrong shape, once": submit(
                r, "b " + Lie("malformed", "status", 1, shape="wrong").marker()
            ),
            "result, not JSON, once": submit(r, "c " + Lie("malformed", "result", 1).marker()),
            "result, wrong shape, always": submit(
                r, "d " + Lie("malformed", "result", shape="wrong").marker()
            ),
            "status, not JSON, always": submit(r, "e " + Lie("malformed", "status").marker()),
        }
        assert r.worker.drain() == len(jobs)
        outcome = settled(r)
    assert {what: outcome[job] for what, job in jobs.items()} == {
        "submit, not JSON, once": ("succeeded", None, 4),
        "status, wrong shape, once": ("succeeded", None, 4),
        "result, not JSON, once": ("succeeded", None, 4),
        "result, wrong shape, always": ("failed", "provider_unavailable", 0),
        "status, not JSON, always": ("failed", "provider_unavailable", 0),
    }


def test_k_of_n_outputs_are_charged_for_k(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    with rig(database_url, clock, tmp_path, webhooks=False) as r:
        one_of_four = submit(r, "fox " + Lie("partial", deliver=1).marker())
        none_of_two = submit(r, "owl " + Lie("partial", deliver=0).marker(), outputs=2)
        assert r.worker.drain() == 2
        outcome = settled(r)
        balance = r.platform.ledger
        with r.platform.db.read() as conn:
            available = balance.balance(conn, r.user.wallet_id).available
        charged = row(r, one_of_four)
    assert outcome[one_of_four] == ("succeeded", None, 1)
    assert outcome[none_of_two] == ("failed", "generation_failed", 0)
    assert (charged.credits_charged, available) == (5, 5000 - 5)
    served = r.fake.record()[charged.provider_request_id]
    assert (served.asked, served.offered, served.downloads) == (4, 1, (0,))


def test_an_answer_after_the_deadline_changes_nothing(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    with rig(database_url, clock, tmp_path, webhooks=True) as r:
        # A webhook fal signed whose body is garbage: acknowledged (fal would
        # otherwise deliver it again), the job ends by its poll all the same.
        garbled = submit(r, "owl " + Lie("malformed", "webhook").marker())
        assert r.worker.drain() == 1
        # Late by far more than the test lasts: it arrives when told (below).
        late = submit(r, "fox " + Lie("late", late_s=HANG_S).marker())
        thread = threading.Thread(target=r.worker.drain, daemon=True)
        thread.start()
        wait_for(lambda: row(r, late).provider_request_id, "the late job's first wait")
        r.clock.advance(timedelta(minutes=6))  # past the 5 min an image waits
        thread.join(WAIT_S)
        assert not thread.is_alive()
        ended = row(r, late)
        assert (ended.status, ended.error_code, ended.credits_charged) == ("failed", "timeout", 0)
        # The fake ignored the cancel; it completes now, and its webhook
        # arrives at a job that has ended: acknowledged, nothing else.
        request_id = ended.provider_request_id
        assert r.fake.record()[request_id].completed is False
        r.fake.complete(request_id)  # returns once the webhook is answered
        served = r.fake.record()[request_id]
        assert "cancel:ignored" in served.told
        assert (served.completed, served.webhooks, served.downloads) == (True, (200,), ())
        assert row(r, late) == ended
        outcome = settled(r)
        garbled_request = row(r, garbled).provider_request_id
        # Its poll may have ended the garbled job before its webhook was answered.
        wait_for(lambda: r.fake.record()[garbled_request].webhooks or None, "the garbled webhook")
        with r.platform.db.read() as conn:
            webhooks = {w.request_id: w for w in conn.execute(select(fal_webhooks))}
    assert outcome[late] == ("failed", "timeout", 0)
    assert outcome[garbled] == ("succeeded", None, 4)
    assert (webhooks[request_id].result, webhooks[request_id].outcome) == ("succeeded", "finished")
    assert webhooks[garbled_request].result == "payload_error"
    assert r.fake.record()[garbled_request].webhooks == (200,)


def test_a_burst_of_random_lies_ends_every_job_charged_for_what_arrived(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    rng = random.Random(20)
    with rig(database_url, clock, tmp_path, webhooks=False) as r:
        lies = ProviderLies(r.fake, rng, seconds=None, requests=3, late_s=0.5, hang_s=HANG_S)
        jobs = []
        thread = r.worker.start_thread()
        try:
            for n in range(14):
                if n in (4, 9):
                    lies.inject()  # the next 3 submissions lie, unless their prompt does
                if n == 12:
                    lies.heal()
                lie = random_lie(rng, late_s=0.5) if n % 3 else None
                marker = "" if lie is None else " " + lie.marker()
                video = n % 5 == 0
                jobs.append(
                    submit(
                        r,
                        f"burst {n}{marker}",
                        model="pixverse-v4.5" if video else "flux-dev",
                        outputs=1 if video else 1 + n % 4,
                    )
                )
            wait_for(
                lambda: all(row(r, job).status in TERMINAL for job in jobs) or None,
                "every job's end",
                timeout=45.0,
            )
        finally:
            r.worker.stop()
            thread.join(WAIT_S)
        assert not thread.is_alive()
        outcome = settled(r)
    assert sum(lies.told.values()) == 2
    statuses = {status for status, _code, _stored in outcome.values()}
    assert statuses <= TERMINAL
    assert "succeeded" in statuses
    assert "failed" in statuses
    ends = Counter(f"{status} ({code})" if code else status for status, code, _ in outcome.values())
    print(  # noqa: T201 - the chaos report is meant to be read
        f"\nprovider lies ({r.platform.db.dialect}): {len(jobs)} jobs, lies in prompts and "
        f"{sum(lies.told.values())} injected ({dict(lies.told)}): {dict(sorted(ends.items()))}"
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_child_processes_reach_the_lying_fake_through_fal_env(
    database_url: str, tmp_path: Path
) -> None:
    """The harness as the bank test would use it: ``plasmaart serve`` and
    ``plasmaart worker`` child processes configured by ``fal_env``, the fake
    (and ``ProviderLies``) in this process, on the real clock. One database
    is enough here: the cases above hold the charging on both."""
    var_dir = tmp_path / "var"
    setup = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=False)
    with ExitStack() as stack:
        stack.callback(setup.close)
        fake = stack.enter_context(FakeFal(SystemClock()))
        lies = ProviderLies(fake, random.Random(7), seconds=None, requests=1, hang_s=HANG_S)
        user = make_user(setup, "child@example.com", plan="pro")
        env = child_env(database_url, var_dir)
        server = ServerProcess("api", env, tmp_path)
        stack.callback(server.close)
        server.env.update(
            fal_env(fake, timeout_s=CLIENT_TIMEOUT_S, webhook_url=f"{server.url}/v1/webhooks/fal")
        )
        # The worker boots while the server does.
        worker = WorkerProcess("worker", server.env, tmp_path, 4)
        stack.callback(worker.close)
        server.start()
        prompts = [
            "honest",
            "hang " + Lie("hang", "status", times=1).marker(),
            "500s " + Lie("error", "result", times=2).marker(),
            "one of two " + Lie("partial", deliver=1).marker(),
            "garbled webhook " + Lie("malformed", "webhook", shape="wrong").marker(),
        ]

        def column(name: str) -> list[Any]:
            with setup.db.read() as conn:
                found = conn.execute(
                    select(generations.c[name]).where(generations.c.id.in_(jobs))
                ).scalars()
                return list(found)

        jobs: list[str] = []
        for n, prompt in enumerate([*prompts, "by the mode"]):
            if n == len(prompts):
                # Once every earlier job is at fal (none lies at submit), the
                # mode's lie, whichever it draws, is told to this last one.
                wait_for(
                    lambda: all(column("provider_request_id")) or None,
                    "the earlier jobs' submissions to fal",
                )
                lies.inject()
            answer = httpx.post(
                f"{server.url}/v1/generations",
                json={"model": "flux-dev", "prompt": prompt, "num_outputs": 2, "params": PARAMS},
                headers={**user.auth, "Idempotency-Key": f"child-{n}"},
                timeout=WAIT_S,
            )
            assert answer.status_code == 201, answer.text
            jobs.append(answer.json()["id"])

        def ended(among: list[str]) -> bool | None:
            with setup.db.read() as conn:
                states = conn.execute(
                    select(generations.c.status).where(generations.c.id.in_(among))
                ).scalars()
                return all(state in TERMINAL for state in states) or None

        # The lies in the prompts are told in full (healing would make their
        # requests honest); then honest again, so the mode's job ends soon.
        wait_for(lambda: ended(jobs[:-1]), "the prompt-lie jobs' end", timeout=30.0)
        lies.heal()
        wait_for(lambda: ended(jobs), "every job's end", timeout=30.0)
        r = Rig(setup, fake, ManualClock(), Worker(setup, 1), user)
        outcome = settled(r)
        garbled_request = row(r, jobs[4]).provider_request_id
        # Its poll may have ended the garbled job before its webhook was answered.
        wait_for(lambda: fake.record()[garbled_request].webhooks or None, "the garbled webhook")
    assert [outcome[job][::2] for job in jobs[:4]] == [
        ("succeeded", 2),
        ("succeeded", 2),
        ("succeeded", 2),
        ("succeeded", 1),
    ]
    served = fake.record()
    garbled = served[garbled_request]
    assert (outcome[jobs[4]][0], garbled.webhooks) == ("succeeded", (200,))
    assert sum(lies.told.values()) == 1

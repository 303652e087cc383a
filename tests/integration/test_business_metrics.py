"""The business metrics of /metrics, on SQLite and PostgreSQL: driven through
the services (grants, holds, captures, releases, expiry, jobs in each state,
a failed payment, a webhook waiting), then scraped and checked value by value;
the journal's counters read incrementally stay right across scrapes, across
out-of-order commits (PostgreSQL) and across processes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import journal_entries, notification_outbox
from plasmaart.generation.bounds import job_timeout
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.tasks import expire_due_lots
from plasmaart.platform import Platform
from plasmaart.web.business_metrics import BusinessMetrics
from plasmaart.web.metrics import MULTIPROC_ENV, prepare_processes
from plasmaart.worker import Worker, outbox_delivery, webhook_delivery
from tests.support.accounts import make_user
from tests.support.platforms import api_client, running_platform, settings_for
from tests.support.processes import ServerProcess, child_env

FAST = {"sandbox": {"delay_s": 0}}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def platform(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    settings = settings_for(database_url, tmp_path / "var", webhooks_allow_private=True)
    with running_platform(settings, clock) as built:
        yield built


@pytest.fixture
def client(platform: Platform) -> Iterator[TestClient]:
    with api_client(platform) as test_client:
        business = test_client.app.state.metrics.business  # type: ignore[attr-defined]
        assert isinstance(business, BusinessMetrics)
        business.ttl_s = 0  # every scrape reads: the test checks each step
        yield test_client


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: TestClient) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def submit(platform: Platform, email: str, request: GenerationRequest) -> str:
    with platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        return platform.generations.submit(conn, user, request).id


def credits_of(samples: Samples) -> dict[str, float]:
    return {
        "grant": value(samples, "plasmaart_credits_granted_total", kind="grant"),
        "held": value(samples, "plasmaart_credits_held_total"),
        "captured": value(samples, "plasmaart_credits_captured_total"),
        "released": value(samples, "plasmaart_credits_released_total"),
        "expired": value(samples, "plasmaart_credits_expired_total"),
        "available": value(samples, "plasmaart_credits_outstanding", state="available"),
        "on_hold": value(samples, "plasmaart_credits_outstanding", state="held"),
    }


def test_every_business_metric_after_a_day_of_business(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    t0 = clock.now()
    empty = scrape(client)
    assert value(empty, "plasmaart_business_metrics_up") == 1
    assert credits_of(empty) == dict.fromkeys(credits_of(empty), 0)

    # Grants: a Pro subscription (5000, and its payment) and a 100-credit purchase.
    kai = make_user(platform, "kai@example.com", plan="pro", credits=100)
    # A promo of 5 credits that expires unspent.
    with platform.db.write() as conn:
        platform.ledger.grant(
            conn,
            kai.wallet_id,
            5,
            source="promo",
            expires_at=t0 + timedelta(minutes=1),
            idempotency_key="promo",
        )
    clock.advance(timedelta(minutes=2))
    assert expire_due_lots(platform.db, platform.ledger).credits == 5
    granted = scrape(client)
    assert credits_of(granted) == {
        "grant": 5105,
        "held": 0,
        "captured": 0,
        "released": 0,
        "expired": 5,
        "available": 5100,
        "on_hold": 0,
    }

    # Two jobs wait 10 s in the queue; one succeeds after 3 s, one fails.
    ok_job = submit(
        platform,
        "kai@example.com",
        GenerationRequest("flux-schnell", "a fox", num_outputs=2, params={"seed": 1, **FAST}),
    )
    bad_job = submit(
        platform,
        "kai@example.com",
        GenerationRequest(
            "flux-schnell",
            "a cat",
            num_outputs=1,
            params={"seed": 2, "sandbox": {"fail": True, "delay_s": 0}},
        ),
    )
    worker = Worker(platform, 4)
    worker.runner.sleep = lambda _seconds: None
    clock.advance(timedelta(seconds=10))
    claims = worker.claim_many()
    assert sorted(claim.id for claim in claims) == sorted([ok_job, bad_job])
    clock.advance(timedelta(seconds=3))
    for claim in claims:
        worker.runner.run(claim)
    # A third job is claimed after 20 s and never ends; a fourth stays queued.
    stuck_job = submit(
        platform,
        "kai@example.com",
        GenerationRequest("flux-schnell", "a owl", num_outputs=1, params={"seed": 3, **FAST}),
    )
    clock.advance(timedelta(seconds=20))
    stuck = worker.claim()
    assert stuck is not None
    assert stuck.id == stuck_job
    submit(
        platform,
        "kai@example.com",
        GenerationRequest("flux-schnell", "a bee", num_outputs=1, params={"seed": 4, **FAST}),
    )
    clock.advance(timedelta(seconds=30))
    busy = scrape(client)
    assert credits_of(busy) == {
        "grant": 5105,
        "held": 5,  # 2 + 1 + 1 + 1
        "captured": 2,
        "released": 1,
        "expired": 5,
        "available": 5096,  # 5100 - 2 captured - 2 on hold
        "on_hold": 2,
    }
    assert value(busy, "plasmaart_ledger_entries_total", kind="hold") == 4
    assert value(busy, "plasmaart_jobs", state="queued", queue_class="priority") == 1
    assert value(busy, "plasmaart_jobs", state="running", queue_class="priority") == 1
    assert value(busy, "plasmaart_jobs", state="queued", queue_class="standard") == 0
    assert value(busy, "plasmaart_queue_oldest_wait_seconds", queue_class="priority") == 30
    assert value(busy, "plasmaart_jobs_started_15m", queue_class="priority") == 3
    # Waits 10, 10, 20: the median 10, the 95th percentile 20.
    assert (
        value(busy, "plasmaart_queue_wait_15m_seconds", queue_class="priority", quantile="0.5")
        == 10
    )
    assert (
        value(busy, "plasmaart_queue_wait_15m_seconds", queue_class="priority", quantile="0.95")
        == 20
    )
    finished = "plasmaart_jobs_finished_15m"
    assert value(busy, finished, model="flux-schnell", state="succeeded") == 1
    assert value(busy, finished, model="flux-schnell", state="failed") == 1
    assert value(busy, finished, model="flux-schnell", state="canceled") == 0
    assert (
        value(busy, "plasmaart_job_errors_15m", model="flux-schnell", reason="generation_failed")
        == 1
    )
    latency = "plasmaart_job_duration_15m_seconds"
    assert value(busy, latency, model="flux-schnell", quantile="0.5") == 3
    assert value(busy, latency, model="flux-schnell", quantile="0.95") == 3
    assert value(busy, "plasmaart_holds_past_deadline") == 0
    assert value(busy, "plasmaart_payments_1h", kind="subscription", outcome="succeeded") == 1

    # The running job's deadline passes (plus one lease): its hold is stuck.
    lease = timedelta(seconds=platform.settings.job_lease_s)
    clock.advance(job_timeout("text-to-image") + lease)
    assert value(scrape(client), "plasmaart_holds_past_deadline") == 1

    # A declined renewal: a failed payment, and its notice in the outbox.
    with platform.db.read() as conn:
        subscription = platform.billing.plans.subscription(conn, kai.wallet_id)
    assert subscription is not None
    with platform.db.write() as conn:
        platform.billing.subscriptions.renewal_failed(
            conn,
            subscription.id,
            period_end=subscription.current_period_end,
            reason="card declined",
        )
    # A webhook for a URL that refuses connections: fanned out, then retried.
    with platform.db.write() as conn:
        platform.webhook_events.emit(
            conn,
            cause_key="test:webhook",
            user_id=kai.id,
            type="generation.succeeded",
            data={"id": ok_job},
            webhook_url="http://127.0.0.1:9/hook",
        )
    clock.advance(timedelta(seconds=40))
    waiting = scrape(client)
    assert value(waiting, "plasmaart_payments_1h", kind="renewal", outcome="failed") == 1
    assert value(waiting, "plasmaart_payments_1h", kind="renewal", outcome="succeeded") == 0
    assert value(waiting, "plasmaart_webhook_backlog", stage="fanout") == 1
    assert value(waiting, "plasmaart_webhook_oldest_seconds", stage="fanout") == 40
    assert value(waiting, "plasmaart_webhook_backlog", stage="delivery") == 0
    with platform.db.read() as conn:
        undelivered = conn.execute(
            select(func.count())
            .select_from(notification_outbox)
            .where(notification_outbox.c.delivered_at.is_(None))
        ).scalar_one()
    assert undelivered >= 1  # the declined renewal's notice at least
    assert value(waiting, "plasmaart_outbox_backlog") == undelivered

    webhook_delivery(platform).run("test-worker")
    outbox_delivery(platform).run("test-worker")
    delivered = scrape(client)
    assert value(delivered, "plasmaart_webhook_backlog", stage="fanout") == 0
    assert value(delivered, "plasmaart_webhook_backlog", stage="delivery") == 1
    assert value(delivered, "plasmaart_outbox_backlog") == 0
    assert value(delivered, "plasmaart_outbox_oldest_seconds") == 0

    # Fifteen minutes on, the window is empty; the counters are not.
    clock.advance(timedelta(minutes=15))
    later = scrape(client)
    assert value(later, finished, model="flux-schnell", state="succeeded") == 0
    assert value(later, "plasmaart_jobs_started_15m", queue_class="priority") == 0
    assert value(later, "plasmaart_payments_1h", kind="renewal", outcome="failed") == 1
    assert credits_of(later) == credits_of(busy)
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


def test_scrapes_are_cached_for_a_few_seconds(platform: Platform) -> None:
    with api_client(platform) as client:
        business = client.app.state.metrics.business  # type: ignore[attr-defined]
        assert business.ttl_s == 5
        before = scrape(client)
        make_user(platform, "ann@example.com", credits=40)
        # Within the TTL: the cached read, not the database.
        assert value(scrape(client), "plasmaart_credits_granted_total", kind="grant") == value(
            before, "plasmaart_credits_granted_total", kind="grant"
        )
        business.ttl_s = 0
        assert value(scrape(client), "plasmaart_credits_granted_total", kind="grant") == 40


def test_incremental_counters_match_a_full_read(platform: Platform, clock: ManualClock) -> None:
    """A process that read the journal step by step and one that reads it
    all at once report the same totals (the second is a process started later)."""
    early = BusinessMetrics(platform, ttl_s=0)
    ann = make_user(platform, "ann@example.com", credits=50)
    for step in range(5):
        with platform.db.write() as conn:
            held = platform.ledger.hold(conn, ann.wallet_id, 3, idempotency_key=f"h{step}")
            if step % 2:
                platform.ledger.capture(conn, held.hold_id, 2, idempotency_key=f"c{step}")
            else:
                platform.ledger.release(conn, held.hold_id, idempotency_key=f"r{step}")
        list(early.collect())
    late = BusinessMetrics(platform, ttl_s=0)
    samples = [parse_families(list(collector.collect())) for collector in (early, late)]
    assert samples[0] == samples[1]
    assert credits_of(samples[0])["captured"] == 4
    assert credits_of(samples[0])["released"] == 3 * 3 + 2 * 1
    with platform.db.read() as conn:
        entries = conn.execute(select(func.count()).select_from(journal_entries)).scalar_one()
    assert (
        sum(v for (name, _), v in samples[0].items() if name == "plasmaart_ledger_entries_total")
        == entries
    )


def parse_families(families: list[object]) -> Samples:
    found: Samples = {}
    for family in families:
        for sample in family.samples:  # type: ignore[attr-defined]
            if sample.name.startswith("plasmaart_business_metrics_read"):
                continue
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_an_entry_committed_after_a_higher_one_is_counted(platform: Platform) -> None:
    """PostgreSQL gives ids at insert and transactions commit in any order:
    an entry whose transaction commits after one with a higher id, read in
    between, is still counted once it commits."""
    collector = BusinessMetrics(platform, ttl_s=0)
    ann = make_user(platform, "ann@example.com")
    bob = make_user(platform, "bob@example.com")
    with platform.db.write() as slow:
        platform.ledger.grant(slow, ann.wallet_id, 7, source="promo", idempotency_key="slow")
        with platform.db.write() as fast:
            platform.ledger.grant(fast, bob.wallet_id, 11, source="promo", idempotency_key="fast")
        # The slow grant's entry has the lower id, and is not committed yet.
        assert credits_of(parse_families(list(collector.collect())))["grant"] == 11
        assert collector.journal.missing >= 1
    assert credits_of(parse_families(list(collector.collect())))["grant"] == 18
    assert collector.journal.missing == 0


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_several_processes_answer_for_the_whole_instance(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two API processes sharing the metrics folder ``prepare_processes`` made:
    a scrape of either counts the requests both served; the business metrics
    are the database's in both, not doubled; an ended process's live gauges go."""
    var_dir = tmp_path / "var"
    folder = var_dir / "metrics"
    folder.mkdir(parents=True)
    (folder / "counter_999999.db").write_bytes(b"left by a previous run")
    # prepare_processes changes this process's environment and value class:
    # both are put back when the test ends.
    monkeypatch.setenv(MULTIPROC_ENV, "")  # unset again at the end (empty: not set)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    prepare_processes(Settings(database_url=database_url, var_dir=var_dir), 1)
    assert os.environ[MULTIPROC_ENV] == ""  # one process: nothing to share
    prepare_processes(Settings(database_url=database_url, var_dir=var_dir), 2)
    assert os.environ[MULTIPROC_ENV] == str(folder)
    assert list(folder.iterdir()) == []

    env = child_env(database_url, var_dir)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    servers = [ServerProcess(f"api{n}", env, tmp_path) for n in range(2)]
    try:
        starting = [threading.Thread(target=server.start) for server in servers]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(timeout=90)
        for server in servers:
            assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, server.log()
        for server, hits in zip(servers, (3, 5), strict=True):
            for _ in range(hits):
                assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        healthz = (
            "plasmaart_http_requests_total",
            (("method", "GET"), ("route", "/healthz"), ("status", "200")),
        )
        first = [parse(httpx.get(f"{s.url}/metrics", timeout=5).text) for s in servers]
        for samples in first:
            assert samples[healthz] == 8
            assert value(samples, "plasmaart_credits_granted_total", kind="grant") == 0
        # Credits granted while both run: each process reads them (the
        # first one incrementally) and reports the same total, once.
        with running_platform(settings_for(database_url, tmp_path / "other"), ManualClock()) as p:
            make_user(p, "ann@example.com", credits=30)
            make_user(p, "bob@example.com", credits=12)
        deadline = time.monotonic() + 15
        while True:
            totals = [
                value(
                    parse(httpx.get(f"{s.url}/metrics", timeout=5).text),
                    "plasmaart_credits_granted_total",
                    kind="grant",
                )
                for s in servers
            ]
            if totals == [42, 42]:
                break
            assert time.monotonic() < deadline, totals
            time.sleep(0.25)
        # The second process ends: its requests stay counted, its live gauges go.
        gone = servers[1].process
        assert gone is not None
        live_file = folder / f"gauge_livesum_{gone.pid}.db"
        assert live_file.exists()
        servers[1].kill()
        after = parse(httpx.get(f"{servers[0].url}/metrics", timeout=5).text)
        assert after[healthz] == 8
        assert not live_file.exists()
        assert value(after, "plasmaart_http_requests_in_flight") == 1  # this scrape
    finally:
        for server in servers:
            server.close()


def test_a_replaced_database_is_counted_again(platform: Platform, tmp_path: Path) -> None:
    """A process whose database was replaced by an older one (a restore)
    counts the journal it finds, not the one it read before."""
    collector = BusinessMetrics(platform, ttl_s=0)
    ann = make_user(platform, "ann@example.com", credits=30)
    assert credits_of(parse_families(list(collector.collect())))["grant"] == 30
    with platform.db.write() as conn:
        conn.execute(journal_entries.delete().where(journal_entries.c.wallet_id == ann.wallet_id))
        platform.ledger.grant(conn, ann.wallet_id, 4, source="promo", idempotency_key="after")
    assert credits_of(parse_families(list(collector.collect())))["grant"] == 4

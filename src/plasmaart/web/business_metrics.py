"""The business metrics of ``/metrics``: credits, jobs, providers, payments,
backlogs and the ledger verification, read from the database.

They are the database's numbers, the same whichever process answers the
scrape, so with several API processes they are exposed by the scraping
process alone (never summed across processes, as the HTTP metrics are;
web/metrics.py). A read is cached for ``ttl_s`` seconds per process and runs
under a lock, so a storm of scrapes costs each process one read per
``ttl_s``; each read is a handful of bounded, indexed queries in one snapshot
(stats/metrics_repository.py; docs/deployment.md#monitoring has the metrics,
their labels and what a scrape costs). The credit counters are the journal's
running sums, read incrementally (stats/ledger_flow.py).

Windowed metrics (``_15m``, ``_1h``) are gauges over the jobs or payments of
the last 15 minutes or hour, computed afresh at each read, so that every
process reports the same values.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from plasmaart.catalog import QUEUE_CLASSES
from plasmaart.clock import as_utc
from plasmaart.db.values import ENTRY_KINDS, PAYMENT_KINDS
from plasmaart.ids import first_id_at
from plasmaart.platform import Platform
from plasmaart.stats import metrics_repository as repo
from plasmaart.stats.ledger_flow import FlowTotals, JournalTotals

log = logging.getLogger(__name__)

JOB_WINDOW = timedelta(minutes=15)
# Jobs that started or finished in the window are looked for among those
# made this much earlier at most (a primary-key range; docs/deployment.md).
JOB_LOOKBACK = timedelta(hours=1)
PAYMENT_WINDOW = timedelta(hours=1)
QUANTILES = (0.5, 0.95)
TERMINAL_STATES = ("succeeded", "failed", "canceled")
DEFAULT_TTL_S = 5.0


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile of ``values`` (sorted): the smallest value
    with at least ``q`` of them at or below it."""
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]


def _seconds(later: datetime, earlier: datetime) -> float:
    return max((as_utc(later) - as_utc(earlier)).total_seconds(), 0.0)


def _epoch(value: datetime) -> float:
    """Unix time of a database timestamp (naive ones are UTC: SQLite)."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


class BusinessMetrics(Collector):
    def __init__(self, platform: Platform, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.platform = platform
        self.ttl_s = ttl_s
        self.journal = JournalTotals()
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._read_at = -math.inf
        self._up = 0
        self._read_seconds = 0.0

    def describe(self) -> Iterable[Metric]:
        # Nothing to check at registration: the names are this module's own.
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl_s:
                started = time.perf_counter()
                try:
                    self._cached = self.read()
                    self._up = 1
                except SQLAlchemyError:
                    # The HTTP metrics are still worth serving; the alert
                    # on plasmaart_business_metrics_up tells the operator.
                    log.exception("reading the business metrics failed")
                    self._cached = []
                    self._up = 0
                self._read_seconds = time.perf_counter() - started
                self._read_at = time.monotonic()
            families = list(self._cached)
            up, read_seconds = self._up, self._read_seconds
        yield from families
        yield GaugeMetricFamily(
            "plasmaart_business_metrics_up",
            "1 when the last read of the business metrics from the database succeeded",
            value=up,
        )
        yield GaugeMetricFamily(
            "plasmaart_business_metrics_read_seconds",
            "How long the last read of the business metrics took",
            value=read_seconds,
        )

    def read(self) -> list[Metric]:
        platform = self.platform
        now = platform.clock.now()  # the times jobs, payments and backlogs carry
        real_now = platform.job_clock.now()  # deadlines and the verification
        system_now = datetime.now(UTC)  # what ids are made from
        with platform.db.snapshot() as conn:
            flow = self.journal.refresh(conn)
            live = repo.live_jobs(conn)
            lease = timedelta(seconds=platform.settings.job_lease_s)
            stuck = repo.holds_past_deadline(conn, real_now - lease)
            recent = repo.recent_jobs(
                conn,
                first_id=first_id_at("gen", system_now - JOB_WINDOW - JOB_LOOKBACK),
                since=now - JOB_WINDOW,
            )
            paid = repo.recent_payments(
                conn,
                first_id=first_id_at("pay", system_now - PAYMENT_WINDOW),
                since=now - PAYMENT_WINDOW,
            )
            outbox = repo.outbox_backlog(conn)
            fanout = repo.webhook_fanout_backlog(conn)
            deliveries = repo.webhook_delivery_backlog(conn)
            topups = repo.topup_backlog(conn)
            check = repo.latest_ledger_check(conn)
        families: list[Metric] = []
        families += self._credits(flow)
        families += self._jobs(live, recent, stuck, now)
        families += self._payments(paid)
        families += self._backlogs(outbox, fanout, deliveries, topups, now)
        families += self._verification(check)
        return families

    # -- credits ---------------------------------------------------------

    def _credits(self, flow: FlowTotals) -> list[Metric]:
        granted = dict.fromkeys(("grant", "rollover", "adjustment"), 0)
        removed = dict.fromkeys(("clawback", "adjustment"), 0)
        simple = dict.fromkeys(("held", "captured", "released", "expired"), 0)
        entries = dict.fromkeys(ENTRY_KINDS, 0)
        balances = {"wallet": 0, "holds": 0}
        for (kind, source, target), credits in flow.credits.items():
            entries[kind] = entries.get(kind, 0) + flow.entries[(kind, source, target)]
            for account, sign in ((target, 1), (source, -1)):
                if account in balances:
                    balances[account] += sign * credits
            if target == "wallet" and source in ("issuance", "expired"):
                granted[kind] = granted.get(kind, 0) + credits
            elif source == "wallet" and target == "issuance":
                removed[kind] = removed.get(kind, 0) + credits
            elif (source, target) == ("wallet", "holds"):
                simple["held"] += credits
            elif (source, target) == ("holds", "consumed"):
                simple["captured"] += credits
            elif (source, target) == ("holds", "wallet"):
                simple["released"] += credits
            elif (source, target) == ("wallet", "expired"):
                simple["expired"] += credits
        granted_family = _by_kind(
            "plasmaart_credits_granted",
            "Credits granted into wallets, by journal entry kind "
            "(grant: plans, packs, promos; rollover; adjustment: an operator's)",
            granted,
        )
        removed_family = _by_kind(
            "plasmaart_credits_removed",
            "Credits taken out of wallets by clawbacks (refunds, disputes) and "
            "operators' downward adjustments",
            removed,
        )
        helps = {
            "held": "Credits held for submitted generations",
            "captured": "Credits captured (charged) for delivered outputs",
            "released": "Credits released back to wallets (failed, canceled, unused outputs)",
            "expired": "Credits that expired unspent",
        }
        families: list[Metric] = [granted_family, removed_family]
        for name, credits in simple.items():
            families.append(CounterMetricFamily(f"plasmaart_credits_{name}", helps[name], credits))
        entries_family = CounterMetricFamily(
            "plasmaart_ledger_entries", "Journal entries written, by kind", labels=["kind"]
        )
        for kind, count in sorted(entries.items()):
            entries_family.add_metric([kind], count)
        families.append(entries_family)
        balance_family = GaugeMetricFamily(
            "plasmaart_credits_outstanding",
            "Credits in all wallets now: available to spend, or held by running jobs",
            labels=["state"],
        )
        balance_family.add_metric(["available"], balances["wallet"])
        balance_family.add_metric(["held"], balances["holds"])
        families.append(balance_family)
        return families

    # -- jobs ------------------------------------------------------------

    def _jobs(
        self,
        live: list[repo.LiveJobs],
        recent: list[repo.RecentJob],
        stuck: int,
        now: datetime,
    ) -> list[Metric]:
        classes = sorted(set(QUEUE_CLASSES) | {row.queue_class for row in live})
        jobs = GaugeMetricFamily(
            "plasmaart_jobs",
            "Generation jobs queued and running now, by queue class of their plan",
            labels=["state", "queue_class"],
        )
        oldest = GaugeMetricFamily(
            "plasmaart_queue_oldest_wait_seconds",
            "How long the oldest queued job of each queue class has waited (0: none)",
            labels=["queue_class"],
        )
        counted = {(row.state, row.queue_class): row for row in live}
        for state in repo.LIVE_STATES:
            for queue_class in classes:
                found = counted.get((state, queue_class))
                jobs.add_metric([state, queue_class], found.jobs if found else 0)
        for queue_class in classes:
            found = counted.get(("queued", queue_class))
            oldest.add_metric(
                [queue_class], _seconds(now, found.oldest_enqueued_at) if found else 0.0
            )
        since = _epoch(now - JOB_WINDOW)
        waits: dict[str, list[float]] = defaultdict(list)
        finished: dict[tuple[str, str], int] = defaultdict(int)
        errors: dict[tuple[str, str], int] = defaultdict(int)
        durations: dict[str, list[float]] = defaultdict(list)
        for job in recent:
            began = None if job.started_at is None else _epoch(job.started_at)
            if began is not None and began >= since:
                waits[job.queue_class].append(max(began - _epoch(job.enqueued_at), 0.0))
            if job.finished_at is None:
                continue
            ended = _epoch(job.finished_at)
            if ended < since:
                continue
            if job.status in TERMINAL_STATES:
                finished[(job.model, job.status)] += 1
            if job.status == "failed":
                errors[(job.model, job.error_code or "unknown")] += 1
            if job.status == "succeeded" and began is not None:
                durations[job.model].append(max(ended - began, 0.0))
        started = GaugeMetricFamily(
            "plasmaart_jobs_started_15m",
            "Jobs that started in the last 15 minutes, by queue class",
            labels=["queue_class"],
        )
        wait = GaugeMetricFamily(
            "plasmaart_queue_wait_15m_seconds",
            "Queue wait (start minus enqueue) of the jobs started in the last "
            "15 minutes, by queue class: nearest-rank quantiles",
            labels=["queue_class", "quantile"],
        )
        for queue_class in classes:
            values = sorted(waits.get(queue_class, ()))
            started.add_metric([queue_class], len(values))
            for q in QUANTILES:
                wait.add_metric([queue_class, str(q)], quantile(values, q) if values else 0.0)
        models = sorted(
            {model.id for model in self.platform.catalogs.base.models}
            | {model for model, _ in finished}
        )
        finished_family = GaugeMetricFamily(
            "plasmaart_jobs_finished_15m",
            "Jobs that ended in the last 15 minutes, by model and final state",
            labels=["model", "state"],
        )
        for model in models:
            for state in TERMINAL_STATES:
                finished_family.add_metric([model, state], finished.get((model, state), 0))
        errors_family = GaugeMetricFamily(
            "plasmaart_job_errors_15m",
            "Jobs that failed in the last 15 minutes, by model and error code",
            labels=["model", "reason"],
        )
        for (model, reason), count in sorted(errors.items()):
            errors_family.add_metric([model, reason], count)
        duration = GaugeMetricFamily(
            "plasmaart_job_duration_15m_seconds",
            "Provider latency (finish minus start) of the jobs that succeeded in "
            "the last 15 minutes, by model: nearest-rank quantiles",
            labels=["model", "quantile"],
        )
        for model, values in sorted(durations.items()):
            values.sort()
            for q in QUANTILES:
                duration.add_metric([model, str(q)], quantile(values, q))
        stuck_family = GaugeMetricFamily(
            "plasmaart_holds_past_deadline",
            "Pending holds of jobs past their deadline plus one lease: jobs that "
            "should have ended and released or captured their credits",
            value=stuck,
        )
        return [jobs, oldest, started, wait, finished_family, errors_family, duration, stuck_family]

    # -- payments --------------------------------------------------------

    def _payments(self, paid: list[repo.PaymentCount]) -> list[Metric]:
        family = GaugeMetricFamily(
            "plasmaart_payments_1h",
            "Payments in the last hour, by kind and outcome",
            labels=["kind", "outcome"],
        )
        counted = {(row.kind, row.status): row.payments for row in paid}
        for kind in sorted(set(PAYMENT_KINDS) | {kind for kind, _ in counted}):
            for outcome in ("succeeded", "failed"):
                family.add_metric([kind, outcome], counted.get((kind, outcome), 0))
        return [family]

    # -- backlogs --------------------------------------------------------

    def _backlogs(
        self,
        outbox: repo.Backlog,
        fanout: repo.Backlog,
        deliveries: repo.Backlog,
        topups: dict[str, repo.Backlog],
        now: datetime,
    ) -> list[Metric]:
        def age(backlog: repo.Backlog) -> float:
            return 0.0 if backlog.oldest is None else _seconds(now, backlog.oldest)

        outbox_items = GaugeMetricFamily(
            "plasmaart_outbox_backlog",
            "Notices and mails in the outbox not delivered yet (retries included)",
            value=outbox.items,
        )
        outbox_age = GaugeMetricFamily(
            "plasmaart_outbox_oldest_seconds",
            "Age of the oldest undelivered outbox message (0: none)",
            value=age(outbox),
        )
        webhook_items = GaugeMetricFamily(
            "plasmaart_webhook_backlog",
            "Outbound webhooks waiting: events not fanned out yet (fanout), "
            "deliveries pending or retrying (delivery)",
            labels=["stage"],
        )
        webhook_age = GaugeMetricFamily(
            "plasmaart_webhook_oldest_seconds",
            "Age of the oldest waiting webhook event or delivery (0: none)",
            labels=["stage"],
        )
        for stage, backlog in (("fanout", fanout), ("delivery", deliveries)):
            webhook_items.add_metric([stage], backlog.items)
            webhook_age.add_metric([stage], age(backlog))
        topup_items = GaugeMetricFamily(
            "plasmaart_topup_runs",
            "Auto top-up runs not finished: pending (to charge) and "
            "action_required (waiting for the customer to authenticate)",
            labels=["status"],
        )
        topup_age = GaugeMetricFamily(
            "plasmaart_topup_oldest_seconds",
            "Age of the oldest unfinished auto top-up run (0: none)",
            labels=["status"],
        )
        empty = repo.Backlog(0, None)
        for status in ("pending", "action_required"):
            backlog = topups.get(status, empty)
            topup_items.add_metric([status], backlog.items)
            topup_age.add_metric([status], age(backlog))
        return [outbox_items, outbox_age, webhook_items, webhook_age, topup_items, topup_age]

    # -- the ledger verification -----------------------------------------

    def _verification(self, check: repo.LedgerCheck | None) -> list[Metric]:
        interval = self.platform.settings.ledger_verify_interval_s
        families: list[Metric] = [
            GaugeMetricFamily(
                "plasmaart_ledger_verify_interval_seconds",
                "How often the workers verify the ledger (0: never), as configured",
                value=interval,
            ),
            GaugeMetricFamily(
                "plasmaart_ledger_verify_last_run_timestamp_seconds",
                "When the last ledger verification finished, Unix time (0: never)",
                value=0 if check is None else as_utc(check.finished_at).timestamp(),
            ),
        ]
        if check is not None:
            families += [
                GaugeMetricFamily(
                    "plasmaart_ledger_verify_ok",
                    "1 when the last ledger verification found the books balanced, 0 if not",
                    value=1 if check.ok else 0,
                ),
                GaugeMetricFamily(
                    "plasmaart_ledger_verify_problems",
                    "Problems the last ledger verification found",
                    value=check.problems,
                ),
                GaugeMetricFamily(
                    "plasmaart_ledger_verify_duration_seconds",
                    "How long the last ledger verification took",
                    value=_seconds(check.finished_at, check.started_at),
                ),
            ]
        return families


def _by_kind(name: str, documentation: str, credits: Mapping[str, int]) -> CounterMetricFamily:
    """A counter family of credits labelled by journal entry kind."""
    family = CounterMetricFamily(name, documentation, labels=["kind"])
    for kind, amount in sorted(credits.items()):
        family.add_metric([kind], amount)
    return family

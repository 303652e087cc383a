"""The bank test, after Jepsen's: the whole platform under concurrent clients
and faults, with the ledger's invariants checked while it runs and at the
end, on SQLite and PostgreSQL. Short in ``make test`` (20 s of chaos, up to
60 s on a busy machine until everything it asserts it covered happened);
long in ``make soak`` (until ``PLASMAART_SOAK_OPS`` operations on each
database).

Two ``plasmaart serve --no-worker`` processes and two ``plasmaart worker``
processes share one database. Creator threads, each with a seeded random
generator, drive them through the Python client (``plasmaart.client.Client``
with a retry policy patient enough to ride out an outage: every request goes
through its retries, ``Retry-After`` and ``Idempotency-Key``, each attempt to
either API process at random). They submit generations (a fifth of them told
to fail by the sandbox provider, some to deliver only part of their outputs,
some whose downloads are all refused, some with a delay), cancel their jobs,
buy credit packs, change plans, move their auto top-up's threshold (three of
them have it on, one with a card whose bank asks to confirm each off-session
charge; the workers charge the runs as balances cross it), set (half of them)
a monthly spend limit a little above what they spent, and advance the sandbox
test clock a day at a time (which runs renewals and expiries); one submission
in ten is sent twice on purpose with its key. Meanwhile a fault schedule
(``tests/support/faults/schedule.py``) injects the faults of ``bank_faults``
at seeded random moments: today a worker killed with SIGKILL every few
seconds (the job lease is short, so its jobs are taken over while the test
runs) and an API process killed (once in the short run).

Checked at checkpoints (in one snapshot) and at the end: the journal sums to
zero, every wallet's balance equals its entries and its lots, nothing is
negative (``check_ledger``). At the end, once every job has finished: every
hold belongs to a job and is resolved exactly once, for what the job was
charged; the credits charged equal the credits of the outputs delivered, and
a job succeeded with what its sandbox params let arrive (all, or ``deliver``
of them; never one whose downloads were refused); no job timed out (the test
clock's jumps move billing time only); every 201 has its job, one per key;
a refused submission left no job (``spend_limit_reached`` among the
refusals); no wallet spent more in a month than its monthly spend limit;
every pack purchase was paid once per key; every auto top-up run ended, one
at a time per wallet, a succeeded one paid once (its pack's payment), a
failed or unconfirmed one never, and no calendar month of top-ups past its
cap. No 5xx: neither one the client finally raises, nor one on the wire
other than a 503 ``unavailable`` (documented for an outage, counted apart).
On PostgreSQL the processes also share a real Redis (rate limits) and each
creator holds an event stream on an API process: it must carry only their
own generations, and the final state of every one of them, sent by worker
processes through LISTEN/NOTIFY (after a ``resync``, the listener reads the
creator's generations again over the API, and the states it read count as
delivered). The run's figures are printed (and, for ``make soak``, written
into docs/reliability.md: ``tests/support/soak.py``).

``PLASMAART_BANK_BILLING=stripe`` (``sandbox`` by default) bills through
Stripe instead: the fake Stripe on loopback (``tests/support/bank_stripe.py``
plays Stripe's side). The creators subscribe through the API's Checkout,
which the fake pays; a pack bought is the API's Checkout paid at the fake; a
plan change is the API's call, which changes the subscription at the fake; a
clock advance is the fake ending the creator's period (a renewal); auto
top-ups are off-session charges at the fake (c1's card wants
authentication). Each time, the events Stripe would send are delivered,
signed, to a random API process's webhook, and every change the platform
made at Stripe is told back. Webhook storms (the last minute's events again,
with the same ids or new ones) join the faults. Checked besides: one pack
payment per paid checkout, each subscription as Stripe has it, every
delivery answered 2xx, and after the run a storm of every event changes
none of the business tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import DBAPIError

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.billing.stripe.backend import plan_of_product
from plasmaart.bootstrap import bootstrap
from plasmaart.client import (
    ApiError,
    Checkout,
    Client,
    PlasmaArtError,
    RetryPolicy,
    ServerError,
    SpendLimit,
    TransportError,
)
from plasmaart.clock import as_utc
from plasmaart.config import Settings
from plasmaart.db.engine import Database
from plasmaart.db.tables import (
    generation_outputs,
    generations,
    holds,
    payments,
    subscriptions,
    topup_runs,
    wallets,
)
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.bank_stripe import NewIdStorm, StripeClock, StripeSide, session_of
from tests.support.fake_stripe import FakeStripe
from tests.support.faults.clock import ClockControl, ClockJump
from tests.support.faults.disk import DiskFull, SizeLimitedDir, size_limited_dir
from tests.support.faults.postgres import FaultPostgres, PostgresOutage, PostgresRestart
from tests.support.faults.processes import ApiKill, Fleet, WorkerKill
from tests.support.faults.redis import RedisHung, RedisServer, RedisStopped, restartable_redis
from tests.support.faults.schedule import FaultSchedule, Planned
from tests.support.faults.stripe import WebhookStorm
from tests.support.faults.tcp_proxy import ConnectionsDropped, ConnectionsStalled, TcpProxy
from tests.support.matrix import changes, snapshot
from tests.support.processes import ServerProcess, child_env
from tests.support.redis_server import redis_server
from tests.support.soak import Figures

T = TypeVar("T")

SEED = 7_2026
RUN_S = 20.0  # the short run's chaos phase, at least
# ... and on a busy machine longer, up to RUN_MAX_S, until each kind of
# operation, a spend limit's refusal, the API kill and three worker kills
# have happened (what the short run asserts it covered).
RUN_MAX_S = 60.0
OPERATIONS = (
    "submit",
    "cancel",
    "buy pack",
    "change plan",
    "advance clock",
    "move top-up threshold",
    "spend limit",
)
FINISH_WITHIN_S = 180.0  # then every job must end (a bound: on a quiet machine, seconds)
CHECKPOINT_EVERY_S = 4.0
FAULT_EVERY_S = (2.0, 4.0)  # the schedule's moments
CONCURRENCY = 3
REQUEST_TIMEOUT_S = 10.0
# A creator's jobs queued or running at once: with more, it does another
# kind of operation instead of a submission (the workers' pace bounds the
# jobs, so the queue stays short however long the run, and the last jobs
# finish soon after the load stops).
MAX_OPEN = 6
# ``make soak``: operations to complete on each database (0: the short run),
# and the hard cap on one database's run, whatever it reached.
SOAK_OPS = int(os.environ.get("PLASMAART_SOAK_OPS", "0"))
SOAK_MAX_S = float(os.environ.get("PLASMAART_SOAK_MAX_S", "2700"))
SOAK_FINISH_WITHIN_S = 300.0
SOAK_REPORT_DIR = os.environ.get("PLASMAART_SOAK_REPORT_DIR")
# The soak's PostgreSQL deadline (a stalled connection is cut after it) and
# the size of the SQLite leg's filesystem (its database; media stay apart).
SOAK_DB_TIMEOUT_S = 2
SOAK_DISK_MB = 512
# How the processes bill: through the sandbox backend (its cards, its test
# clock), or through Stripe (the fake Stripe on loopback, its webhooks
# delivered to the API processes, webhook storms among the faults).
BILLING = os.environ.get("PLASMAART_BANK_BILLING", "sandbox")
if BILLING not in ("sandbox", "stripe"):
    raise ValueError(f"PLASMAART_BANK_BILLING={BILLING!r}: sandbox or stripe")
# A storm during the run sends the events of the last STORM_WITHIN again
# (Stripe's is an hour's; the run's hour is shorter); the last one, after
# the run, every event the fake made.
STORM_WITHIN = timedelta(seconds=float(os.environ.get("PLASMAART_BANK_STORM_WITHIN_S", "60")))
FULL_STORM = timedelta(days=1)
# The business tables a last full storm must leave as they were.
BUSINESS_TABLES = (
    "wallets",
    "lots",
    "holds",
    "hold_lots",
    "journal_entries",
    "ledger_operations",
    "subscriptions",
    "payments",
    "receipt_numbers",
    "stripe_customers",
    "stripe_subscriptions",
    "stripe_events",
    "stripe_clawbacks",
    "auto_topups",
    "topup_runs",
    "generations",
    "audit_log",
)
# Patient enough to ride out a database restart (503 ``unavailable`` with
# Retry-After 2, or no answer) and a killed API process: about 20 s of
# retries, each wait jittered, a Retry-After up to 10 s honoured.
PATIENT = RetryPolicy(max_retries=12, backoff=0.2, max_backoff=3.0, max_retry_after=10.0)
TERMINAL = ("succeeded", "failed", "canceled")
PLANS = ("starter", "pro", "studio")
PACKS = ("pack-1000", "pack-3000")
# (model, outputs allowed) a Starter plan can run: images, cheap.
MODELS = (("flux-schnell", 4), ("flux-dev", 2), ("sd3-medium", 2))
# The auto top-up of creators c0, c1 and c2: (pack, monthly cap in cents),
# and whether the sandbox card asks to confirm each off-session charge.
TOPUPS = {
    0: ("pack-1000", 3600, False),
    1: ("pack-1000", 100_000, True),
    2: ("pack-3000", 100_000, False),
}
# How far below the balance a creator sets the threshold: a few jobs cross it.
TOPUP_MARGIN = (0, 20)


@dataclass
class Bank:
    """One run's setting: the database the test reads (``database_url``;
    the processes use ``env["DATABASE_URL"]``, which a fault may route
    through a proxy), the processes' environment, the fleet, and what to
    close at the end (``resources``)."""

    dialect: str
    soak: bool
    database_url: str
    env: dict[str, str]
    tmp_path: Path
    resources: ExitStack
    fleet: Fleet | None = None
    # The soak's own servers and controls (``prepare``).
    postgres: FaultPostgres | None = None
    proxy: TcpProxy | None = None
    redis: RedisServer | None = None
    disk: SizeLimitedDir | None = None
    clock: ClockControl | None = None
    billing: str = "sandbox"  # or "stripe"
    stripe: StripeSide | None = None


def prepare(bank: Bank) -> None:
    """What the processes need besides the database, started before them:
    a fault that needs its own server (a dedicated PostgreSQL, a proxy in
    front of the database, a size-limited filesystem, a fake provider)
    starts it here on ``bank.resources`` and points ``bank.env`` at it.

    The multi-node setup: on PostgreSQL the API processes share their rate
    limits through Redis and receive the workers' events through
    LISTEN/NOTIFY. (On SQLite, events stay in the process that made them.)

    The soak injects more: on PostgreSQL the processes use a server of the
    test's own (stopped and restarted at will), through a TCP proxy (which
    cuts and stalls their connections), and a Redis it can kill or hang; on
    SQLite the database lives on a size-limited filesystem it fills up; on
    both, the processes' wall clock is under a ``ClockControl``. Billed
    through Stripe, the fake Stripe starts here too."""
    if bank.dialect == "postgresql" and not bank.soak:
        bank.env["REDIS_URL"] = bank.resources.enter_context(redis_server())
    elif bank.dialect == "postgresql":
        prepare_faulty_postgres(bank)
    elif bank.soak:
        disk = bank.disk = bank.resources.enter_context(size_limited_dir(SOAK_DISK_MB))
        bank.database_url = f"sqlite:///{disk.path / 'bank.db'}"
        bank.env["DATABASE_URL"] = bank.database_url
    if bank.soak:
        migrated = bootstrap(
            Settings(database_url=bank.database_url, var_dir=bank.tmp_path / "migrate"),
            migrate=True,
        )
        migrated.close()
        bank.clock = ClockControl(bank.tmp_path / "clock")
        bank.env.update(bank.clock.env(bank.env))
    if bank.billing == "stripe":
        fake = bank.resources.enter_context(FakeStripe(StripeClock()))
        bank.stripe = StripeSide(fake)
        bank.env.update(
            {f"PLASMAART_{name.upper()}": str(v) for name, v in fake.platform_settings().items()}
        )


def prepare_faulty_postgres(bank: Bank) -> None:
    """The soak's PostgreSQL leg: a server of the test's own behind a TCP
    proxy, and a Redis the faults can kill and hang."""
    redis = bank.redis = bank.resources.enter_context(restartable_redis())
    bank.env["REDIS_URL"] = redis.url
    # Not under pytest's folder: another pytest run of root's resets it to
    # 0700, which locks the postgres user out of its data directory.
    base = Path(tempfile.mkdtemp(prefix="plasmaart-soak-postgres-"))
    bank.resources.callback(shutil.rmtree, base, ignore_errors=True)
    server = bank.postgres = FaultPostgres(base)
    bank.resources.callback(server.close)
    bank.database_url = server.create_database("bank")
    proxy = bank.proxy = TcpProxy("127.0.0.1", server.port)
    bank.resources.callback(proxy.close)
    bank.env["DATABASE_URL"] = server.url_of("bank", port=proxy.port)
    bank.env["PLASMAART_DB_TIMEOUT_S"] = str(SOAK_DB_TIMEOUT_S)


def bank_faults(bank: Bank) -> list[Planned]:
    """The faults mixed into this run, per database: each a ``Planned``
    (a ``Fault``, its weight, how long it stays in, at most how many times).
    API process 1 holds the event streams and is never killed."""
    assert bank.fleet is not None
    faults = [
        Planned(WorkerKill(bank.fleet, seed=SEED), weight=3, lasts=(0.0, 0.5)),
        # The short run kills an API process once, early.
        Planned(
            ApiKill(bank.fleet, 0), weight=1 if bank.soak else 3, at_most=None if bank.soak else 1
        ),
    ]
    if bank.stripe is not None:
        # Stripe sending the last minute's events again, in any order, to
        # both API processes: as they were (the same ids), or each under a
        # new id (the same change told again by another event).
        urls = [server.url + "/v1/webhooks/stripe" for server in bank.fleet.servers]
        for n, kind in enumerate((WebhookStorm, NewIdStorm)):
            storm = kind(bank.stripe.fake, urls, random.Random(SEED + 100 + n), within=STORM_WITHIN)
            bank.stripe.storms.append(storm)
            faults.append(Planned(storm, weight=1))
    if not bank.soak:
        return faults
    assert bank.clock is not None
    # Small jumps: the sandbox provider and the jobs' steps measure time on
    # the wall clock, and the run checks that no job timed out.
    faults.append(
        Planned(
            ClockJump(bank.clock, random.Random(SEED + 100), min_s=5, max_s=30),
            weight=1,
            lasts=(1.0, 5.0),
        )
    )
    if bank.dialect == "postgresql":
        assert bank.postgres is not None
        assert bank.proxy is not None
        assert bank.redis is not None
        faults += [
            Planned(PostgresRestart(bank.postgres), weight=1, lasts=(0.0, 0.5)),
            Planned(PostgresOutage(bank.postgres), weight=1, lasts=(1.0, 4.0)),
            Planned(ConnectionsDropped(bank.proxy), weight=1, lasts=(0.0, 0.5)),
            Planned(ConnectionsStalled(bank.proxy, 3.0), weight=1, lasts=(0.0, 0.5)),
            Planned(RedisStopped(bank.redis), weight=1, lasts=(1.0, 5.0)),
            Planned(RedisHung(bank.redis), weight=1, lasts=(0.5, 3.0)),
        ]
    else:
        assert bank.disk is not None
        faults.append(Planned(DiskFull(bank.disk), weight=2, lasts=(1.0, 5.0)))
    return faults


class Wire(httpx.BaseTransport):
    """The transport of a creator's clients: sends each attempt to one of
    the API processes at random (one may be down: the client's retry goes
    elsewhere) and sees every answer's status. A 503 ``unavailable`` (an
    outage) and a 507 ``storage_full`` (a full disk) are documented (counted);
    any other 5xx is a violation, even if a retry then succeeded."""

    def __init__(self, servers: list[ServerProcess], seed: int) -> None:
        self.servers = servers
        self.inner = httpx.HTTPTransport()
        self._pick = random.Random(seed)
        self.attempts = 0
        self.unanswered = 0
        self.documented_503 = 0
        self.documented_507 = 0
        self.violations: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        server = self._pick.choice(self.servers)
        request.url = request.url.copy_with(port=server.port)
        request.headers["Host"] = f"127.0.0.1:{server.port}"
        self.attempts += 1
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self.unanswered += 1
            raise
        if response.status_code < 500:
            return response
        raw = b"".join(response.stream)  # type: ignore[union-attr]
        response.close()
        code = None
        with contextlib.suppress(ValueError, AttributeError):
            code = json.loads(raw).get("code")
        if response.status_code == 503 and code == "unavailable":
            self.documented_503 += 1
        elif response.status_code == 507 and code == "storage_full":
            self.documented_507 += 1
        else:
            self.violations.append(
                f"{request.method} {request.url.path} on the wire: "
                f"{response.status_code} {raw[:300]!r}"
            )
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


@dataclass
class Creator:
    user: TestUser
    name: str
    seed: int
    admin: TestUser
    ops: Counter[str] = field(default_factory=Counter)  # completed operations by kind
    refusals: Counter[str] = field(default_factory=Counter)  # of those, refused, by code
    notes: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, str] = field(default_factory=dict)  # key -> generation id
    open: set[str] = field(default_factory=set)  # accepted, maybe not finished yet
    counted_open_at: float = 0.0  # when ``open`` was last read over the API
    refused: dict[str, int] = field(default_factory=dict)  # submission key -> status
    packs: set[str] = field(default_factory=set)  # pack keys answered 201
    topup: tuple[str, int] | None = None  # (pack, cap cents) when auto top-up is on
    # The monthly spend limits sent (each at least the month's spending when
    # sent, and never below the last one answered) and the first month limited.
    sets_limits: bool = False  # half of the creators do
    limits_sent: list[int] = field(default_factory=list)
    limited_from: str | None = None  # the resets_at of the first limit answered
    violations: list[str] = field(default_factory=list)
    wire: Wire | None = None
    admin_client: Client | None = None
    # Stripe billing: Stripe's side, the creator's customer and subscription
    # there, and the Checkout sessions of the packs it bought (by key).
    stripe: StripeSide | None = None
    customer_id: str | None = None
    subscription_id: str | None = None
    checkouts: dict[str, str] = field(default_factory=dict)

    def attempt(self, kind: str | None, action: Callable[[], T]) -> T | ApiError | None:
        """One call through the client: its answer or its refusal (an
        operation of ``kind`` completed), or None when the client gave up
        without an answer, or raised a 5xx (a violation)."""
        try:
            answer: T | ApiError = action()
        except ServerError as error:
            if (error.status, error.code) != (507, "storage_full"):
                self.violations.append(f"{kind}: the client raised {error.status} {error.code}")
                return None
            # The disk is full (a fault): refused, nothing written, documented.
            answer = error
            if kind is not None:
                self.refusals[f"{kind} {error.status} {error.code}"] += 1
        except ApiError as error:
            answer = error
            if kind is not None:
                self.refusals[f"{kind} {error.status} {error.code}"] += 1
            if error.code == "account_suspended":
                self.reinstate()
        except TransportError:
            self.notes["given up without an answer"] += 1
            return None
        except PlasmaArtError as error:
            self.violations.append(f"{kind}: {error!r}")
            return None
        if kind is not None:
            self.ops[kind] += 1
        return answer

    def reinstate(self) -> None:
        """The fair-use checks suspended this creator (its plan changes and
        quick cancellations score as abuse): an operator reinstates it."""
        if self.admin_client is not None:
            admin = self.admin_client
            self.attempt("reinstate", lambda: admin.reinstate_user(self.user.id))

    def run(self, servers: list[ServerProcess], stop: threading.Event) -> None:
        pick = random.Random(self.seed)
        self.wire = Wire(servers, self.seed + 1_000)
        options: dict[str, Any] = {
            "timeout": REQUEST_TIMEOUT_S,
            "retry": PATIENT,
            "transport": self.wire,
        }
        with (
            Client(servers[0].url, self.user.api_key, **options) as client,
            Client(servers[0].url, self.admin.api_key, **options) as admin,
        ):
            self.admin_client = admin
            n = 0
            while not stop.is_set():
                n += 1
                self.step(client, admin, pick, n)

    def step(self, client: Client, admin: Client, pick: random.Random, n: int) -> None:
        roll = pick.random()
        submits = roll < 0.57 or (roll < 0.6 and not self.sets_limits)
        if submits and not self.has_room(client):
            # Its jobs are waiting for the workers: another kind of operation.
            self.notes["another operation instead of a submission"] += 1
            submits, roll = False, 0.6 + 0.4 * pick.random()
        if submits:
            self.submit(client, pick, f"{self.name}-g{n}")
        elif roll < 0.6:
            self.limit_spending(client, pick)
        elif roll < 0.75 and self.accepted:
            generation_id = pick.choice(sorted(self.accepted.values()))
            self.attempt("cancel", lambda: client.cancel_generation(generation_id))
        elif roll < 0.85:
            key = f"{self.name}-p{n}"
            pack = pick.choice(PACKS)
            bought = self.attempt("buy pack", lambda: client.buy_credits(pack, idempotency_key=key))
            if bought is not None and not isinstance(bought, ApiError):
                self.packs.add(key)
                if self.stripe is not None:
                    # The customer pays the checkout; Stripe's events arrive.
                    if not isinstance(bought, Checkout):
                        self.violations.append(f"{key}: bought without a checkout: {bought}")
                        return
                    session = self.checkouts.setdefault(key, session_of(bought.checkout_url))
                    self.stripe.pay(session, self.user.id, pick)
        elif roll < 0.9:
            plan = pick.choice(PLANS)
            if self.stripe is None or self.subscription_id is None:
                self.attempt("change plan", lambda: client.change_plan(plan))
            else:
                # The API changes it at Stripe; what Stripe then sends arrives
                # (also when the answer was lost).
                self.attempt("change plan", lambda: client.change_plan(plan))
                self.stripe.tell_changes(self.subscription_id, pick)
        elif roll < 0.95 and self.topup is not None:
            self.move_threshold(client, pick)
        elif roll >= 0.95:
            if self.stripe is None or self.subscription_id is None:
                key = f"{self.name}-c{n}"
                self.attempt("advance clock", lambda: admin.advance_clock(1, idempotency_key=key))
            else:
                # Stripe's clock: the subscription's period ends, renewed.
                self.stripe.renew(self.subscription_id, pick)
                self.ops["advance clock"] += 1
        if self.stripe is not None and self.subscription_id is not None:
            # What the platform changed at Stripe meanwhile (a suspension's
            # cancellation at the period end, a reinstatement), told.
            self.stripe.tell_changes(self.subscription_id, pick)
        if self.stripe is not None and self.customer_id is not None and self.topup is not None:
            self.stripe.tell_charges(self.customer_id, pick)

    def has_room(self, client: Client) -> bool:
        """Fewer than ``MAX_OPEN`` of its jobs are queued or running (read
        over the API when it might be full, at most twice a second)."""
        if len(self.open) < MAX_OPEN:
            return True
        if time.monotonic() - self.counted_open_at < 0.5:
            return False
        self.counted_open_at = time.monotonic()
        still: set[str] = set()
        for status in ("queued", "running"):

            def listed(status: str = status) -> list[str]:
                return [g.id for g in client.generations(status=status, page_size=200)]

            found = self.attempt(None, listed)
            if found is None or isinstance(found, ApiError):
                return False
            still.update(found)
        self.open &= still
        return len(self.open) < MAX_OPEN

    def move_threshold(self, client: Client, pick: random.Random) -> None:
        """Set the auto top-up's threshold just under the balance: the next
        few jobs take it below, and a worker buys a pack."""
        assert self.topup is not None
        balance = self.attempt(None, client.balance)
        if balance is None or isinstance(balance, ApiError):
            return
        pack, cap = self.topup
        threshold = max(0, balance.available - pick.randint(*TOPUP_MARGIN))
        self.attempt(
            "move top-up threshold",
            lambda: client.set_auto_topup(
                enabled=True, threshold=threshold, pack=pack, monthly_cap_cents=cap
            ),
        )

    def limit_spending(self, client: Client, pick: random.Random) -> None:
        """Set (or raise) the wallet's monthly spend limit a little above what
        it spent this month: the submissions that follow meet it. Only this
        thread submits for this creator, so the spending cannot grow between
        the read and the write."""
        now = self.attempt(None, client.spend_limit)
        if now is None or isinstance(now, ApiError):
            return
        limit = now.spent + pick.randint(2, 25)
        if now.monthly_credits is not None:
            limit = max(limit, now.monthly_credits)
        self.limits_sent.append(limit)
        answer = self.attempt("spend limit", lambda: client.set_spend_limit(limit))
        if isinstance(answer, SpendLimit) and self.limited_from is None:
            self.limited_from = answer.resets_at.isoformat()

    def submit(self, client: Client, pick: random.Random, key: str) -> None:
        model, most = pick.choice(MODELS)
        outputs = pick.randint(1, most)
        sandbox: dict[str, Any] = {
            "fail": pick.random() < 0.2,
            "delay_s": pick.choice((0, 0, 1, 2)),
        }
        fault = pick.random()
        if fault < 0.1:
            sandbox["fail_download"] = True
        elif fault < 0.25 and outputs > 1:
            sandbox["deliver"] = pick.randint(1, outputs - 1)
        prompt = f"{key}: a lighthouse in a storm"

        def send() -> Any:
            return client.create_generation(
                model,
                prompt,
                num_outputs=outputs,
                params={"sandbox": sandbox},
                idempotency_key=key,
            )

        for repeat in range(2 if pick.random() < 0.1 else 1):
            if repeat:
                self.notes["submissions sent twice on purpose"] += 1
            answer = self.attempt(None if repeat else "submit", send)
            if answer is None:
                return
            if isinstance(answer, ApiError):
                if key not in self.accepted:
                    self.refused[key] = answer.status
            elif self.accepted.setdefault(key, answer.id) != answer.id:
                self.violations.append(f"{key}: answered with two different jobs")
            else:
                self.open.add(answer.id)


class Listener(threading.Thread):
    """One creator's ``/v1/events`` stream on an API process: the
    ``generation.updated`` events it receives, as (generation id, status).
    After a ``resync`` (the process's database listener reconnected: events
    may have been missed), or a stream that broke, it reads the creator's
    generations again over the API (``reread``: the finished states it saw)
    and goes on."""

    MAX_RECONNECTS = 1_000

    def __init__(self, server: ServerProcess, creator: Creator) -> None:
        super().__init__(name=f"events-{creator.name}", daemon=True)
        self.url = f"{server.url}/v1/events"
        self.creator = creator
        self.events: list[tuple[str, str]] = []
        self.reread: set[tuple[str, str]] = set()
        self.resyncs = 0
        self.reconnects = 0
        self.errors: list[str] = []
        self.connected = threading.Event()
        self.closing = threading.Event()
        self.http = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        self.reader = Client(
            server.url, creator.user.api_key, timeout=REQUEST_TIMEOUT_S, retry=PATIENT
        )

    def run(self) -> None:
        while not self.closing.is_set() and self.reconnects <= self.MAX_RECONNECTS:
            with contextlib.suppress(httpx.HTTPError):
                self.follow()
            if self.closing.is_set():
                return
            # The stream broke: what it missed is read over the API.
            self.reconnects += 1
            self.read_again()
            self.closing.wait(0.5)

    def follow(self) -> None:
        event = None
        with self.http.stream("GET", self.url, headers=self.creator.user.auth) as response:
            self.connected.set()
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event == "generation.updated":
                    data = json.loads(line.removeprefix("data:"))
                    self.events.append((data["id"], data["status"]))
                elif line.startswith("data:") and event == "resync":
                    self.resyncs += 1
                    self.read_again()
                elif not line:
                    event = None

    def read_again(self) -> None:
        try:
            for generation in self.reader.generations(page_size=200):
                if generation.status in TERMINAL:
                    self.reread.add((generation.id, generation.status))
        except PlasmaArtError as error:
            if not self.closing.is_set():
                self.errors.append(f"{self.name}: reading again after a resync: {error!r}")

    def close(self) -> None:
        self.closing.set()
        self.http.close()
        self.join(timeout=30)
        self.reader.close()


def read_snapshot(db: Database, check: Callable[[Connection], list[str]]) -> list[str]:
    """Run ``check`` on one consistent snapshot of a database that others
    are writing (REPEATABLE READ on PostgreSQL; a read transaction under WAL
    on SQLite is one snapshot already)."""
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return check(conn)


def final_problems(conn: Connection, creators: list[Creator]) -> list[str]:
    problems = check_ledger(conn)
    jobs = {row.id: row for row in conn.execute(select(generations))}
    delivered = dict(
        conn.execute(
            select(generation_outputs.c.generation_id, func.count()).group_by(
                generation_outputs.c.generation_id
            )
        ).all()
    )
    by_hold = {job.hold_id: job for job in jobs.values()}
    for hold in conn.execute(select(holds)):
        job = by_hold.get(hold.id)
        if job is None:
            problems.append(f"hold {hold.id}: no job")
            continue
        if job.status in TERMINAL:
            parts = (hold.status, int(hold.captured), int(hold.released))
            charged = int(job.credits_charged)
            expected_status = "captured" if charged else "released"
            if parts != (expected_status, charged, int(job.credits_held) - charged):
                problems.append(f"{job.id} {job.status} charged {charged}: hold {parts}")
        elif hold.status != "pending":
            problems.append(f"{job.id} {job.status}: hold already {hold.status}")
    for job in jobs.values():
        outputs = int(delivered.get(job.id, 0))
        sandbox = json.loads(job.sandbox)
        arriving = (
            0 if sandbox.get("fail_download") else int(sandbox.get("deliver", job.num_outputs))
        )
        if job.status not in TERMINAL:
            problems.append(f"{job.id}: still {job.status}")
        if int(job.credits_charged) != outputs * int(job.credits_per_output):
            problems.append(f"{job.id} {job.status}: charged {job.credits_charged}, {outputs} out")
        # Succeeded: with every output that could arrive, or (ended early,
        # the reason in its error) with some of them.
        complete = job.error_code is None and outputs == arriving
        if job.status == "succeeded" and not (complete or 0 < outputs < arriving):
            problems.append(
                f"{job.id}: succeeded ({job.error_code}) with {outputs}/{arriving} outputs"
            )
        if job.error_code == "timeout":
            problems.append(f"{job.id}: timed out ({job.error_message})")
    per_key = Counter((job.user_id, job.idempotency_key) for job in jobs.values())
    problems += [f"{key}: {n} jobs" for key, n in per_key.items() if n > 1]
    for creator in creators:
        for key, generation_id in creator.accepted.items():
            if generation_id not in jobs:
                problems.append(f"{key}: answered 201 as {generation_id}, no job")
        for key in creator.refused:
            if per_key[(creator.user.id, key)]:
                problems.append(f"{key}: refused, yet a job exists")
        paid = conn.execute(
            select(func.count()).where(
                payments.c.user_id == creator.user.id,
                payments.c.kind == "pack",
                payments.c.status == "succeeded",
                # The auto top-up's packs are checked by topup_problems.
                payments.c.idempotency_key.not_like("topup:%"),
            )
        ).scalar_one()
        if creator.stripe is None and paid != len(creator.packs):
            problems.append(f"{creator.name}: {paid} pack payments for {len(creator.packs)} keys")
        if creator.stripe is not None:
            problems += stripe_pack_problems(conn, creator)
            problems += stripe_plan_problems(conn, creator)
    problems += limit_problems(conn, creators, jobs.values())
    return problems + topup_problems(conn, creators)


def stripe_pack_problems(conn: Connection, creator: Creator) -> list[str]:
    """Stripe billing: each pack answered got its Checkout session, paid
    once; each paid session granted one payment (its payment intent's),
    never two, and no payment came from anything else."""
    assert creator.stripe is not None
    fake = creator.stripe.fake
    problems = [f"{key}: answered, no checkout" for key in creator.packs - set(creator.checkouts)]
    intents: Counter[str] = Counter()
    for key, session_id in creator.checkouts.items():
        session = fake.sessions.get(session_id)
        if session is None or session["payment_status"] != "paid":
            problems.append(f"{key}: checkout {session_id} not paid at Stripe")
            continue
        intents[str(session["payment_intent"])] += 1
    problems += [f"{intent}: {n} checkouts" for intent, n in intents.items() if n > 1]
    granted = Counter(
        str(row.external_id)
        for row in conn.execute(
            select(payments.c.external_id).where(
                payments.c.user_id == creator.user.id,
                payments.c.kind == "pack",
                payments.c.status == "succeeded",
                payments.c.idempotency_key.not_like("topup:%"),
            )
        )
    )
    problems += [f"{creator.name} {intent}: {n} payments" for intent, n in granted.items() if n > 1]
    problems += [
        f"{creator.name} {i}: paid at Stripe, no payment" for i in intents if i not in granted
    ]
    problems += [
        f"{creator.name} {i}: a payment, no checkout paid" for i in granted if i not in intents
    ]
    return problems


def stripe_plan_problems(conn: Connection, creator: Creator) -> list[str]:
    """Stripe billing: the creator's one subscription is as Stripe has it,
    every change told by webhook applied: its status (active; or canceled:
    an account suspended by fair use for cycling plans stops its renewal,
    and the next period end ends it), the plan Stripe bills (from the next
    period on, after a downgrade: the pending plan), the period Stripe's
    (every renewal arrived)."""
    assert creator.stripe is not None
    assert creator.subscription_id is not None
    with creator.stripe.fake._lock:
        theirs = creator.stripe.fake.subscriptions[creator.subscription_id]
        item = theirs["items"]["data"][0]
        billed = plan_of_product(str(item["price"]["product"]))
        status = str(theirs["status"])
        period_end = datetime.fromtimestamp(item["current_period_end"], UTC)
    rows = conn.execute(
        select(subscriptions).where(subscriptions.c.user_id == creator.user.id)
    ).all()
    if len(rows) != 1:
        return [f"{creator.name}: {len(rows)} subscriptions"]
    [ours] = rows
    found = (ours.status, ours.pending_plan or ours.plan_id, as_utc(ours.current_period_end))
    if found != (status, billed, period_end):
        return [f"{creator.name}: subscription {found}, Stripe's {(status, billed, period_end)}"]
    return []


def topup_problems(conn: Connection, creators: list[Creator]) -> list[str]:
    """Every run ended; one at a time per wallet; a succeeded run paid once
    (its pack's payment, linked), any other never; each month within the cap."""
    problems: list[str] = []
    paid = {
        row.idempotency_key: row
        for row in conn.execute(select(payments).where(payments.c.idempotency_key.like("topup:%")))
    }
    for creator in creators:
        runs = conn.execute(
            select(topup_runs)
            .where(topup_runs.c.wallet_id == creator.user.wallet_id)
            .order_by(topup_runs.c.created_at, topup_runs.c.id)
        ).all()
        if runs and creator.topup is None:
            problems.append(f"{creator.name}: {len(runs)} runs without auto top-up")
        spent: Counter[str] = Counter()
        for before, run in zip([None, *runs], runs, strict=False):
            payment = paid.pop(run.idempotency_key, None)
            if run.status == "pending":
                problems.append(f"{run.id}: still pending")
            if before is not None and (
                before.finished_at is None or run.created_at < before.finished_at
            ):
                problems.append(f"{run.id}: started while {before.id} was in flight")
            if run.status == "succeeded":
                if payment is None or run.payment_id != payment.id:
                    problems.append(f"{run.id}: succeeded, payment {run.payment_id} / {payment}")
                elif (payment.amount_cents, payment.credits) != (run.amount_cents, run.credits):
                    problems.append(f"{run.id}: paid {payment.amount_cents} for {payment.credits}")
                spent[f"{run.created_at:%Y-%m}"] += int(run.amount_cents)
            elif payment is not None or run.payment_id is not None:
                problems.append(f"{run.id}: {run.status}, yet paid")
        if creator.topup is not None:
            cap = creator.topup[1]
            problems += [
                f"{creator.name} {m}: {c} > cap {cap}" for m, c in spent.items() if c > cap
            ]
    problems += [f"payment {p.id} ({key}): no run" for key, p in paid.items()]
    return problems


def limit_problems(conn: Connection, creators: list[Creator], jobs: Any) -> list[str]:
    """No wallet spent more in a calendar month than its monthly limit: in
    the months since its first limit, at most the highest limit it was sent,
    and in the month now at most the limit it has now."""
    problems: list[str] = []
    for creator in creators:
        limit = conn.execute(
            select(wallets.c.monthly_spend_limit).where(wallets.c.id == creator.user.wallet_id)
        ).scalar_one()
        if creator.limited_from is None or limit is None:
            continue
        # The month the first limit was set in: the one before its reset.
        first = _month_of(datetime.fromisoformat(creator.limited_from) - timedelta(days=1))
        spent: Counter[datetime] = Counter()
        for job in jobs:
            if job.user_id == creator.user.id and job.status == "succeeded":
                spent[_month_of(as_utc(job.created_at))] += int(job.credits_charged)
        months = [month for month in spent if month >= first]
        highest = max(creator.limits_sent)
        problems += [
            f"{creator.name}: spent {spent[month]} in {month:%Y-%m}, limits up to {highest}"
            for month in months
            if spent[month] > highest
        ]
        # Limits only ever rise (each is at least the one in force): the
        # latest month is within the limit the wallet has now.
        if months and spent[max(months)] > int(limit):
            problems.append(f"{creator.name}: spent {spent[max(months)]}, limit {limit} now")
    return problems


def _month_of(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def event_problems(conn: Connection, listeners: list[Listener]) -> list[str]:
    """Each creator's stream carried only their own generations, and the final
    state of every one of them (from worker processes, through PostgreSQL
    LISTEN/NOTIFY to the API process holding the stream), or, after a
    resync, the listener read it over the API."""
    problems: list[str] = []
    for listener in listeners:
        user_id = listener.creator.user.id
        own = {
            row.id: row.status
            for row in conn.execute(
                select(generations.c.id, generations.c.status).where(
                    generations.c.user_id == user_id
                )
            )
        }
        seen = set(listener.events)
        problems += [f"{listener.name}: got {gid}, not theirs" for gid, _ in seen if gid not in own]
        problems += [
            f"{listener.name}: no {status} event for {gid}"
            for gid, status in own.items()
            if (gid, status) not in seen and (gid, status) not in listener.reread
        ]
        problems += listener.errors
    return problems


def configure_topups(platform: Platform, creators: list[Creator]) -> None:
    """The auto top-up of the creators in ``TOPUPS``, the threshold just
    under their balance (the first jobs cross it)."""
    for n, (pack, cap, _) in TOPUPS.items():
        creator = creators[n]
        creator.topup = (pack, cap)
        with platform.db.write() as conn:
            available = platform.ledger.balance(conn, creator.user.wallet_id).available
            platform.auto_topups.configure(
                conn,
                wallet_id=creator.user.wallet_id,
                user_id=creator.user.id,
                enabled=True,
                threshold=available - 5,
                pack_id=pack,
                monthly_cap_cents=cap,
            )


def subscribe_through_stripe(
    stripe: StripeSide,
    servers: list[ServerProcess],
    creators: list[Creator],
    plans: tuple[str, ...],
) -> None:
    """Each creator subscribes as a customer does: the API's Checkout, the
    customer paying it at Stripe (which saves the card the auto top-ups
    charge), Stripe's events delivered; the creator whose sandbox card asks
    to confirm has a card at Stripe whose bank asks to authenticate."""
    for creator, plan in zip(creators, plans, strict=True):
        pick = random.Random(creator.seed + 2_000)
        with Client(servers[0].url, creator.user.api_key, timeout=REQUEST_TIMEOUT_S) as client:
            checkout = client.subscribe(plan, idempotency_key=f"{creator.name}-subscribe")
            assert isinstance(checkout, Checkout), checkout
            session = session_of(checkout.checkout_url)
            assert stripe.pay(session, creator.user.id, pick)
            subscribed = client.subscription()
            assert (subscribed.plan, subscribed.status) == (plan, "active"), subscribed
        creator.subscription_id = stripe.fake.subscription_of(session)
        stripe.told(creator.subscription_id)
        creator.customer_id = str(stripe.fake.sessions[session]["customer"])
    for n, (_, _, confirm) in TOPUPS.items():
        customer = creators[n].customer_id
        if confirm and customer is not None:
            stripe.fake.requiring_action.add(customer)


def business_state(platform: Platform) -> dict[str, list[tuple[Any, ...]]]:
    state = snapshot(platform)
    return {table: state[table] for table in BUSINESS_TABLES}


def last_storm(platform: Platform, stripe: StripeSide) -> list[str]:
    """Every event Stripe made, again, shuffled, to both API processes (each
    a duplicate: nothing changes), then under new ids to one (recorded as
    events, nothing else changes). The problems found."""
    urls = stripe.webhook_urls()
    made = len(stripe.fake.recent_events(FULL_STORM))
    before = business_state(platform)
    same = WebhookStorm(stripe.fake, urls, random.Random(SEED + 200), within=FULL_STORM)
    same.inject()
    problems = [f"last storm: {failure}" for failure in same.failures()]
    if same.sent != made * len(urls):
        problems.append(f"last storm: sent {same.sent} of {made} events x {len(urls)}")
    outcomes = Counter(
        d.body.get("outcome") if isinstance(d.body, dict) else None
        for storm in same.storms
        for d in storm.deliveries
    )
    if set(outcomes) - {"duplicate"}:
        problems.append(f"last storm: outcomes {dict(outcomes)}")
    middle = business_state(platform)
    problems += [f"last storm changed {change}"[:2000] for change in changes(before, middle)]
    renamed = WebhookStorm(
        stripe.fake, urls[1:], random.Random(SEED + 201), within=FULL_STORM, new_ids=True
    )
    renamed.inject()
    problems += [f"last storm, new ids: {failure}" for failure in renamed.failures()]
    after = business_state(platform)
    # Compared with what the first storm left (the same, unless it changed something).
    events_before, events_after = middle.pop("stripe_events"), after.pop("stripe_events")
    problems += [
        f"last storm, new ids, changed {change}"[:2000] for change in changes(middle, after)
    ]
    if len(events_after) != len(events_before) + made:
        problems.append(f"last storm, new ids: {len(events_after) - len(events_before)} recorded")
    stripe.last_storms = [same, renamed]
    return problems


def stripe_notes(stripe: StripeSide) -> dict[str, int]:
    return {
        "webhook deliveries": stripe.deliveries,
        "webhook deliveries sent again": stripe.retried,
        **{f"webhooks {outcome}": n for outcome, n in stripe.outcomes.items()},
        **stripe.storm_counts(),
    }


def _kind_of(problem: str) -> str:
    """A violation as the soak's table lists it: its first line, cut short."""
    return problem.splitlines()[0][:200]


def unfinished(conn: Connection) -> int:
    """Jobs not terminal and auto top-up runs still charging."""
    jobs = conn.execute(
        select(func.count()).where(generations.c.status.not_in(TERMINAL))
    ).scalar_one()
    charging = conn.execute(
        select(func.count()).where(topup_runs.c.status == "pending")
    ).scalar_one()
    return int(jobs) + int(charging)


def test_the_bank(database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    var_dir = tmp_path / "var"
    resources = ExitStack()
    bank = Bank(
        dialect="postgresql" if database_url.startswith("postgresql") else "sqlite",
        soak=SOAK_OPS > 0,
        database_url=database_url,
        env=child_env(database_url, var_dir),
        tmp_path=tmp_path,
        resources=resources,
        billing=BILLING,
    )
    bank.env.update(PLASMAART_JOB_LEASE_S="3", PLASMAART_IDEMPOTENCY_TAKEOVER_S="2")
    prepare(bank)
    stripe = bank.stripe
    billing_settings = {} if stripe is None else stripe.fake.platform_settings()
    platform: Platform = bootstrap(
        Settings(database_url=bank.database_url, var_dir=var_dir, **billing_settings),
        migrate=False,
    )
    fleet = bank.fleet = Fleet(
        bank.env,
        tmp_path,
        [ServerProcess(f"api{n}", bank.env, tmp_path) for n in range(2)],
        concurrency=CONCURRENCY,
    )
    listeners: list[Listener] = []
    creators: list[Creator] = []
    checkpoints = missed = 0
    checkpoint_problems: list[str] = []
    final_storm: list[str] = []
    schedule: FaultSchedule | None = None
    stop = threading.Event()  # the creators'
    try:
        admin = make_user(platform, "bank-admin@example.com", admin=True)
        plans = ("starter", "pro", "studio", "studio")
        creators = [
            Creator(
                # Under Stripe billing they subscribe through Checkout below.
                make_user(
                    platform,
                    f"bank{n}@example.com",
                    plan=plan if stripe is None else None,
                    credits=2_000,
                ),
                f"c{n}",
                SEED + n,
                admin,
                sets_limits=n % 2 == 0,
                stripe=stripe,
            )
            for n, plan in enumerate(plans)
        ]
        if stripe is None:
            sandbox = platform.billing.backend
            assert isinstance(sandbox, SandboxBackend)
            for n, (_, _, confirm) in TOPUPS.items():
                with platform.db.write() as conn:
                    sandbox.set_card(
                        conn, creators[n].user.id, declines=False, requires_action=confirm
                    )
            configure_topups(platform, creators)
        for server in fleet.servers:
            server.start()
        if stripe is not None:
            stripe.urls = [server.url for server in fleet.servers]
            subscribe_through_stripe(stripe, fleet.servers, creators, plans)
            configure_topups(platform, creators)
        for n in range(2):
            fleet.start_worker(n)
        if bank.dialect == "postgresql":
            # On the API process that is never killed, so no event is missed.
            listeners = [Listener(fleet.servers[1], creator) for creator in creators]
            for listener in listeners:
                listener.start()
                assert listener.connected.wait(30), f"{listener.name} did not connect"
        threads = [
            threading.Thread(target=c.run, args=(fleet.servers, stop), name=c.name, daemon=True)
            for c in creators
        ]
        for thread in threads:
            thread.start()
        checker_stop = threading.Event()

        def checkpoint() -> None:
            nonlocal checkpoints, missed
            while not checker_stop.wait(CHECKPOINT_EVERY_S):
                try:
                    checkpoint_problems.extend(read_snapshot(platform.db, check_ledger))
                except DBAPIError:
                    missed += 1  # the database is away (a fault): the next one checks
                    continue
                checkpoints += 1

        checker = threading.Thread(target=checkpoint, name="checkpoints", daemon=True)
        checker.start()
        schedule = FaultSchedule(bank_faults(bank), seed=SEED, every=FAULT_EVERY_S)
        schedule.start()

        def completed() -> int:
            return sum(sum(c.ops.values()) for c in creators)

        def covered() -> bool:
            ops = sum((c.ops for c in creators), Counter())
            refusals = sum((c.refusals for c in creators), Counter())
            return (
                all(ops[kind] for kind in OPERATIONS)
                and refusals["submit 402 spend_limit_reached"] > 0
                and schedule.injected["API SIGKILL"] > 0
                and schedule.injected["worker SIGKILL"] >= 3
                and (
                    stripe is None
                    or all(stripe.storm_counts()[k] for k in ("same-id storms", "new-id storms"))
                )
            )

        chaos_began = time.monotonic()
        chaos_ends = chaos_began + (SOAK_MAX_S if bank.soak else RUN_MAX_S)
        while time.monotonic() < chaos_ends and not schedule.errors:
            time.sleep(0.25)
            fleet.restart_exited()
            if not any(thread.is_alive() for thread in threads):
                break
            if bank.soak and completed() >= SOAK_OPS:
                break
            if not bank.soak and time.monotonic() - chaos_began >= RUN_S and covered():
                break
        schedule.stop()  # every fault healed
        stop.set()
        for thread in threads:
            # A call in flight finishes within its retries.
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        checker_stop.set()
        checker.join(timeout=120)

        chaos_s = time.monotonic() - chaos_began
        backlog = read_snapshot(platform.db, lambda conn: [str(unfinished(conn))])[0]
        finish_began = time.monotonic()
        finish_by = finish_began + (SOAK_FINISH_WITHIN_S if bank.soak else FINISH_WITHIN_S)
        while read_snapshot(platform.db, lambda conn: [str(unfinished(conn))]) != ["0"]:
            fleet.restart_exited()
            if time.monotonic() > finish_by:
                break
            time.sleep(0.2)

        finish_s = time.monotonic() - finish_began
        if stripe is not None:
            # Stripe's last word: every event it ever sent, again, shuffled,
            # to both API processes, then under new ids: nothing changes.
            final_storm = last_storm(platform, stripe)
        problems = checkpoint_problems + [f"fault schedule: {e}" for e in schedule.errors]
        problems += fleet.problems
        if stripe is not None:
            problems += stripe.violations + final_storm
            problems += stripe.storm_problems(lambda url: url.startswith(fleet.servers[0].url))
        for creator in creators:
            problems += creator.violations
            if creator.wire is not None:
                problems += creator.wire.violations
        problems += read_snapshot(platform.db, lambda conn: final_problems(conn, creators))
        if listeners:
            time.sleep(2)  # the last jobs' events are on their way
            for listener in listeners:
                listener.close()
            problems += read_snapshot(platform.db, lambda conn: event_problems(conn, listeners))
        ops = sum((c.ops for c in creators), Counter())
        if bank.soak and sum(ops.values()) < SOAK_OPS:
            problems.append(
                f"stopped at the hard cap ({SOAK_MAX_S:.0f} s) with "
                f"{sum(ops.values())} of {SOAK_OPS} operations"
            )
        wires = [c.wire for c in creators if c.wire is not None]
        with platform.db.read() as conn:
            statuses = Counter(row[0] for row in conn.execute(select(generations.c.status)))
            topups = Counter(row[0] for row in conn.execute(select(topup_runs.c.status)))
            non_terminal = unfinished(conn)
        figures = Figures(
            database=bank.dialect,
            mode=("soak" if bank.soak else "short") + (", Stripe" if stripe else ""),
            target=SOAK_OPS or None,
            operations=dict(ops),
            refusals=dict(sum((c.refusals for c in creators), Counter())),
            notes={
                **sum((c.notes for c in creators), Counter()),
                "jobs and top-ups unfinished when the load stopped": int(backlog),
                "processes started again after exiting at start-up (the database away)": (
                    fleet.restarted
                ),
                **({} if stripe is None else stripe_notes(stripe)),
            },
            faults=dict(schedule.injected),
            jobs=dict(statuses),
            topups=dict(topups),
            checkpoints=checkpoints,
            checkpoints_missed=missed,
            events_checked=sum(len(listener.events) for listener in listeners),
            resyncs=sum(listener.resyncs for listener in listeners),
            attempts=sum(w.attempts for w in wires),
            unanswered=sum(w.unanswered for w in wires),
            documented_503=sum(w.documented_503 for w in wires),
            documented_507=sum(w.documented_507 for w in wires),
            wire_5xx=sum(len(w.violations) for w in wires),
            violations=len(problems),
            non_terminal=non_terminal,
            problems=list(dict.fromkeys(_kind_of(problem) for problem in problems))[:5],
            duration_s=time.monotonic() - started,
            chaos_s=chaos_s,
            finish_s=finish_s,
        )
        if SOAK_REPORT_DIR:
            figures.write(Path(SOAK_REPORT_DIR))
        with capsys.disabled():
            print(f"\n{figures.line()}")  # noqa: T201 - the bank report is meant to be read
        logs = "\n".join(
            f"--- {p.name}\n{p.log()[-3000:]}" for p in [*fleet.servers, *fleet.workers]
        )
        assert not problems, "\n".join(problems[:50]) + "\n" + logs
        assert ops["submit"] > 20
        assert schedule.injected["worker SIGKILL"] >= 3
        assert schedule.injected["API SIGKILL"] >= 1
        assert checkpoints >= 3
        assert statuses["succeeded"] > 0, statuses
        assert statuses["failed"] > 0, statuses
        assert topups["succeeded"] > 0, topups
        assert topups["action_required"] > 0, topups
        assert ops["spend limit"] > 0, ops
        assert figures.refusals.get("submit 402 spend_limit_reached", 0) > 0, figures.refusals
        if stripe is not None:
            assert schedule.injected["webhook storm"] > 0, schedule.injected
            assert schedule.injected["webhook storm, new ids"] > 0, schedule.injected
            counts = stripe.storm_counts()
            assert counts["same-id storms"] > 0, counts
            assert counts["new-id storms"] > 0, counts
            assert stripe.outcomes["applied"] > 0, stripe.outcomes
    finally:
        stop.set()
        if schedule is not None:
            schedule.stop()
        for listener in listeners:
            listener.close()
        for creator in creators:
            if creator.wire is not None:
                creator.wire.close()
        fleet.close()
        platform.close()
        resources.close()

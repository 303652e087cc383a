"""The production topology of docs/deployment.md ("Several machines"), on one
machine, every part a real process speaking its real protocol:

- PostgreSQL (a throwaway server), Redis, moto's S3 server with a bucket,
  an aiosmtpd mail server;
- Debian's Caddy with deploy/Caddyfile's site block, its internal CA for
  localhost (the client trusts its root certificate and nothing else);
- ``plasmaart migrate``, then ``plasmaart serve --workers 2`` behind Caddy
  and two ``plasmaart worker`` processes, configured as
  deploy/plasmaart.env.example says (``PLASMAART_EMBEDDED_WORKER=false``,
  ``PLASMAART_PUBLIC_URL`` the https address, Caddy a trusted proxy).

Through HTTPS, with the Python client: a creator's journey (sign up, the
mailed link, subscribe, generate, the live event, the output from S3), the
metrics behind the proxy's password, a rolling restart of the API processes
(SIGHUP) while a client submits, and a worker stopped (SIGTERM) with jobs
running. Every check of the books reads PostgreSQL itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import create_engine, func, select, text

from plasmaart.client import Client, Generation
from plasmaart.db.engine import Database, create_database
from plasmaart.db.tables import generation_outputs, generations, holds, journal_entries, wallets
from tests.support.caddy import CaddyProxy, hash_password
from tests.support.mail import SmtpServer, link_to, token_of
from tests.support.pgserver import free_port
from tests.support.processes import WorkerProcess, child_env
from tests.support.redis_server import redis_server

T = TypeVar("T")

pytestmark = pytest.mark.postgres

# `plasmaart serve --workers 2`: two API processes on one port under one
# supervisor (SIGHUP = rolling restart), as docs/deployment.md runs it.
API_PROCESSES = 2
WORKER_CONCURRENCY = 2
# Short deadlines, so that the graceful stops are seen within the test.
SHUTDOWN_TIMEOUT_S = 10
WORKER_DRAIN_S = 2
# The rolling restart's client: one submission every 0.4 s, at most 110,
# within Studio's 120 requests a minute while the processes are replaced.
SUBMIT_EVERY_S = 0.4
MAX_SUBMISSIONS = 110
# Every wait is bounded.
START_WITHIN_S = 60.0
FINISH_WITHIN_S = 30.0
STOP_WITHIN_S = 15.0
POLL_S = 0.05
TERMINAL = ("succeeded", "failed", "canceled")

BUCKET = "plasmaart-topology"  # moto's servers in one process share buckets
METRICS_USER = "prometheus"
METRICS_PASSWORD = "scrape-" + uuid.uuid4().hex
PASSWORD = "correct horse battery staple"


def wait_for(
    check: Callable[[], T | None], within_s: float, what: str, logs: Callable[[], str]
) -> T:
    deadline = time.monotonic() + within_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"not {what} within {within_s:g} s\n{logs()}")
        time.sleep(POLL_S)


def absolute_pythonpath(env: dict[str, str]) -> None:
    """Children run in another folder: a relative PYTHONPATH (``src``) would
    import another copy of the code, or none."""
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(part) for part in env["PYTHONPATH"].split(os.pathsep)
        )


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plasmaart.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Serve:
    """``plasmaart serve`` as systemd runs it (plasmaart-api.service): the
    supervisor in the foreground, its API processes its children."""

    def __init__(self, env: dict[str, str], cwd: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / "serve.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        command = [sys.executable, "-m", "plasmaart.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", str(API_PROCESSES)]
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    def ready(self) -> bool | None:
        assert self.process.poll() is None, f"serve exited:\n{self.log()}"
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200 or None
        except httpx.TransportError:
            return None

    def children(self) -> set[int]:
        """The supervisor's child processes (its API processes)."""
        found: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                found.update(int(pid) for pid in (task / "children").read_text().split())
            except FileNotFoundError:
                continue
        return found

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_S + STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_WITHIN_S)
        self._log.close()


@dataclass
class Topology:
    env: dict[str, str]
    workdir: Path
    db: Database
    s3: Any
    inbox: Any
    caddy: CaddyProxy
    serve: Serve
    workers: list[WorkerProcess]
    extra_logs: list[Callable[[], str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.caddy.url

    def client(self, api_key: str | None = None, **options: Any) -> Client:
        """The Python client over HTTPS, trusting Caddy's root certificate."""
        transport = httpx.HTTPTransport(verify=self.caddy.ssl_context())
        return Client(self.url, api_key, transport=transport, **options)

    def logs(self) -> str:
        parts = [f"--- serve\n{self.serve.log()}"]
        parts += [f"--- {w.name}\n{w.log()[-4000:]}" for w in self.workers]
        parts.append(f"--- caddy\n{self.caddy.log()[-3000:]}")
        return "\n".join(parts)

    def jobs(self, ids: set[str]) -> dict[str, Any]:
        with self.db.read() as conn:
            rows = conn.execute(select(generations).where(generations.c.id.in_(ids)))
            return {row.id: row for row in rows}

    def wait_terminal(self, ids: set[str]) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            rows = self.jobs(ids)
            finished = len(rows) == len(ids) and all(r.status in TERMINAL for r in rows.values())
            return rows if finished else None

        return wait_for(done, FINISH_WITHIN_S, f"{len(ids)} jobs terminal", self.logs)


@pytest.fixture(scope="module")
def topology(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    workdir = tmp_path_factory.mktemp("topology")
    name = f"topology_{os.getpid()}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    database_url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3_url = f"http://{host}:{port}"
    aws = {
        "AWS_ACCESS_KEY_ID": "topology",
        "AWS_SECRET_ACCESS_KEY": "topology-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=BUCKET)
    smtp = SmtpServer()
    inbox = smtp.__enter__()
    started: list[Callable[[], None]] = []
    try:
        with redis_server() as redis_url:
            caddy_upstream = free_port()
            caddy = CaddyProxy(
                workdir,
                {
                    "PLASMAART_ACME_EMAIL": "ops@example.com",
                    "PLASMAART_UPSTREAMS": f"127.0.0.1:{caddy_upstream}",
                    "PLASMAART_METRICS_USER": METRICS_USER,
                    "PLASMAART_METRICS_HASH": hash_password(METRICS_PASSWORD),
                },
            )
            env = child_env(database_url, workdir / "var")
            absolute_pythonpath(env)
            for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                env.pop(variable, None)
            env.update(aws)
            env.update(
                REDIS_URL=redis_url,
                PLASMAART_PUBLIC_URL=caddy.url,
                PLASMAART_TRUSTED_PROXIES="127.0.0.1",
                PLASMAART_EMBEDDED_WORKER="false",
                PLASMAART_AUTO_MIGRATE="false",
                PLASMAART_STORAGE="s3",
                PLASMAART_S3_BUCKET=BUCKET,
                PLASMAART_S3_ENDPOINT_URL=s3_url,
                PLASMAART_S3_REGION="us-east-1",
                PLASMAART_S3_PREFIX="media",
                PLASMAART_SECRET_KEY="topology-" + uuid.uuid4().hex + uuid.uuid4().hex,
                PLASMAART_SMTP_HOST="127.0.0.1",
                PLASMAART_SMTP_PORT=str(smtp.port),
                PLASMAART_SMTP_STARTTLS="false",
                PLASMAART_SMTP_FROM="art@plasmaart.test",
                PLASMAART_SUPPORT_EMAIL="support@plasmaart.test",
                PLASMAART_PROVIDER="sandbox",
                PLASMAART_BILLING="sandbox",
                PLASMAART_WEB_WORKERS=str(API_PROCESSES),
                PLASMAART_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
                PLASMAART_WORKER_DRAIN_S=str(WORKER_DRAIN_S),
                PLASMAART_WORKER_CONCURRENCY=str(WORKER_CONCURRENCY),
            )
            migrated = cli(env, workdir, "migrate")
            assert migrated.returncode == 0, migrated.stderr
            serve = Serve(env, workdir, caddy_upstream)
            started.append(serve.close)
            workers = [
                WorkerProcess(f"worker-{n}", env, workdir, WORKER_CONCURRENCY) for n in (1, 2)
            ]
            started.extend(worker.close for worker in workers)
            caddy.start()
            started.append(caddy.close)
            wait_for(serve.ready, START_WITHIN_S, "serve ready", serve.log)

            # Ready as the guide checks it: https://…/readyz through Caddy,
            # once its own health check has seen the API (a GET waits for it).
            def proxied_ready() -> bool | None:
                try:
                    answer = httpx.get(
                        f"{caddy.url}/readyz", verify=caddy.ssl_context(), timeout=30
                    )
                except httpx.TransportError:
                    return None
                return answer.status_code == 200 or None

            wait_for(proxied_ready, START_WITHIN_S, "ready through Caddy", caddy.log)
            db = create_database(database_url, pool_size=4)
            started.append(db.dispose)
            yield Topology(env, workdir, db, s3, inbox, caddy, serve, workers)
    finally:
        for stop in reversed(started):
            stop()
        smtp.__exit__(None, None, None)
        moto.stop()


def bucket_objects(topology: Topology) -> dict[str, bytes]:
    listed = topology.s3.list_objects_v2(Bucket=BUCKET, Prefix="media/")
    return {
        item["Key"]: topology.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        for item in listed.get("Contents", [])
    }


@dataclass
class Creator:
    email: str
    user_id: str
    wallet_id: str
    api_key: str


def creator(topology: Topology, email: str) -> Creator:
    """Sign up through the proxy, open the mailed link, subscribe to Studio
    (sandbox billing), and make an API key."""
    with topology.client() as client:
        client.signup(email, PASSWORD)
        mail = topology.inbox.wait_for(
            email, subject="Confirm your e-mail address", timeout=FINISH_WITHIN_S
        )
        link = link_to(mail, "/verify-email")
        # The link starts with PLASMAART_PUBLIC_URL: the address behind Caddy.
        assert link.startswith(f"{topology.url}/verify-email?token="), link
        client.verify_email(token_of(link))
        user = client.login(email, PASSWORD)
        key = client.create_api_key("topology").key
        assert key is not None
    with httpx.Client(
        base_url=topology.url, verify=topology.caddy.ssl_context(), timeout=30
    ) as http:
        answer = http.post(
            "/v1/subscription",
            json={"plan": "studio"},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert answer.status_code == 201, answer.text
    with topology.db.read() as conn:
        wallet = conn.execute(
            select(wallets.c.id).where(
                wallets.c.owner_kind == "user", wallets.c.owner_id == user.id
            )
        ).scalar_one()
    return Creator(email, user.id, wallet, key)


def assert_charged_once(topology: Topology, rows: dict[str, Any]) -> int:
    """Each job's hold resolved exactly once (one hold entry, at most one
    capture and one release, together the amount held), charged for the
    outputs it stored; the credits charged in all."""
    ids = set(rows)
    with topology.db.read() as conn:
        delivered = dict(
            conn.execute(
                select(generation_outputs.c.generation_id, func.count())
                .where(generation_outputs.c.generation_id.in_(ids))
                .group_by(generation_outputs.c.generation_id)
            ).all()
        )
        hold_ids = {row.hold_id for row in rows.values()}
        hold_rows = {h.id: h for h in conn.execute(select(holds).where(holds.c.id.in_(hold_ids)))}
        entries: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for entry in conn.execute(
            select(journal_entries.c.hold_id, journal_entries.c.kind, journal_entries.c.credits)
            .where(journal_entries.c.hold_id.in_(hold_ids))
            .order_by(journal_entries.c.id)
        ):
            entries[entry.hold_id].append((entry.kind, int(entry.credits)))
    total = 0
    for gid, row in rows.items():
        charged = int(row.credits_per_output) * int(delivered.get(gid, 0))
        held = int(row.credits_held)
        assert int(row.credits_charged) == charged, gid
        hold = hold_rows[row.hold_id]
        assert hold.status != "pending", gid
        assert (int(hold.captured), int(hold.released)) == (charged, held - charged), gid
        expected = [("hold", held)]
        if charged:
            expected.append(("capture", charged))
        if held - charged:
            expected.append(("release", held - charged))
        assert entries[row.hold_id] == expected, gid
        total += charged
    return total


def balance(topology: Topology, wallet_id: str) -> tuple[int, int]:
    with topology.db.read() as conn:
        row = conn.execute(
            select(wallets.c.available, wallets.c.held).where(wallets.c.id == wallet_id)
        ).one()
    return int(row.available), int(row.held)


def assert_books_balance(topology: Topology) -> None:
    verified = cli(topology.env, topology.workdir, "ledger", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "the books balance" in verified.stdout


def test_a_creators_journey_through_the_proxy(topology: Topology, tmp_path: Path) -> None:
    ada = creator(topology, "ada@example.com")
    before = balance(topology, ada.wallet_id)
    assert before == (11_000, 0)

    with topology.client(ada.api_key) as client:
        # The session cookie is Secure: the API believed Caddy's X-Forwarded-Proto.
        with httpx.Client(
            base_url=topology.url, verify=topology.caddy.ssl_context(), timeout=30
        ) as http:
            answer = http.post("/v1/auth/login", json={"email": ada.email, "password": PASSWORD})
            assert answer.status_code == 200, answer.text
            cookies = answer.headers.get_list("set-cookie")
            assert cookies
            assert all("secure" in cookie.lower() for cookie in cookies), cookies

        # The live event, through the proxy, on a stream opened before the job.
        seen: list[dict[str, Any]] = []
        listening = threading.Event()
        finished = threading.Event()

        def listen() -> None:
            with topology.client(ada.api_key) as listener:
                for event in listener.events(read_timeout=FINISH_WITHIN_S):
                    listening.set()
                    if event.type == "generation.updated":
                        seen.append(event.data)
                        if event.data["status"] in TERMINAL:
                            finished.set()
                            return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        # The stream's first bytes (a resync or a heartbeat) are not promised
        # at once: a generation's first event is, so submit after a moment.
        time.sleep(0.5)
        done: Generation = client.generate(
            "flux-schnell",
            "a red fox in snow, behind the proxy",
            num_outputs=2,
            params={"seed": 7, "sandbox": {"delay_s": 0.5}},
            timeout=FINISH_WITHIN_S,
        )
        assert done.status == "succeeded", done.error
        assert finished.wait(FINISH_WITHIN_S), f"no terminal event: {seen}\n{topology.logs()}"
        thread.join(timeout=STOP_WITHIN_S)
        assert [e["id"] for e in seen] == [done.id] * len(seen)
        assert seen[-1]["status"] == "succeeded"
        assert seen[-1]["credits_charged"] == done.credits_charged == 2

        # The outputs: in the bucket, and the same bytes through the signed link.
        stored = bucket_objects(topology)
        assert len(stored) >= 2, stored.keys()
        for n, output in enumerate(done.outputs):
            assert "signature=" in output.url
            path = tmp_path / f"out-{n}.png"
            with httpx.Client(verify=topology.caddy.ssl_context(), timeout=30) as anonymous:
                signed = anonymous.get(httpx.URL(topology.url).join(output.url))
            assert signed.status_code == 200, signed.text
            assert signed.content in stored.values()
            assert client.download_output(output, path) == len(signed.content)
            assert path.read_bytes() == signed.content

    assert balance(topology, ada.wallet_id) == (before[0] - 2, 0)
    rows = topology.jobs({done.id})
    assert assert_charged_once(topology, rows) == 2


def test_metrics_behind_the_proxys_password(topology: Topology) -> None:
    with httpx.Client(
        base_url=topology.url, verify=topology.caddy.ssl_context(), timeout=30
    ) as http:
        refused = http.get("/metrics")
        assert refused.status_code == 401
        scraped = http.get("/metrics", auth=(METRICS_USER, METRICS_PASSWORD))
        assert scraped.status_code == 200, scraped.text
        # One API process answers, with its own counters (any of them may
        # answer: they share the port).
        assert "# TYPE plasmaart_http_requests_total counter" in scraped.text
        assert 'plasmaart_build_info{version="' in scraped.text
        # Everything else is public, and HSTS is sent.
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.headers["strict-transport-security"] == "max-age=31536000"


def test_a_rolling_restart_fails_no_request_and_charges_once(topology: Topology) -> None:
    bea = creator(topology, "bea@example.com")
    before = balance(topology, bea.wallet_id)
    accepted: dict[str, float] = {}
    failures: list[str] = []
    stop = threading.Event()

    def submit() -> None:
        # No retries: a request the restart broke would fail here, not be
        # sent again by the client. Paced below Studio's 120 requests a minute.
        with topology.client(bea.api_key, max_retries=0) as client:
            n = 0
            while not stop.is_set() and n < MAX_SUBMISSIONS:
                n += 1
                try:
                    queued = client.create_generation(
                        "flux-schnell",
                        f"rolling restart {n}",
                        params={"seed": n, "sandbox": {"delay_s": 0}},
                    )
                    accepted[queued.id] = time.monotonic()
                except Exception as error:  # every failure is the finding
                    failures.append(f"{n}: {error!r}")
                time.sleep(SUBMIT_EVERY_S)

    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(accepted) >= 5 or None, START_WITHIN_S, "submissions", topology.logs)
        old = topology.serve.children()
        assert len(old) >= API_PROCESSES, old
        hup_at = time.monotonic()
        os.kill(topology.serve.process.pid, signal.SIGHUP)

        def replaced() -> set[int] | None:
            now = topology.serve.children()
            gone = old - now
            fresh = now - old
            return now if len(gone) >= API_PROCESSES and len(fresh) >= API_PROCESSES else None

        wait_for(replaced, START_WITHIN_S, "every API process replaced", topology.logs)
        restarted_at = time.monotonic()
        wait_for(
            lambda: sum(t > restarted_at for t in accepted.values()) >= 3 or None,
            START_WITHIN_S,
            "submissions after the restart",
            topology.logs,
        )
    finally:
        stop.set()
        thread.join(timeout=STOP_WITHIN_S)
    assert failures == [], failures
    during = [t for t in accepted.values() if hup_at <= t <= restarted_at]
    assert during, "no submission was answered while the processes were replaced"

    with topology.db.read() as conn:
        mine = conn.execute(
            select(func.count()).where(generations.c.user_id == bea.user_id)
        ).scalar_one()
    assert mine == len(accepted)  # no submission queued twice
    # What the workers have not started yet is canceled (refunded in full),
    # so that the books can be checked without waiting for the whole queue.
    with topology.client(bea.api_key) as client:
        for gid, row in topology.jobs(set(accepted)).items():
            if row.status == "queued":
                client.cancel_generation(gid)
    rows = topology.wait_terminal(set(accepted))
    statuses = {row.status for row in rows.values()}
    assert statuses <= {"succeeded", "canceled"}, statuses
    charged = assert_charged_once(topology, rows)
    assert charged == sum(row.status == "succeeded" for row in rows.values())
    assert balance(topology, bea.wallet_id) == (before[0] - charged, 0)
    assert topology.serve.process.poll() is None
    assert_books_balance(topology)


def test_a_stopped_worker_loses_no_job(topology: Topology) -> None:
    cai = creator(topology, "cai@example.com")
    before = balance(topology, cai.wallet_id)
    first = topology.workers[0]
    # Longer than the drain: what the first worker runs is handed back, and
    # the other worker finishes it.
    with topology.client(cai.api_key) as client:
        ids = {
            client.create_generation(
                "flux-schnell",
                f"drain {n}",
                num_outputs=1,
                params={"seed": n, "sandbox": {"delay_s": WORKER_DRAIN_S + 2}},
            ).id
            for n in range(2 * WORKER_CONCURRENCY)
        }

    def first_runs_some() -> list[Any] | None:
        running = [
            row
            for row in topology.jobs(ids).values()
            if row.status == "running"
            and f":{first.pid}:" in str(row.lease_owner)
            and row.provider_request_id
        ]
        return running or None

    running = wait_for(first_runs_some, START_WITHIN_S, "jobs on the first worker", topology.logs)
    first.process.send_signal(signal.SIGTERM)
    try:
        code = first.process.wait(timeout=WORKER_DRAIN_S + STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not drain within {WORKER_DRAIN_S} s:\n{first.log()}")
    assert code == 0, first.log()
    assert "Traceback" not in first.log(), first.log()

    rows = topology.wait_terminal(ids)
    assert all(row.status == "succeeded" for row in rows.values()), {
        gid: (row.status, row.error_code) for gid, row in rows.items()
    }
    for was in running:
        now = rows[was.id]
        # Resumed from the stored provider request, by the other worker.
        assert now.provider_request_id == was.provider_request_id, was.id
        # Claimed again (a newer fencing token), by the other worker.
        assert now.fencing_token > was.fencing_token, was.id
        assert f":{first.pid}:" not in str(now.lease_owner), was.id
    charged = assert_charged_once(topology, rows)
    assert charged == len(ids)
    assert balance(topology, cai.wallet_id) == (before[0] - charged, 0)
    assert_books_balance(topology)

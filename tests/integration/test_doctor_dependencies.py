"""``plasmaart doctor`` against real services: PostgreSQL (or SQLite), a
redis-server, moto's S3 server, an aiosmtpd mail server that asks for a
login, and a running PlasmaArt server at the public URL. A healthy setup is
all ok; then each broken dependency is found, in an otherwise healthy setup,
with its fix. The servers are started once for the module."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

import plasmaart
from plasmaart import doctor
from plasmaart.cli import app
from plasmaart.clock import ManualClock, OffsetClock, SystemClock
from plasmaart.config import Settings
from plasmaart.doctor import Finding, check_database, clock_error_s, diagnose
from tests.support.doctor_table import levels, parse_table
from tests.support.live_server import live_server
from tests.support.mail import Inbox
from tests.support.pgserver import free_port
from tests.support.platforms import running_platform, settings_for
from tests.support.processes import child_env
from tests.support.redis_server import redis_server

REGION = "us-east-1"
BUCKET = "plasmaart-doctor-checks"  # moto's servers in one process share buckets
SMTP_USER, SMTP_PASSWORD = "doctor", "Let-Me-In-42"
STRIPE_KEY, STRIPE_WEBHOOK_SECRET = "sk_test_DoctorKey0042", "whsec_DoctorSecret0042"
FAL_KEY = "key-id:FalSecret0042"
SECRETS = (SMTP_PASSWORD, "DoctorKey0042", "DoctorSecret0042", "FalSecret0042", "s3cret")
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# Every topic, in the order the doctor reports them.
TOPICS = [
    "catalog",
    "database",
    "migrations",
    "clock",
    "redis",
    "storage",
    "mail",
    "billing",
    "provider",
    "public url",
    "trusted proxies",
    "support address",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("PLASMAART_", "STRIPE_")) or name in (
            "DATABASE_URL",
            "REDIS_URL",
            "FAL_KEY",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            monkeypatch.delenv(name)
    for name, value in AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@dataclass(frozen=True)
class S3:
    endpoint: str
    client: Any

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=BUCKET)
        return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield S3(endpoint, client)
    finally:
        server.stop()


class Authenticator:
    """aiosmtpd's AUTH: one user and password."""

    def __call__(
        self,
        server: SMTP,  # noqa: ARG002
        session: Session,  # noqa: ARG002
        envelope: Envelope,  # noqa: ARG002
        mechanism: str,  # noqa: ARG002
        auth_data: Any,
    ) -> AuthResult:
        valid = isinstance(auth_data, LoginPassword) and (
            auth_data.login,
            auth_data.password,
        ) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
        # handled=False: aiosmtpd answers (235, or 535 for a refusal).
        return AuthResult(success=valid, handled=False)


def mail_server(port: int | None = None) -> tuple[Controller, Inbox]:
    """An SMTP server on a loopback port that takes LOGIN without TLS."""
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port or free_port(),
        authenticator=Authenticator(),
        auth_require_tls=False,
        # smtplib tries each mechanism offered; one is enough to be refused.
        auth_exclude_mechanism=["LOGIN"],
    )
    return controller, inbox


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, Inbox]]:
    controller, inbox = mail_server()
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def public_url(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running PlasmaArt server (on a database of its own)."""
    folder = tmp_path_factory.mktemp("served")
    shutil.copyfile(sqlite_template, folder / "served.db")
    settings = settings_for(f"sqlite:///{folder / 'served.db'}", folder / "var")
    with running_platform(settings, ManualClock()) as platform, live_server(platform) as url:
        yield url


def healthy_settings(
    database_url: str, var_dir: Path, redis_url: str, s3: S3, smtp_port: int, public_url: str
) -> dict[str, Any]:
    """The settings of a setup where everything answers."""
    return {
        "database_url": database_url,
        "var_dir": var_dir,
        "redis_url": redis_url,
        "storage": "s3",
        "s3_bucket": BUCKET,
        "s3_endpoint_url": s3.endpoint,
        "s3_region": REGION,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_starttls": False,
        "smtp_user": SMTP_USER,
        "smtp_password": SMTP_PASSWORD,
        "billing": "stripe",
        "stripe_secret_key": STRIPE_KEY,
        "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET,
        "provider": "fal",
        "fal_key": FAL_KEY,
        "public_url": public_url,
        "support_email": "help@example.com",
    }


@pytest.fixture
def healthy(
    database_url: str,
    tmp_path: Path,
    redis_url: str,
    s3: S3,
    smtp: tuple[int, Inbox],
    public_url: str,
) -> dict[str, Any]:
    """A healthy setup on each database backend."""
    return healthy_settings(database_url, tmp_path / "var", redis_url, s3, smtp[0], public_url)


@pytest.fixture
def setup(
    sqlite_template: Path,
    tmp_path: Path,
    redis_url: str,
    s3: S3,
    smtp: tuple[int, Inbox],
    public_url: str,
) -> dict[str, Any]:
    """A healthy setup on SQLite, for the checks the database does not change."""
    shutil.copyfile(sqlite_template, tmp_path / "doctor.db")
    database_url = f"sqlite:///{tmp_path / 'doctor.db'}"
    return healthy_settings(database_url, tmp_path / "var", redis_url, s3, smtp[0], public_url)


def by_topic(findings: list[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.topic, []).append(finding)
    return grouped


def run(values: dict[str, Any], **changes: Any) -> dict[str, list[Finding]]:
    findings = diagnose(Settings(**{**values, **changes}))
    said = " ".join(f"{finding.message} {finding.fix}" for finding in findings)
    for secret in SECRETS:
        assert secret not in said
    return by_topic(findings)


def broken(found: dict[str, list[Finding]], topic: str, level: str = "error") -> Finding:
    """The one finding of ``topic`` not ok (at ``level``), every other one ok."""
    others = {t: [f.level for f in fs if f.level != "ok"] for t, fs in found.items() if t != topic}
    assert others == {t: [] for t in others}, found
    [finding] = [f for f in found[topic] if f.level != "ok"]
    assert finding.level == level, finding
    assert finding.fix, finding
    return finding


def test_a_healthy_setup_is_all_ok(
    healthy: dict[str, Any], s3: S3, smtp: tuple[int, Inbox], backend: str
) -> None:
    found = run(healthy)
    assert list(found) == TOPICS
    assert {t: [f.level for f in fs if f.level != "ok"] for t, fs in found.items()} == {
        t: [] for t in TOPICS
    }
    said = {topic: " | ".join(f.message for f in fs) for topic, fs in found.items()}
    assert "answers PING (Redis " in said["redis"]
    assert said["storage"] == f"s3://{BUCKET}/: writable"
    assert said["mail"] == f"127.0.0.1:{smtp[0]}: EHLO, LOGIN as {SMTP_USER} (no mail sent)"
    assert said["public url"].endswith("/readyz: PlasmaArt answers, ready")
    assert said["billing"].startswith("stripe: test-mode key")
    assert said["clock"].startswith("SQLite" if backend == "sqlite" else "within 0.")
    # The checks leave nothing behind: no object, no mail.
    assert s3.keys() == []
    assert smtp[1].messages == []


def test_redis_stopped_is_an_error(setup: dict[str, Any]) -> None:
    with redis_server() as url:
        assert [f.level for f in run(setup, redis_url=url)["redis"]] == ["ok"]
    finding = broken(run(setup, redis_url=url), "redis")
    assert finding.message.startswith(f"{url} does not answer: ")
    assert "start Redis" in finding.fix


def test_without_redis_several_api_processes_are_warned(
    healthy: dict[str, Any], backend: str
) -> None:
    alone = run(healthy, redis_url=None)
    if backend == "sqlite":
        assert [f.level for f in alone["redis"]] == ["ok"]
    else:
        assert "the database is PostgreSQL" in broken(alone, "redis", "warning").message
    several = broken(run(healthy, redis_url=None, web_workers=3), "redis", "warning")
    assert "PLASMAART_WEB_WORKERS is 3" in several.message
    assert "rate limits" in several.message


def test_a_wrong_bucket_and_an_unreachable_s3_are_errors(setup: dict[str, Any]) -> None:
    finding = broken(run(setup, s3_bucket="no-such-bucket"), "storage")
    assert finding.message.startswith("the bucket 'no-such-bucket' does not exist at http://")
    assert finding.fix == "create the bucket 'no-such-bucket', or correct PLASMAART_S3_BUCKET"
    closed = f"http://127.0.0.1:{free_port()}"
    finding = broken(run(setup, s3_endpoint_url=closed), "storage")
    assert finding.message == f"cannot reach {closed}: no connection"
    assert "PLASMAART_S3_ENDPOINT_URL" in finding.fix


def test_an_unreachable_database_is_an_error(setup: dict[str, Any]) -> None:
    port = free_port()
    found = run(setup, database_url=f"postgresql://ops:s3cret@127.0.0.1:{port}/plasmaart")
    finding = broken(found, "database")
    assert finding.message.startswith(
        f"cannot reach the database postgresql+psycopg://ops:***@127.0.0.1:{port}/plasmaart: "
    )
    assert "Connection refused" in finding.message
    assert "start the database server" in finding.fix
    # What only the database can say is not guessed.
    assert "migrations" not in found
    assert "clock" not in found


@pytest.mark.postgres
def test_a_database_that_does_not_exist_says_so(setup: dict[str, Any], pg_admin_url: str) -> None:
    missing = pg_admin_url.rsplit("/", 1)[0] + "/no_such_database"
    finding = broken(run(setup, database_url=missing), "database")
    assert 'database "no_such_database" does not exist' in finding.message
    assert finding.fix.startswith("create the database")


def test_smtp_down_a_wrong_password_and_a_missing_starttls_are_errors(
    setup: dict[str, Any],
) -> None:
    controller, inbox = mail_server()
    controller.start()
    try:
        assert [f.level for f in run(setup, smtp_port=controller.port)["mail"]] == ["ok"]
        refused = broken(
            run(setup, smtp_port=controller.port, smtp_password="wrong-password"), "mail"
        )
        assert refused.message == (
            f"127.0.0.1:{controller.port} refuses the login of {SMTP_USER}: 535"
        )
        assert "PLASMAART_SMTP_PASSWORD" in refused.fix
        no_tls = broken(run(setup, smtp_port=controller.port, smtp_starttls=True), "mail")
        assert no_tls.message.startswith(f"127.0.0.1:{controller.port} at STARTTLS: ")
        assert "PLASMAART_SMTP_STARTTLS=false" in no_tls.fix
    finally:
        controller.stop()
    down = broken(run(setup, smtp_port=controller.port), "mail")
    assert down.message.startswith(f"127.0.0.1:{controller.port} does not answer at connect: ")
    assert "start the mail server" in down.fix
    assert inbox.messages == []


def test_a_server_that_never_answers_is_cut_short(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail server that accepts connections and says nothing: the check
    gives up after its timeout (shortened here), and the run after its deadline."""
    monkeypatch.setattr(doctor, "TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        finding = broken(run(setup, smtp_port=port), "mail")
        assert 0.5 <= time.monotonic() - started < 3
        assert finding.message.startswith(f"127.0.0.1:{port} does not answer at connect: ")
        assert "timed out" in finding.message
        monkeypatch.setattr(doctor, "TIMEOUT_S", 5.0)
        started = time.monotonic()
        found = by_topic(diagnose(Settings(**{**setup, "smtp_port": port}), deadline_s=1))
        assert time.monotonic() - started < 2
        [late] = found["mail"]
        assert (late.level, late.message) == ("error", "no answer within 1 s")


def test_a_public_url_nobody_or_something_else_answers(setup: dict[str, Any], s3: S3) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    finding = broken(run(setup, public_url=nobody), "public url", "warning")
    assert finding.message.startswith(f"nothing answers {nobody}/readyz")
    assert finding.fix.startswith("fine before the first start")
    # moto answers, but it is not PlasmaArt.
    finding = broken(run(setup, public_url=s3.endpoint), "public url")
    assert finding.message.startswith(f"{s3.endpoint}/readyz answers HTTP ")
    assert "not as PlasmaArt" in finding.message


@pytest.mark.parametrize("seconds", [-4, 5, 60])
def test_clock_skew_against_the_database(
    healthy: dict[str, Any], backend: str, seconds: int
) -> None:
    """This machine's clock shifted (the Clock the check reads) against the
    database's real one: over 1 s a warning, over half the shortest takeover
    an error. SQLite has no other clock to disagree with."""
    settings = Settings(**healthy)
    shifted = OffsetClock(SystemClock(), timedelta(seconds=seconds))
    found = by_topic(check_database(settings, shifted))
    assert [f.level for f in found["database"] + found["migrations"]] == ["ok", "ok"]
    [finding] = found["clock"]
    if backend == "sqlite":
        assert finding.level == "ok"
        return
    assert abs(seconds) <= 5 or abs(seconds) > clock_error_s(settings)
    assert finding.level == ("warning" if abs(seconds) <= 5 else "error")
    side = "behind" if seconds > 0 else "ahead of"
    assert finding.message.startswith(f"the database's clock is {abs(seconds)}.")
    assert f"s {side} this machine's" in finding.message
    assert "NTP" in finding.fix
    # The unshifted clock agrees with the database's.
    [agreed] = by_topic(check_database(settings, SystemClock()))["clock"]
    assert agreed.level == "ok"


# -- the command -------------------------------------------------------------------


def doctor_process(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "plasmaart.cli", "doctor", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def command_env(database_url: str, var_dir: Path, **settings: str) -> dict[str, str]:
    """A child process's environment: the test's database, the offline AWS
    credentials, this checkout's sources, a 100-column terminal."""
    env = child_env(database_url, var_dir)
    env.update(AWS_ENVIRONMENT)
    env["PYTHONPATH"] = str(Path(plasmaart.__file__).resolve().parents[1])
    env["COLUMNS"] = "100"
    env.update(settings)
    return env


def test_the_command_on_a_healthy_setup_prints_one_table_and_exits_0(
    healthy: dict[str, Any], database_url: str, tmp_path: Path
) -> None:
    env = command_env(
        database_url,
        tmp_path / "var",
        REDIS_URL=healthy["redis_url"],
        PLASMAART_STORAGE="s3",
        PLASMAART_S3_BUCKET=BUCKET,
        PLASMAART_S3_ENDPOINT_URL=healthy["s3_endpoint_url"],
        PLASMAART_S3_REGION=REGION,
        PLASMAART_SMTP_HOST="127.0.0.1",
        PLASMAART_SMTP_PORT=str(healthy["smtp_port"]),
        PLASMAART_SMTP_STARTTLS="false",
        PLASMAART_SMTP_USER=SMTP_USER,
        PLASMAART_SMTP_PASSWORD=SMTP_PASSWORD,
        PLASMAART_BILLING="stripe",
        STRIPE_SECRET_KEY=STRIPE_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        PLASMAART_PROVIDER="fal",
        FAL_KEY=FAL_KEY,
        PLASMAART_PUBLIC_URL=healthy["public_url"],
        PLASMAART_SUPPORT_EMAIL="help@example.com",
    )
    code, out, _took = doctor_process(env, tmp_path)
    assert code == 0, out
    rows, summary = parse_table(out)
    assert summary == "all good"
    assert list(levels(rows)) == TOPICS
    assert {row.status for row in rows} == {"ok"}
    assert max(len(line) for line in out.splitlines()) <= 100
    for secret in SECRETS:
        assert secret not in out


def test_the_command_with_everything_broken_is_quick_and_exits_1(s3: S3, tmp_path: Path) -> None:
    """Nothing answers (closed ports), the bucket is wrong, a secret is not
    one: every row says so, within seconds rather than the sum of timeouts."""
    closed = [free_port() for _ in range(4)]
    broken_settings = {
        "REDIS_URL": f"redis://127.0.0.1:{closed[1]}/0",
        "PLASMAART_STORAGE": "s3",
        "PLASMAART_S3_BUCKET": "no-such-bucket",
        "PLASMAART_S3_ENDPOINT_URL": s3.endpoint,
        "PLASMAART_S3_REGION": REGION,
        "PLASMAART_SMTP_HOST": "127.0.0.1",
        "PLASMAART_SMTP_PORT": str(closed[2]),
        "PLASMAART_SMTP_PASSWORD": SMTP_PASSWORD,
        "PLASMAART_BILLING": "stripe",
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": "DoctorSecret0042",
        "PLASMAART_PUBLIC_URL": f"http://127.0.0.1:{closed[3]}",
        "PLASMAART_SUPPORT_EMAIL": "help@example.com",
    }
    database_url = f"postgresql://ops:s3cret@127.0.0.1:{closed[0]}/plasmaart"
    env = command_env(database_url, tmp_path / "var", **broken_settings)
    code, out, took = doctor_process(env, tmp_path)
    assert code == 1, out
    assert took < 10
    rows, summary = parse_table(out)
    assert summary == "5 errors, 1 warning"
    found = levels(rows)
    assert {topic: found[topic] for topic in ("database", "redis", "storage", "mail")} == {
        topic: ["error"] for topic in ("database", "redis", "storage", "mail")
    }
    assert found["billing"] == ["ok", "error"]
    assert found["public url"] == ["warning"]
    assert max(len(line) for line in out.splitlines()) <= 100
    for secret in SECRETS:
        assert secret not in out
    # The same for scripts, and a setting that does not parse: exit code 2.
    runner = CliRunner()
    env["DATABASE_URL"] = database_url
    result = runner.invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["errors"], report["warnings"]) == (5, 1)
    assert [check["status"] for check in report["checks"]] == [row.status for row in rows]
    assert all(check["fix"] for check in report["checks"] if check["status"] != "ok")
    env["PLASMAART_SMTP_PORT"] = "not-a-port"
    result = runner.invoke(app, ["doctor"], env=env)
    assert result.exit_code == 2
    assert result.output.startswith("error: invalid configuration:")
    assert "PLASMAART_SMTP_PORT" in result.output


@pytest.fixture(scope="module")
def untrusted_https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An https server on 127.0.0.1 with a self-signed certificate (no CA of
    this machine signed it), answering every GET with 404; and its certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_public_url_with_an_untrusted_certificate_is_an_error(
    setup: dict[str, Any], untrusted_https: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = untrusted_https
    finding = broken(run(setup, public_url=url), "public url")
    assert finding.message.startswith(f"{url}/readyz: the TLS certificate is not trusted: ")
    assert "caddy trust" in finding.fix
    # Trusted (the way `caddy trust` or a CA bundle does it), the server is
    # reached, and found not to be PlasmaArt.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    finding = broken(run(setup, public_url=url), "public url")
    assert finding.message.startswith(f"{url}/readyz answers HTTP 404, but not as PlasmaArt")

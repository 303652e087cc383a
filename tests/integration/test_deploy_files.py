"""The files of ``deploy/`` checked by the tools that will read them:
``systemd-analyze verify`` for the units, ``caddy validate`` (and ``caddy
fmt``) for the Caddyfile, ``nginx -t`` for the nginx example, and the
environment file template against ``Settings``: a setting without its line
fails here."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plasmaart.config import Settings, env_name, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = DEPLOY / "systemd"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
CADDY = "/usr/bin/caddy"
NGINX = "/usr/sbin/nginx"
PLASMAART = "/opt/plasmaart/venv/bin/plasmaart"
ENV_FILE = "/etc/plasmaart/plasmaart.env"
VAR_DIR = "/var/lib/plasmaart"
# Variables of the template that are not PlasmaArt settings: boto3's.
NOT_SETTINGS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
_ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """A unit file as section -> key -> every value given (keys may repeat)."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        unit[section][key.strip()].append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units in a root of their own (systemd's own units copied in, and
    the paths they run), so that verify checks every key and dependency."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, installed / unit.name)
    executable = root / PLASMAART.lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    names = ["plasmaart-api.service", "plasmaart-migrate.service", "plasmaart-worker@1.service"]
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", *(str(installed / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values, but says so on stderr.
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("name", ["plasmaart-api.service", "plasmaart-worker@.service"])
def test_the_long_running_units_restart_and_stop_gracefully(name: str) -> None:
    unit = parse_unit(UNITS / name)
    service = unit["Service"]
    command = one(unit, "Service", "ExecStart").split()
    assert command[0] == PLASMAART
    assert command[1] == ("serve" if name.startswith("plasmaart-api") else "worker")
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert "plasmaart-migrate.service" in one(unit, "Unit", "After").split()
    assert "plasmaart-migrate.service" in one(unit, "Unit", "Wants").split()
    # systemd kills only after the process had its own deadline in full.
    setting = "shutdown_timeout_s" if name.startswith("plasmaart-api") else "worker_drain_s"
    deadline = Settings.model_fields[setting].default
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= deadline + 10
    if name.startswith("plasmaart-api"):
        assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
        assert "--no-worker" not in command  # PLASMAART_EMBEDDED_WORKER decides
    assert service["WantedBy"] == []  # in [Install], not [Service]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize(
    "unit_file", sorted(UNITS.glob("plasmaart-*.service")), ids=lambda path: path.name
)
def test_every_unit_is_hardened(unit_file: Path) -> None:
    unit = parse_unit(unit_file)
    expected = {
        "User": "plasmaart",
        "EnvironmentFile": ENV_FILE,
        "WorkingDirectory": VAR_DIR,
        "StateDirectory": "plasmaart",
        "ReadWritePaths": VAR_DIR,
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    if unit_file.name == "plasmaart-migrate.service":
        assert one(unit, "Service", "Type") == "oneshot"
        assert one(unit, "Service", "ExecStart") == f"{PLASMAART} migrate"


def template_names() -> set[str]:
    names = set()
    for line in (DEPLOY / "plasmaart.env.example").read_text().splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            names.add(match[2])
    return names


def test_the_environment_template_names_every_setting() -> None:
    settings = {env_name(field) for field in Settings.model_fields}
    named = template_names()
    assert sorted(settings - named) == [], "settings without a line in plasmaart.env.example"
    assert sorted(named - settings - NOT_SETTINGS) == [], "lines that are no setting"


def test_the_environment_template_is_a_valid_production_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its active lines load as they are; each is set once."""
    active: dict[str, str] = {}
    for line in (DEPLOY / "plasmaart.env.example").read_text().splitlines():
        match = _ASSIGNMENT.match(line)
        if match and not match[1]:
            assert match[2] not in active, f"{match[2]} is set twice"
            active[match[2]] = match[3]
    for name in list(os.environ):
        if name.startswith("PLASMAART_") or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    for name, value in active.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.var_dir == Path(VAR_DIR)
    assert settings.database_url == f"sqlite:///{VAR_DIR}/plasmaart.db"
    assert settings.public_base_url.startswith("https://")
    assert settings.embedded_worker is False
    assert settings.auto_migrate is False
    assert settings.log_format == "json"
    assert settings.webhooks_allow_private is False
    assert settings.support_email != Settings.model_fields["support_email"].default


def caddy_env(tmp_path: Path) -> dict[str, str]:
    hashed = subprocess.run(
        [CADDY, "hash-password", "--plaintext", "scrape-me"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PLASMAART_DOMAIN": "art.example.com",
        "PLASMAART_ACME_EMAIL": "ops@example.com",
        "PLASMAART_UPSTREAMS": "10.0.0.11:8000 10.0.0.12:8000",
        "PLASMAART_METRICS_USER": "prometheus",
        "PLASMAART_METRICS_HASH": hashed,
    }


def test_the_caddyfile_validates_and_is_formatted(tmp_path: Path) -> None:
    env = caddy_env(tmp_path)
    caddyfile = str(DEPLOY / "Caddyfile")
    checked = subprocess.run(
        [CADDY, "validate", "--config", caddyfile, "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "Valid configuration" in checked.stdout
    assert "not formatted" not in checked.stderr
    # The JSON Caddy runs: both upstreams, unbuffered, health-checked, retried.
    adapted = subprocess.run(
        [CADDY, "adapt", "--config", caddyfile, "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    for expected in (
        '"dial":"10.0.0.11:8000"',
        '"dial":"10.0.0.12:8000"',
        '"flush_interval":-1',
        '"uri":"/readyz"',
        '"try_duration":15000000000',
        '"max_size":11534336',
        '"host":["art.example.com"]',
        '"path":["/metrics"]',
        # A new connection per request: none is sent on one a stopping process closes.
        '"keep_alive":{"enabled":false}',
    ):
        assert expected in adapted.replace(" ", ""), expected
    # No passive health checks: one cut request would refuse every POST for a while.
    assert "fail_duration" not in adapted


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "art.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_the_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    """The site file included in a minimal nginx.conf, its certificate and
    log paths pointed into the test's folder."""
    cert, key = self_signed(tmp_path)
    site = (DEPLOY / "nginx/plasmaart.conf").read_text()
    live = "/etc/letsencrypt/live/art.example.com/"
    assert f"{live}fullchain.pem" in site
    assert f"{live}privkey.pem" in site
    site = site.replace(f"{live}fullchain.pem", str(cert)).replace(f"{live}privkey.pem", str(key))
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "plasmaart.conf").write_text(site)
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"  access_log {tmp_path}/access.log;\n"
        f"  client_body_temp_path {temp['body']};\n"
        f"  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        f"  include {tmp_path}/plasmaart.conf;\n"
        "}\n"
    )
    done = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    assert "[warn]" not in done.stderr, done.stderr
    # SSE unbuffered on the events route, the body limit the API's.
    events = site[site.index("location = /v1/events") :]
    assert "proxy_buffering off;" in events[: events.index("}")]
    assert "client_max_body_size 11m;" in site


def test_the_admin_wrapper_is_valid_shell() -> None:
    done = subprocess.run(
        ["sh", "-n", str(DEPLOY / "plasmaart-admin")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr

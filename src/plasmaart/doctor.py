"""``plasmaart doctor``: what a setup still lacks before it serves customers.

Each check gives findings: ``ok``, ``warning`` (works, but probably not what a
production setup wants) or ``error`` (it will not work), each with what to do
about it. Checks read the settings and touch only what they check: the
database is asked its version, schema revision and clock (a SQLite file that
does not exist yet is left uncreated), the media storage gets one small
object written and deleted, Redis is pinged, the SMTP server greeted (no mail
is sent), the public URL asked for ``/readyz``.

Every check that leaves the process has a short timeout, and the checks run
at once, so a run stays a few seconds even when nothing answers; a check
still running at ``DEADLINE_S`` is reported as an error. No secret is ever
part of a finding: URLs have their passwords masked and keys are described
by their prefix only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import smtplib
import ssl
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, urlsplit

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from plasmaart.catalog import CatalogError, load_catalog
from plasmaart.clock import Clock, SystemClock
from plasmaart.config import ConfigError, Settings
from plasmaart.db.engine import Database, create_database, normalise_url
from plasmaart.db.migrate import (
    database_revision,
    describe_database,
    head_revision,
    known_revisions,
    unreachable,
)
from plasmaart.db.probes import clock_offset, server_version

Level = Literal["ok", "warning", "error"]

# PlasmaArt's own support address (the policy's contact): a deployment that
# sells to its own customers answers them at its own address.
DEFAULT_SUPPORT_EMAIL: str = str(Settings.model_fields["support_email"].default)

# How long one network step (connect, a read) may take, and the whole run.
TIMEOUT_S = 3.0
DEADLINE_S = 8.0
# A clock this far from the database's is not synchronised (NTP keeps clocks
# within milliseconds). The error threshold is half the shortest time-based
# takeover (idempotency keys, job leases): two machines each within it of the
# database are within the takeover of each other.
CLOCK_WARNING_S = 1.0
STRIPE_API = "https://api.stripe.com"
FAL_WEBHOOK_PATH = "/v1/webhooks/fal"


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str
    message: str
    # What to do about it; empty when nothing needs doing.
    fix: str = ""


# -- what kind of setup this is -------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    if not host:
        return True
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _exposure(settings: Settings, host: str | None = None) -> list[str]:
    """Why people reach this setup from other machines (empty: this one only)."""
    reasons = []
    listen = host if host is not None else settings.host
    if not _is_loopback(listen):
        reasons.append(f"it listens on {listen}, not only on this machine")
    if settings.public_url and not _is_loopback(urlsplit(settings.public_url).hostname):
        reasons.append(f"its public URL is {settings.public_url}")
    if settings.stripe_return_url and not _is_loopback(
        urlsplit(settings.stripe_return_url).hostname
    ):
        reasons.append(f"customers come back to {settings.stripe_return_url}")
    return reasons


def public_reasons(settings: Settings, *, host: str | None = None) -> list[str]:
    """Why this setup looks like a production one (empty: a local trial)."""
    reasons = ["billing is stripe"] if settings.billing == "stripe" else []
    return reasons + _exposure(settings, host)


def support_address_warning(settings: Settings, *, host: str | None = None) -> str | None:
    """The warning for a production setup still answering at PlasmaArt's
    default support address; None when it set its own or is a local trial."""
    if settings.support_email.strip().casefold() != DEFAULT_SUPPORT_EMAIL.casefold():
        return None
    reasons = public_reasons(settings, host=host)
    if not reasons:
        return None
    return (
        f"PLASMAART_SUPPORT_EMAIL is still PlasmaArt's default ({DEFAULT_SUPPORT_EMAIL}) "
        f"while {' and '.join(reasons)}: suspended customers, e-mails and the dashboard "
        "send your customers there"
    )


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


# -- checks of the settings alone ------------------------------------------------


def check_support_address(settings: Settings) -> list[Finding]:
    warning = support_address_warning(settings)
    if warning:
        return [
            Finding(
                "warning",
                "support address",
                warning,
                "set PLASMAART_SUPPORT_EMAIL to the address your customers should write to",
            )
        ]
    return [Finding("ok", "support address", settings.support_email)]


def check_catalog(settings: Settings) -> list[Finding]:
    try:
        catalog = load_catalog(settings.catalog_file)
    except CatalogError as exc:
        return [
            Finding(
                "error",
                "catalog",
                str(exc),
                "correct the catalog file, or unset PLASMAART_CATALOG_FILE for the packaged one",
            )
        ]
    source = settings.catalog_file or "the packaged catalog"
    return [
        Finding(
            "ok",
            "catalog",
            f"{source}: {len(catalog.models)} models, {len(catalog.plans)} plans, "
            f"{len(catalog.credit_packs)} credit packs",
        )
    ]


def _stripe_key_mode(key: str) -> Literal["live", "test"] | None:
    if key.startswith(("sk_live_", "rk_live_")):
        return "live"
    if key.startswith(("sk_test_", "rk_test_")):
        return "test"
    return None


def check_billing(settings: Settings) -> list[Finding]:
    """Stripe's keys: present, of the right kind, and in the mode the setup
    looks like (a live key charges real cards, a test key none)."""
    if settings.billing == "sandbox":
        return [Finding("ok", "billing", "sandbox: payments succeed offline, nothing is charged")]
    findings = []
    key = settings.stripe_secret_key or ""
    mode = _stripe_key_mode(key)
    if not key:
        findings.append(
            Finding(
                "error",
                "billing",
                "STRIPE_SECRET_KEY is not set (required with billing stripe)",
                "set STRIPE_SECRET_KEY to a secret key (sk_live_… or a restricted rk_live_…) "
                "from the Stripe dashboard's API keys page",
            )
        )
    elif mode is None:
        kind = "a publishable key" if key.startswith("pk_") else "not a Stripe secret key"
        findings.append(
            Finding(
                "error",
                "billing",
                f"STRIPE_SECRET_KEY is {kind} (it starts with {key[:3]!r}; "
                "secret keys start with sk_live_, sk_test_, rk_live_ or rk_test_)",
                "set the secret key from the Stripe dashboard's API keys page, not the "
                "publishable one",
            )
        )
    elif mode == "live":
        sandboxy = []
        if settings.provider == "sandbox":
            sandboxy.append("the provider is the sandbox (customers would pay for placeholders)")
        if settings.stripe_api_base.rstrip("/") != STRIPE_API:
            sandboxy.append(
                f"PLASMAART_STRIPE_API_BASE is {settings.stripe_api_base}, not Stripe's API"
            )
        if _is_loopback(urlsplit(settings.public_base_url).hostname):
            sandboxy.append(
                f"customers are sent back to {settings.public_base_url}, this machine only"
            )
        if sandboxy:
            findings.append(
                Finding(
                    "warning",
                    "billing",
                    "STRIPE_SECRET_KEY is a live key, which charges real cards, while "
                    + "; ".join(sandboxy),
                    "use a test key (sk_test_…) until the setup is ready for customers, or "
                    "finish it: PLASMAART_PROVIDER=fal, PLASMAART_PUBLIC_URL",
                )
            )
        else:
            findings.append(Finding("ok", "billing", "stripe: live key, real cards are charged"))
    else:
        exposed = _exposure(settings)
        if exposed:
            findings.append(
                Finding(
                    "warning",
                    "billing",
                    "STRIPE_SECRET_KEY is a test-mode key, so no real payment is taken, "
                    f"while {' and '.join(exposed)}",
                    "set the live key (sk_live_…) and the live webhook's secret before "
                    "customers pay",
                )
            )
        else:
            findings.append(
                Finding("ok", "billing", "stripe: test-mode key, no real card is charged")
            )
    secret = settings.stripe_webhook_secret or ""
    if not secret:
        findings.append(
            Finding(
                "error",
                "billing",
                "STRIPE_WEBHOOK_SECRET is not set (required with billing stripe): "
                "no payment would be credited",
                f"add a webhook endpoint {settings.public_base_url}/v1/webhooks/stripe in the "
                "Stripe dashboard and set its signing secret (whsec_…)",
            )
        )
    elif not secret.startswith("whsec_"):
        findings.append(
            Finding(
                "error",
                "billing",
                "STRIPE_WEBHOOK_SECRET does not start with whsec_: every webhook's "
                "signature would be refused, and no payment credited",
                "set the endpoint's signing secret (whsec_…) from the Stripe dashboard's "
                "webhook page, not an API key",
            )
        )
    else:
        findings.append(Finding("ok", "billing", "stripe: webhook signing secret set"))
    return findings


def check_provider(settings: Settings) -> list[Finding]:
    if settings.provider == "sandbox":
        return [Finding("ok", "provider", "sandbox: media made offline, no model is called")]
    if not settings.fal_key:
        return [
            Finding(
                "error",
                "provider",
                "FAL_KEY is not set (required with provider fal)",
                "create a key at fal.ai (dashboard, API keys) and set FAL_KEY",
            )
        ]
    findings = [Finding("ok", "provider", "fal: FAL_KEY set")]
    hook = settings.fal_webhook_url
    if hook is None:
        findings.append(
            Finding(
                "ok",
                "provider",
                f"fal webhooks off: the worker polls fal for each job "
                f"(PLASMAART_FAL_WEBHOOK_URL={settings.public_base_url}{FAL_WEBHOOK_PATH} "
                "lets fal say when a job is done)",
            )
        )
        return findings
    parts = urlsplit(hook)
    expected = f"{settings.public_base_url}{FAL_WEBHOOK_PATH}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        findings.append(
            Finding(
                "error",
                "provider",
                f"PLASMAART_FAL_WEBHOOK_URL {hook!r} is not an http(s) URL",
                f"set it to {expected}",
            )
        )
    elif not parts.path.rstrip("/").endswith(FAL_WEBHOOK_PATH):
        findings.append(
            Finding(
                "error",
                "provider",
                f"PLASMAART_FAL_WEBHOOK_URL {hook} is not PlasmaArt's fal webhook "
                f"(its path must end with {FAL_WEBHOOK_PATH}): fal's calls would be lost",
                f"set it to {expected}",
            )
        )
    elif _is_loopback(parts.hostname) or _is_private(parts.hostname):
        findings.append(
            Finding(
                "warning",
                "provider",
                f"PLASMAART_FAL_WEBHOOK_URL {hook} is not reachable from the internet, "
                f"so fal cannot call it; jobs finish only by polling every "
                f"{settings.fal_poll_interval_s:g} s",
                "set it to this server's public address, or unset it to poll fal every 0.25 s",
            )
        )
    elif parts.scheme != "https":
        findings.append(
            Finding(
                "warning",
                "provider",
                f"PLASMAART_FAL_WEBHOOK_URL {hook} is plain http: the results travel unencrypted",
                "serve it over https (behind the TLS proxy)",
            )
        )
    else:
        findings.append(Finding("ok", "provider", f"fal webhooks: {hook}"))
    return findings


def _is_private(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return False
    return address.is_private or address.is_link_local


def check_trusted_proxies(settings: Settings) -> list[Finding]:
    """PLASMAART_TRUSTED_PROXIES: the settings refuse anything but IPs, CIDR
    networks or ``*`` (exit code 2); what is left to judge is trusting any
    peer on an address the network reaches."""
    entries = settings.trusted_proxies.split(",")
    if entries == ["*"]:
        if not _is_loopback(settings.host):
            return [
                Finding(
                    "warning",
                    "trusted proxies",
                    f"PLASMAART_TRUSTED_PROXIES is * while it listens on {settings.host}: "
                    "any client can claim any address and scheme (X-Forwarded-For), "
                    "and dodge its rate limits",
                    "list the proxy's addresses, or listen on 127.0.0.1 behind the proxy",
                )
            ]
        return [Finding("ok", "trusted proxies", "* (it listens on this machine only)")]
    return [Finding("ok", "trusted proxies", ", ".join(entries))]


# -- checks of the dependencies ---------------------------------------------------


def _auto_migrates(settings: Settings, sqlite: bool) -> bool:
    return settings.auto_migrate if settings.auto_migrate is not None else sqlite


def _with_connect_timeout(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return url
    timeout = str(max(1, round(TIMEOUT_S)))
    return parsed.update_query_dict({"connect_timeout": timeout}).render_as_string(
        hide_password=False
    )


def _database_fix(reason: str) -> str:
    lowered = reason.casefold()
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        return "correct the user or password in DATABASE_URL"
    if "does not exist" in lowered:
        return "create the database (createdb) or correct its name in DATABASE_URL"
    return (
        "start the database server, or correct the host and port in DATABASE_URL; "
        "check that this machine may connect (firewall, pg_hba.conf)"
    )


def check_database(settings: Settings, clock: Clock | None = None) -> list[Finding]:
    """The database answers, its schema is the one this code needs, and its
    clock agrees with this machine's."""
    url = normalise_url(settings.database_url)
    name = describe_database(url)
    sqlite = url.startswith("sqlite")
    auto = _auto_migrates(settings, sqlite)
    if sqlite:
        path = make_url(url).database
        if path and not Path(path).exists():
            if auto:
                return [Finding("ok", "database", f"{name}: made and migrated at start-up")]
            return [
                Finding(
                    "error",
                    "database",
                    f"{name} does not exist and PLASMAART_AUTO_MIGRATE is off",
                    "run `plasmaart migrate`",
                )
            ]
    try:
        db = create_database(
            _with_connect_timeout(url),
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pool_size=1,
            group_commit=False,
        )
    except OSError as exc:
        message = str(unreachable(url, exc))
        return [Finding("error", "database", message, _database_fix(message))]
    try:
        try:
            version = server_version(db)
        except SQLAlchemyError as exc:
            message = str(unreachable(url, exc))
            return [Finding("error", "database", message, _database_fix(message))]
        kind = "SQLite" if sqlite else "PostgreSQL"
        return [
            Finding("ok", "database", f"{name}: answers ({kind} {version})"),
            _check_migrations(db, auto),
            _check_clock(db, settings, clock or SystemClock(), sqlite),
        ]
    finally:
        db.dispose()


def _check_migrations(db: Database, auto: bool) -> Finding:
    current = database_revision(db)
    head = head_revision()
    if current == head:
        return Finding("ok", "migrations", f"at the head ({head})")
    if current is not None and current not in known_revisions():
        return Finding(
            "error",
            "migrations",
            f"at revision {current}, which this version of PlasmaArt does not know "
            f"(it needs {head}): a newer version migrated it",
            "run the newer PlasmaArt version, or restore a backup taken before the upgrade",
        )
    if auto:
        return Finding(
            "ok",
            "migrations",
            f"at {current or 'no revision'}: migrated to {head} at start-up (auto-migrate)",
        )
    return Finding(
        "error",
        "migrations",
        f"not migrated: at {current or 'no revision'}, this version needs {head}",
        "run `plasmaart migrate` (or PLASMAART_AUTO_MIGRATE=true to migrate at start-up)",
    )


def clock_error_s(settings: Settings) -> float:
    """The clock skew that breaks takeovers: half the shortest of them."""
    return min(settings.idempotency_takeover_s, settings.job_lease_s) / 2


def _check_clock(db: Database, settings: Settings, clock: Clock, sqlite: bool) -> Finding:
    if sqlite:
        return Finding("ok", "clock", "SQLite: a file on this machine, read with its clock")
    reading = clock_offset(db, clock.now)
    # At least this far apart, whichever moment of the round trip the database read.
    skew = max(0.0, abs(reading.offset_s) - reading.round_trip_s / 2)
    side = "ahead of" if reading.offset_s > 0 else "behind"
    described = (
        f"the database's clock is {abs(reading.offset_s):.1f} s {side} this machine's "
        f"(round trip {reading.round_trip_s * 1000:.0f} ms)"
    )
    fix = (
        "synchronise the clocks of this machine and the database server with NTP "
        "(`timedatectl set-ntp true`, or chrony)"
    )
    limit = clock_error_s(settings)
    if skew > limit:
        return Finding(
            "error",
            "clock",
            f"{described}: over {limit:g} s, so processes take over each other's "
            "jobs and requests too early, and expiries drift",
            fix,
        )
    if skew > CLOCK_WARNING_S:
        return Finding("warning", "clock", f"{described}: over {CLOCK_WARNING_S:g} s", fix)
    return Finding(
        "ok",
        "clock",
        f"within {max(abs(reading.offset_s), reading.round_trip_s / 2):.3f} s of the database's",
    )


def check_redis(settings: Settings) -> list[Finding]:
    """REDIS_URL answers PING; unset, say whether several processes each keep
    their own rate limits."""
    sqlite = normalise_url(settings.database_url).startswith("sqlite")
    if not settings.redis_url:
        several = []
        if settings.web_workers > 1:
            several.append(f"PLASMAART_WEB_WORKERS is {settings.web_workers}")
        if not sqlite:
            several.append("the database is PostgreSQL, so several machines may serve")
        if several:
            return [
                Finding(
                    "warning",
                    "redis",
                    "REDIS_URL is not set while "
                    + " and ".join(several)
                    + ": each API process counts rate limits and copies of a prompt on "
                    "its own, so a client gets the limit once per process",
                    "run Redis and set REDIS_URL=redis://HOST:6379/0",
                )
            ]
        return [Finding("ok", "redis", "not set: one API process counts rate limits in memory")]
    import redis
    from redis.exceptions import AuthenticationError, RedisError

    where = mask_url(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
    )
    try:
        client.ping()
        info = client.info("server")
    except AuthenticationError as exc:
        return [
            Finding(
                "error",
                "redis",
                f"{where} refuses the credentials: {_one_line(exc)}",
                "correct the user or password in REDIS_URL",
            )
        ]
    except (RedisError, OSError) as exc:
        return [
            Finding(
                "error",
                "redis",
                f"{where} does not answer: {_one_line(exc)}; rate limits fail open, so "
                "nothing is limited",
                "start Redis (systemctl start redis-server) or correct REDIS_URL",
            )
        ]
    finally:
        client.close()
    return [Finding("ok", "redis", f"{where}: answers PING (Redis {info.get('redis_version')})")]


def _storage_failure(settings: Settings, exc: Exception) -> tuple[str, str]:
    """What went wrong writing to the bucket, and the fix, from botocore's
    exception (by name: its classes are untyped)."""
    bucket = settings.s3_bucket
    endpoint = settings.s3_endpoint_url or f"AWS S3 ({settings.s3_region or 'default region'})"
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    if code == "NoSuchBucket":
        return (
            f"the bucket {bucket!r} does not exist at {endpoint}",
            f"create the bucket {bucket!r}, or correct PLASMAART_S3_BUCKET",
        )
    if code in ("AccessDenied", "Forbidden", "403", "AllAccessDisabled"):
        return (
            f"the credentials may not write to the bucket {bucket!r}: {_one_line(exc)}",
            "grant these credentials s3:PutObject, s3:GetObject and s3:DeleteObject on "
            f"arn:aws:s3:::{bucket}/*",
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return (
            f"{endpoint} refuses the credentials ({code})",
            "correct AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile or role)",
        )
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"):
        return (
            f"the bucket {bucket!r} is in another region: {_one_line(exc)}",
            "set PLASMAART_S3_REGION to the bucket's region",
        )
    if name == "NoCredentialsError":
        return (
            "no S3 credentials found",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the machine a profile "
            "or role",
        )
    if name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "SSLError",
    ) or isinstance(exc, OSError):
        # botocore's words name the probe's object: say no more than the endpoint.
        reason = "no connection" if name == "EndpointConnectionError" else _one_line(exc)
        return (
            f"cannot reach {endpoint}: {reason}",
            "start the S3 service or correct PLASMAART_S3_ENDPOINT_URL (unset it for AWS "
            "itself); check DNS and the firewall",
        )
    return (f"s3://{bucket} is not writable: {_one_line(exc)}", "check the bucket and its policy")


def check_storage(settings: Settings) -> list[Finding]:
    from plasmaart.media.storage import LocalStorage, S3Storage, Storage

    if settings.storage == "local" and not settings.media_dir.exists():
        # Made at the first output; check the folder it will be made in.
        parent = settings.media_dir.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return [Finding("ok", "storage", f"{settings.media_dir}: made at the first output")]
        return [
            Finding(
                "error",
                "storage",
                f"{settings.media_dir} cannot be made: {parent} is not writable",
                f"make {settings.media_dir} writable by the user PlasmaArt runs as, or set "
                "PLASMAART_STORAGE_DIR",
            )
        ]
    key = f"doctor/{uuid.uuid4().hex}.txt"
    if settings.storage == "s3":
        where = f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        try:
            storage: Storage = S3Storage(
                settings.s3_bucket or "",
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
                prefix=settings.s3_prefix,
                connect_timeout_s=TIMEOUT_S,
                read_timeout_s=TIMEOUT_S,
                max_attempts=1,
            )
            storage.put(key, b"plasmaart doctor", "text/plain")
            storage.delete(key)
        except Exception as exc:
            message, fix = _storage_failure(settings, exc)
            return [Finding("error", "storage", message, fix)]
        return [Finding("ok", "storage", f"{where}: writable")]
    try:
        storage = LocalStorage(settings.media_dir)
        storage.put(key, b"plasmaart doctor", "text/plain")
        storage.delete(key)
        # No other key lives under doctor/: leave no empty folder behind.
        for folder in (settings.media_dir / "doctor", settings.media_dir / ".meta" / "doctor"):
            with contextlib.suppress(OSError):
                folder.rmdir()
    except Exception as exc:
        return [
            Finding(
                "error",
                "storage",
                f"{settings.media_dir} is not writable: {_one_line(exc)}",
                f"make {settings.media_dir} a folder writable by the user PlasmaArt runs as, "
                "or set PLASMAART_STORAGE_DIR",
            )
        ]
    return [Finding("ok", "storage", f"{settings.media_dir}: writable")]


def check_mail(settings: Settings) -> list[Finding]:
    """An SMTP conversation up to the point of sending: connect, EHLO,
    STARTTLS when configured, LOGIN when a user is set, QUIT."""
    host, port = settings.smtp_host, settings.smtp_port
    if not host:
        reasons = public_reasons(settings)
        if reasons:
            return [
                Finding(
                    "warning",
                    "mail",
                    "PLASMAART_SMTP_HOST is not set while "
                    + " and ".join(reasons)
                    + f": mail is only written to {settings.mail_dir}, so password resets "
                    "and receipts never reach customers",
                    "set PLASMAART_SMTP_HOST (and _PORT, _USER, _PASSWORD) to your mail relay",
                )
            ]
        return [Finding("ok", "mail", f"no SMTP server: mail is written to {settings.mail_dir}")]
    where = f"{host}:{port}"
    port_hint = (
        " (port 465 expects TLS from the first byte, which PlasmaArt does not speak: "
        "use 587 with STARTTLS)"
        if port == 465
        else ""
    )
    steps = ["EHLO"]
    step = "connect"
    try:
        with smtplib.SMTP(timeout=TIMEOUT_S) as smtp:
            smtp.connect(host, port)
            step = "EHLO"
            code, _ = smtp.ehlo()
            if not 200 <= code < 300:
                raise smtplib.SMTPHeloError(code, b"EHLO refused")
            if settings.smtp_starttls:
                step = "STARTTLS"
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
                steps.append("STARTTLS")
            if settings.smtp_user:
                step = "LOGIN"
                password = (
                    settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                )
                smtp.login(settings.smtp_user, password)
                steps.append(f"LOGIN as {settings.smtp_user}")
            step = "QUIT"
    except smtplib.SMTPAuthenticationError as exc:
        return [
            Finding(
                "error",
                "mail",
                f"{where} refuses the login of {settings.smtp_user}: {exc.smtp_code}",
                "correct PLASMAART_SMTP_USER and PLASMAART_SMTP_PASSWORD",
            )
        ]
    except smtplib.SMTPNotSupportedError as exc:
        if step == "STARTTLS":
            fix = (
                "use a server that offers STARTTLS, or PLASMAART_SMTP_STARTTLS=false "
                "(only on a network you trust)"
            )
        else:
            fix = (
                "unset PLASMAART_SMTP_USER if the server needs no login, or use its submission port"
            )
        return [Finding("error", "mail", f"{where} at {step}: {_one_line(exc)}", fix)]
    except ssl.SSLError as exc:
        return [
            Finding(
                "error",
                "mail",
                f"{where}: the TLS handshake failed at {step}: {_one_line(exc)}",
                "give the mail server a certificate this machine trusts, and name it by the "
                "host its certificate names",
            )
        ]
    except (OSError, smtplib.SMTPException) as exc:
        return [
            Finding(
                "error",
                "mail",
                f"{where} does not answer at {step}: {_one_line(exc)}{port_hint}",
                "start the mail server or correct PLASMAART_SMTP_HOST and PLASMAART_SMTP_PORT",
            )
        ]
    return [Finding("ok", "mail", f"{where}: " + ", ".join(steps) + " (no mail sent)")]


def _public_url_form(settings: Settings, parts: SplitResult) -> Finding | None:
    url = settings.public_url
    if not parts.hostname:
        return Finding(
            "error",
            "public url",
            f"PLASMAART_PUBLIC_URL {url!r} names no host",
            "set it to the address customers use, e.g. https://art.example.com",
        )
    if parts.query or parts.fragment:
        return Finding(
            "error",
            "public url",
            f"PLASMAART_PUBLIC_URL {url} has a query or fragment: links are made by "
            "appending paths to it",
            f"set it to {parts.scheme}://{parts.netloc}{parts.path}",
        )
    return None


def check_public_url(settings: Settings) -> list[Finding]:
    """PLASMAART_PUBLIC_URL: well formed, https where customers reach it, and
    answered by a PlasmaArt server (its ``/readyz``) from this machine."""
    url = settings.public_url
    if not url:
        exposed = _exposure(settings)
        if exposed:
            return [
                Finding(
                    "warning",
                    "public url",
                    f"PLASMAART_PUBLIC_URL is not set while {' and '.join(exposed)}: links in "
                    f"mails, webhooks and signed URLs point at {settings.public_base_url}",
                    "set PLASMAART_PUBLIC_URL to the https address customers use",
                )
            ]
        return [Finding("ok", "public url", f"not set: links point at {settings.public_base_url}")]
    parts = urlsplit(url)
    malformed = _public_url_form(settings, parts)
    if malformed:
        return [malformed]
    findings = []
    if parts.scheme != "https" and (public_reasons(settings) and not _is_loopback(parts.hostname)):
        findings.append(
            Finding(
                "warning",
                "public url",
                f"PLASMAART_PUBLIC_URL {url} is plain http: passwords and session cookies "
                "would cross the network unencrypted",
                "put a TLS proxy (Caddy) in front and set PLASMAART_PUBLIC_URL=https://…",
            )
        )
    findings.append(_probe_public_url(settings.public_base_url))
    return findings


def _probe_public_url(base: str) -> Finding:
    probe = f"{base}/readyz"
    not_running = (
        "fine before the first start; otherwise start `plasmaart serve` and check DNS, "
        "the firewall and the proxy's upstream"
    )
    try:
        with httpx.Client(
            timeout=TIMEOUT_S, verify=ssl.create_default_context(), follow_redirects=True
        ) as client:
            response = client.get(probe, headers={"Accept": "application/json"})
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc):
            return Finding(
                "error",
                "public url",
                f"{probe}: the TLS certificate is not trusted: {_one_line(exc)}",
                "give the proxy a certificate browsers trust (Caddy's automatic HTTPS); "
                "for Caddy's internal CA, `caddy trust` on this machine",
            )
        return Finding(
            "warning", "public url", f"nothing answers {probe}: {_one_line(exc)}", not_running
        )
    except httpx.HTTPError as exc:
        return Finding(
            "warning", "public url", f"{probe} did not answer: {_one_line(exc)}", not_running
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    plasmaart = isinstance(body, dict) and "migration" in body
    if response.status_code == 200 and plasmaart and body.get("status") == "ready":
        return Finding("ok", "public url", f"{probe}: PlasmaArt answers, ready")
    if isinstance(body, dict) and body.get("code") == "not_ready":
        return Finding(
            "warning",
            "public url",
            f"{probe}: PlasmaArt answers but is not ready: {body.get('detail')}",
            "see the database and migrations rows",
        )
    if response.status_code in (502, 503, 504):
        return Finding(
            "warning",
            "public url",
            f"{probe}: the proxy answers {response.status_code}, but no PlasmaArt behind it",
            "start `plasmaart serve`, and check the proxy's upstream address and port",
        )
    return Finding(
        "error",
        "public url",
        f"{probe} answers HTTP {response.status_code}, but not as PlasmaArt: the URL or "
        "the proxy points somewhere else",
        "point PLASMAART_PUBLIC_URL (and the proxy) at PlasmaArt",
    )


# -- the run ---------------------------------------------------------------------


def diagnose(
    settings: Settings, *, clock: Clock | None = None, deadline_s: float = DEADLINE_S
) -> list[Finding]:
    """Every check's findings, in the order an operator fixes them. The checks
    run at once, each in a thread; one still running after ``deadline_s`` is
    an error (its thread is left behind, a daemon)."""

    def database() -> list[Finding]:
        return check_database(settings, clock)

    checks: list[tuple[str, Callable[[], list[Finding]]]] = [
        ("catalog", lambda: check_catalog(settings)),
        ("database", database),
        ("redis", lambda: check_redis(settings)),
        ("storage", lambda: check_storage(settings)),
        ("mail", lambda: check_mail(settings)),
        ("billing", lambda: check_billing(settings)),
        ("provider", lambda: check_provider(settings)),
        ("public url", lambda: check_public_url(settings)),
        ("trusted proxies", lambda: check_trusted_proxies(settings)),
        ("support address", lambda: check_support_address(settings)),
    ]
    return _run_all(checks, deadline_s)


def _run_all(
    checks: Sequence[tuple[str, Callable[[], list[Finding]]]], deadline_s: float
) -> list[Finding]:
    results: dict[int, list[Finding]] = {}
    finished = threading.Condition()

    def run(index: int, topic: str, check: Callable[[], list[Finding]]) -> None:
        try:
            found = check()
        except ConfigError as exc:
            found = [Finding("error", topic, str(exc), "correct the setting it names")]
        except Exception as exc:  # a doctor reports, it does not crash
            found = [Finding("error", topic, f"the check failed: {type(exc).__name__}: {exc}")]
        with finished:
            results[index] = found
            finished.notify_all()

    for index, (topic, check) in enumerate(checks):
        threading.Thread(
            target=run, args=(index, topic, check), name=f"doctor {topic}", daemon=True
        ).start()
    deadline = time.monotonic() + deadline_s
    with finished:
        while len(results) < len(checks) and (left := deadline - time.monotonic()) > 0:
            finished.wait(left)
        done = dict(results)
    findings: list[Finding] = []
    for index, (topic, _check) in enumerate(checks):
        findings.extend(
            done.get(index)
            or [
                Finding(
                    "error",
                    topic,
                    f"no answer within {deadline_s:g} s",
                    "check that this machine reaches the service (DNS, firewall)",
                )
            ]
        )
    return findings


# -- the report ------------------------------------------------------------------

HEADERS = ("CHECK", "STATUS", "FINDING", "FIX")


def summary(findings: Sequence[Finding]) -> str:
    errors = sum(finding.level == "error" for finding in findings)
    warnings = sum(finding.level == "warning" for finding in findings)
    if not errors and not warnings:
        return "all good"
    return (
        f"{errors} error{'s' if errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''}"
    )


def render_table(findings: Sequence[Finding], width: int = 120) -> str:
    """One table for a terminal ``width`` columns wide: long findings and
    fixes wrap within their columns; a row's check and status are on its
    first line."""
    gap = "  "
    check_w = max(len(HEADERS[0]), *(len(f.topic) for f in findings))
    status_w = len("warning")
    rest = max(40, width - check_w - status_w - 3 * len(gap))
    finding_w = max(20, rest * 11 // 20)
    fix_w = max(16, rest - finding_w)
    lines = [
        gap.join(
            (
                HEADERS[0].ljust(check_w),
                HEADERS[1].ljust(status_w),
                HEADERS[2].ljust(finding_w),
                HEADERS[3],
            )
        ).rstrip()
    ]
    for finding in findings:
        said = textwrap.wrap(finding.message, finding_w, break_on_hyphens=False) or [""]
        fix = textwrap.wrap(finding.fix, fix_w, break_on_hyphens=False)
        for row in range(max(len(said), len(fix))):
            cells = (
                (finding.topic if row == 0 else "").ljust(check_w),
                (finding.level if row == 0 else "").ljust(status_w),
                (said[row] if row < len(said) else "").ljust(finding_w),
                fix[row] if row < len(fix) else "",
            )
            lines.append(gap.join(cells).rstrip())
    return "\n".join(lines)


def render_json(findings: Sequence[Finding]) -> str:
    """The findings for scripts: ``checks`` (check, status, finding, fix),
    ``errors``, ``warnings`` and ``summary``."""
    checks = [
        {"check": f.topic, "status": f.level, "finding": f.message, "fix": f.fix} for f in findings
    ]
    return json.dumps(
        {
            "checks": checks,
            "errors": sum(f.level == "error" for f in findings),
            "warnings": sum(f.level == "warning" for f in findings),
            "summary": summary(findings),
        },
        indent=2,
    )

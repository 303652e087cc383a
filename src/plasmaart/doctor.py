"""``plasmaart doctor``: what a setup still lacks before it serves customers.

Each check gives findings: ``ok``, ``warning`` (works, but probably not what a
production setup wants) or ``error`` (it will not work). Checks read the
settings and touch only what they check: the database is asked its schema
revision (a SQLite file that does not exist yet is left uncreated), the
media storage gets one small object written and deleted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from plasmaart.catalog import CatalogError, load_catalog
from plasmaart.config import ConfigError, Settings
from plasmaart.db.engine import create_database, normalise_url
from plasmaart.db.migrate import (
    DatabaseNotReady,
    database_revision,
    describe_database,
    head_revision,
    known_revisions,
    require_migrated,
    unreachable,
)

Level = Literal["ok", "warning", "error"]

# PlasmaArt's own support address (the policy's contact): a deployment that
# sells to its own customers answers them at its own address.
DEFAULT_SUPPORT_EMAIL: str = str(Settings.model_fields["support_email"].default)


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str
    message: str


def _is_loopback(host: str | None) -> bool:
    if not host:
        return True
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def public_reasons(settings: Settings, *, host: str | None = None) -> list[str]:
    """Why this setup looks like a production one (empty: a local trial)."""
    reasons = []
    if settings.billing == "stripe":
        reasons.append("billing is stripe")
    listen = host if host is not None else settings.host
    if not _is_loopback(listen):
        reasons.append(f"it listens on {listen}, not only on this machine")
    if settings.stripe_return_url and not _is_loopback(
        urlsplit(settings.stripe_return_url).hostname
    ):
        reasons.append(f"customers come back to {settings.stripe_return_url}")
    return reasons


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
        "send your customers there; set your own address"
    )


def check_support_address(settings: Settings) -> list[Finding]:
    warning = support_address_warning(settings)
    if warning:
        return [Finding("warning", "support address", warning)]
    return [Finding("ok", "support address", settings.support_email)]


def check_catalog(settings: Settings) -> list[Finding]:
    try:
        catalog = load_catalog(settings.catalog_file)
    except CatalogError as exc:
        return [Finding("error", "catalog", str(exc))]
    source = settings.catalog_file or "the packaged catalog"
    return [
        Finding(
            "ok",
            "catalog",
            f"{source}: {len(catalog.models)} models, {len(catalog.plans)} plans, "
            f"{len(catalog.credit_packs)} credit packs",
        )
    ]


def check_billing(settings: Settings) -> list[Finding]:
    if settings.billing == "sandbox":
        return [Finding("ok", "billing", "sandbox: payments succeed offline, nothing is charged")]
    findings = []
    for name, value in (
        ("STRIPE_SECRET_KEY", settings.stripe_secret_key),
        ("STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret),
    ):
        if not value:
            findings.append(
                Finding("error", "billing", f"{name} is not set (required with billing stripe)")
            )
    key = settings.stripe_secret_key or ""
    if key.startswith(("sk_test_", "rk_test_")):
        findings.append(
            Finding("warning", "billing", "STRIPE_SECRET_KEY is a test-mode key: no real payments")
        )
    if not findings:
        findings.append(Finding("ok", "billing", "stripe: both keys set"))
    return findings


def check_provider(settings: Settings) -> list[Finding]:
    if settings.provider == "fal" and not settings.fal_key:
        return [Finding("error", "provider", "FAL_KEY is not set (required with provider fal)")]
    if settings.provider == "sandbox":
        return [Finding("ok", "provider", "sandbox: media made offline, no model is called")]
    return [Finding("ok", "provider", "fal: FAL_KEY set")]


def _auto_migrates(settings: Settings, sqlite: bool) -> bool:
    return settings.auto_migrate if settings.auto_migrate is not None else sqlite


def check_database(settings: Settings) -> list[Finding]:
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
                    f"{name} does not exist and PLASMAART_AUTO_MIGRATE is off: "
                    "run `plasmaart migrate`",
                )
            ]
    try:
        db = create_database(url, busy_timeout_ms=settings.sqlite_busy_timeout_ms, pool_size=1)
    except OSError as exc:
        return [Finding("error", "database", str(unreachable(url, exc)))]
    try:
        current = database_revision(db)
        newer = current is not None and current not in known_revisions()
        if current != head_revision() and auto and not newer:
            return [
                Finding(
                    "ok",
                    "database",
                    f"{name}: at {current or 'no revision'}, migrated to {head_revision()} "
                    "at start-up (auto-migrate)",
                )
            ]
        require_migrated(db)
    except DatabaseNotReady as exc:
        return [Finding("error", "database", str(exc))]
    finally:
        db.dispose()
    return [Finding("ok", "database", f"{name}: migrated ({head_revision()})")]


def check_storage(settings: Settings) -> list[Finding]:
    from plasmaart.media.storage import create_storage

    if settings.storage == "local" and not settings.media_dir.exists():
        # Made at the first output; check the folder it will be made in.
        parent = settings.media_dir.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return [Finding("ok", "storage", f"{settings.media_dir}: made at the first output")]
        return [
            Finding(
                "error", "storage", f"{settings.media_dir} cannot be made: {parent} is not writable"
            )
        ]
    where = (
        f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        if settings.storage == "s3"
        else str(settings.media_dir)
    )
    key = f"doctor/{uuid.uuid4().hex}.txt"
    try:
        storage = create_storage(settings)
        storage.put(key, b"plasmaart doctor", "text/plain")
        storage.delete(key)
        if settings.storage == "local":
            # No other key lives under doctor/: leave no empty folder behind.
            for folder in (settings.media_dir / "doctor", settings.media_dir / ".meta" / "doctor"):
                with contextlib.suppress(OSError):
                    folder.rmdir()
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return [Finding("error", "storage", f"{where} is not writable: {reason}")]
    return [Finding("ok", "storage", f"{where}: writable")]


def diagnose(settings: Settings) -> list[Finding]:
    """Every check's findings, in the order an operator fixes them."""
    findings: list[Finding] = []
    for check in (
        check_catalog,
        check_database,
        check_storage,
        check_billing,
        check_provider,
        check_support_address,
    ):
        try:
            findings.extend(check(settings))
        except ConfigError as exc:
            findings.append(Finding("error", check.__name__.removeprefix("check_"), str(exc)))
    return findings

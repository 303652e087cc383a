"""PlasmaArt set up for a benchmark: its settings, a catalog whose bounds
never refuse the run's load, users with credits to spare, and a prepared
database that each run copies."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Connection
from tests.support.pgserver import PgServer

from benchmarks.harness import postgres
from plasmaart.accounts.service import User
from plasmaart.bootstrap import bootstrap
from plasmaart.catalog import load_catalog
from plasmaart.catalog.loader import DEFAULT_CATALOG_PATH
from plasmaart.config import load_settings
from plasmaart.db.tables import wallets
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform

# Users log in with API keys here; the password only has to be valid.
PASSWORD = secrets.token_urlsafe(16)
# Enough for any run: never the reason a job is refused.
FUNDS = 10**12
# The plan of the HTTP benchmarks' users, and its bounds raised: Studio
# queues at most 100 jobs per wallet and takes 120 requests a minute from each
# user; a run queues thousands and sends hundreds a second.
STUDIO = "studio"
STUDIO_LIMITS_RAISED = {"max_queued_jobs": 10_000_000, "requests_per_minute": 10_000_000}


@dataclass(frozen=True)
class Context:
    """A run's folder and catalog: the settings of every platform it builds."""

    workdir: Path
    catalog: Path

    def settings(self, url: str, **overrides: Any) -> dict[str, Any]:
        return {
            "database_url": url,
            "var_dir": self.workdir / "var",
            "catalog_file": self.catalog,
            "embedded_worker": False,
            "auto_migrate": False,
            **overrides,
        }

    def platform(self, url: str, *, migrate: bool = False) -> Platform:
        return bootstrap(load_settings(**self.settings(url)), migrate=migrate)

    def command_env(self, url: str, port: int, **extra: str) -> dict[str, str]:
        """The environment of a real ``plasmaart`` command on this run's
        database, folder and catalog (no PLASMAART_* of the caller's)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PLASMAART_")}
        env.update(
            PLASMAART_DATABASE_URL=url,
            PLASMAART_VAR_DIR=str(self.workdir / "var"),
            PLASMAART_CATALOG_FILE=str(self.catalog),
            PLASMAART_AUTO_MIGRATE="false",
            PLASMAART_HOST="127.0.0.1",
            PLASMAART_PORT=str(port),
            **extra,
        )
        return env


def raised_catalog(workdir: Path, plans: Sequence[str], limits: Mapping[str, int]) -> Path:
    """The shipped catalog with ``limits`` (a plan's bounds, by name) set in
    each of ``plans``, so that a run's backlog and pace never refuse a
    request: the limits are still checked (their cost is measured), they never
    bind. Written in ``workdir``; its path."""
    text = DEFAULT_CATALOG_PATH.read_text()
    for plan in plans:
        start = text.index(f'id = "{plan}"')
        end = text.find("\n[", start)
        end = len(text) if end < 0 else end
        block = text[start:end]
        for name, value in limits.items():
            block, replaced = re.subn(
                rf"^{name} = \d+$", f"{name} = {value}", block, count=1, flags=re.MULTILINE
            )
            if replaced != 1:
                raise RuntimeError(f"no {name} line for the {plan} plan in the catalog")
        text = text[:start] + block + text[end:]
    path = workdir / "catalog.toml"
    path.write_text(text)
    catalog = load_catalog(path)
    for plan in plans:
        if any(getattr(catalog.plan(plan), name) != value for name, value in limits.items()):
            raise RuntimeError("the benchmark catalog did not take")
    return path


def studio_context(workdir: Path) -> Context:
    """The HTTP benchmarks' context: Studio's bounds raised."""
    return Context(workdir, raised_catalog(workdir, [STUDIO], STUDIO_LIMITS_RAISED))


def add_user(
    platform: Platform, conn: Connection, email: str, plan: str, funds: int = FUNDS
) -> User:
    """A user with ``funds`` credits; on a paid ``plan`` (subscribed through
    the sandbox backend), with watermark removal on where the plan allows it."""
    user = platform.accounts.create_user(conn, email, PASSWORD)
    wallet = platform.ledger.wallet_of(conn, "user", user.id)
    if plan != "free":
        platform.billing.subscriptions.subscribe_paid(
            conn, user_id=user.id, wallet_id=wallet, plan_id=plan, backend="sandbox"
        )
        if platform.catalogs.now(conn).plan(plan).watermark_removable:  # else refused
            user = platform.accounts.set_remove_watermark(conn, user, True)
    platform.ledger.grant(
        conn, wallet, funds, source="purchase", idempotency_key=f"bench:funds:{user.id}"
    )
    return user


def studio_email(index: int) -> str:
    return f"bench{index}@example.com"


def make_studio_users(platform: Platform, count: int) -> list[str]:
    """``count`` Studio users with plenty of credits and watermark removal on;
    the API key of each."""
    keys = []
    with platform.db.write() as conn:
        for index in range(count):
            user = add_user(platform, conn, studio_email(index), STUDIO)
            keys.append(platform.credentials.create_api_key(conn, user.id, "bench").secret)
    return keys


def users_by_email(platform: Platform, emails: Sequence[str]) -> list[User]:
    with platform.db.read() as conn:
        return [platform.accounts.get_by_email(conn, email) for email in emails]


# -- a prepared database, copied for each run ------------------------------------------


@dataclass(frozen=True)
class PreparedDatabase:
    """A prepared database that each run copies."""

    backend: str  # "SQLite" or "PostgreSQL"
    template: str  # a file path (SQLite) or a database name (PostgreSQL)
    server: PgServer | None

    @contextmanager
    def copy(self, name: str) -> Iterator[str]:
        """A fresh copy named ``name``, removed at the end; its URL."""
        if self.server is None:
            path = Path(self.template).with_name(f"{name}.db")
            shutil.copyfile(self.template, path)
            try:
                yield f"sqlite:///{path}"
            finally:
                for suffix in ("", "-wal", "-shm"):
                    with suppress(FileNotFoundError):
                        Path(f"{path}{suffix}").unlink()
        else:
            url = postgres.create(self.server, name, self.template)
            try:
                yield url
            finally:
                postgres.drop(self.server, name)


def _hold_for_the_bare_app(platform: Platform) -> None:
    """One hold of one credit: the bare app's job rows must name a hold (a
    foreign key of ``generations``), and it keeps none of its own."""
    with platform.db.write() as conn:
        wallet = conn.execute(
            sqlalchemy.select(wallets.c.id).order_by(wallets.c.id).limit(1)
        ).scalar_one()
        platform.ledger.hold(conn, wallet, 1, idempotency_key="bench:bare-app-hold")


def prepare_studio_database(
    context: Context, backend: str, server: PgServer | None, users: int
) -> tuple[PreparedDatabase, list[str]]:
    """Migrated, with ``users`` Studio users (and a hold for the bare app);
    the database that each run copies, and the users' API keys."""
    if server is None:
        path = context.workdir / "submission-template.db"
        url = f"sqlite:///{path}"
        template = str(path)
    else:
        template = "submission_template"
        url = postgres.create(server, template)
    made = context.platform(url, migrate=True)
    try:
        keys = make_studio_users(made, users)
        _hold_for_the_bare_app(made)
    finally:
        made.close()
    if server is None:
        # The copies take the main file only: fold the write-ahead log into it.
        with sqlite3.connect(template) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    return PreparedDatabase(backend, template, server), keys


# Jobs queued per transaction by ``queue_jobs``.
QUEUE_BATCH = 200


def queue_jobs(platform: Platform, people: Sequence[User], jobs: int, model: str) -> None:
    """``jobs`` generations of ``model`` submitted through the service,
    round-robin over ``people``, ``QUEUE_BATCH`` to a transaction."""
    for start in range(0, jobs, QUEUE_BATCH):
        with platform.db.write() as conn:
            for number in range(start, min(start + QUEUE_BATCH, jobs)):
                request = GenerationRequest(model, f"bench {number}")
                platform.generations.submit(conn, people[number % len(people)], request)

"""Shared fixtures: a migrated database per test, on SQLite and on PostgreSQL.

Each backend is migrated once per session into a template (a file for
SQLite, a template database for PostgreSQL); every test gets a fresh copy, so
tests are isolated and see the schema the migrations build. PostgreSQL's
copies are made a little ahead, in the background (``TemplateClones``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from hypothesis import settings
from PIL import Image
from sqlalchemy import create_engine, text

from plasmaart.accounts import passwords
from plasmaart.caches import CacheHub
from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database, create_database
from plasmaart.db.migrate import upgrade
from plasmaart.eventbus import PostgresEventBus
from plasmaart.generation.wakeups import PollWakeups
from plasmaart.ledger.service import LedgerService
from plasmaart.platform import Platform
from tests.support.pgserver import PgServer, TemplateClones, start_server
from tests.support.platforms import api_client, running_platform, settings_for

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# In CI the property tests draw the same examples every run, so a run is
# repeatable (and coverage does not depend on luck); locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
_counter = itertools.count()

# argon2id at its cheapest cost (8 KiB, one pass) instead of the library's
# recommended 64 MiB x 3 passes: a signup, a login or a test user costs
# microseconds instead of 0.15-0.35 s on a 2-core machine (hundreds of times
# in the suite). No test checks the cost itself: hashes are still argon2id,
# verified and counted the same way (test_error_messages and
# test_email_verification count the calls). Child processes (``plasmaart
# serve``/``worker``) keep the production parameters, and verify these hashes
# by the parameters written in them.
TEST_PASSWORD_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "_hasher", TEST_PASSWORD_HASHER)
        yield


# fsync of files on the temporary folder's filesystem is skipped in this
# process: every output and upload is written atomically with two fsyncs (the
# file, then its folder), 4-15 ms each on this shared disk, and a test's files
# are thrown away with it (a power cut is nothing a test can see). The writes,
# renames and their order are unchanged; a test can still make fsync fail
# (test_media_storage patches over this). Files on any other filesystem (a
# size-limited image a fault test mounts) are fsynced for real, so a full
# disk is met at fsync as in production. Child processes fsync as always.
_TEMP_DEVICE = os.stat(tempfile.gettempdir()).st_dev
_real_fsync = os.fsync


def _fsync_off_temp_disk(fd: int) -> None:
    if os.fstat(fd).st_dev != _TEMP_DEVICE:
        _real_fsync(fd)


@pytest.fixture(scope="session", autouse=True)
def _no_fsync_on_throwaway_files() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", _fsync_off_temp_disk)
        yield


# PNGs written in the test process are deflated at zlib level 1 instead of
# the default 6 (or the level asked): the sandbox's pictures (render, then
# the watermark's re-encode) cost 0.6 s each at 1344x768 on this machine and
# 0.14 s at level 1, and the suite makes hundreds. The pixels, text chunks
# and ICC profile are the same, the files a little larger (still lossless
# PNG); no test asserts a compression level or a size, and a level of 0 is
# kept. Child processes compress as in production.
TEST_PNG_COMPRESS_LEVEL = 1
Image.preinit()  # registers the PNG plugin
_png_save = Image.SAVE["PNG"]


def _quick_png_save(im: Image.Image, fp: Any, filename: Any, *args: Any, **kwargs: Any) -> None:
    level = im.encoderinfo.get("compress_level", -1)
    if level < 0 or level > TEST_PNG_COMPRESS_LEVEL:
        im.encoderinfo = {**im.encoderinfo, "compress_level": TEST_PNG_COMPRESS_LEVEL}
    _png_save(im, fp, filename, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _quick_png_compression() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(Image.SAVE, "PNG", _quick_png_save)
        yield


# How often the listener threads look at their stop flag (production: 0.25 s
# for the caches, 0.5 s for the event bus and the poll wake-ups). Closing a
# platform joins these threads, so every PostgreSQL platform's close waited
# half an interval on average, and a whole one at worst. Notifications are
# delivered as they arrive either way; only stopping is quicker.
TEST_STOP_CHECK_S = 0.02


@pytest.fixture(scope="session", autouse=True)
def _quick_listener_stops() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CacheHub, "POLL_S", TEST_STOP_CHECK_S)
        patch.setattr(PostgresEventBus, "POLL_S", TEST_STOP_CHECK_S)
        patch.setattr(PollWakeups, "STOP_CHECK_S", TEST_STOP_CHECK_S)
        yield


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | str]:
    existing = os.environ.get("PLASMAART_TEST_PG_URL")
    if existing:
        yield existing
        return
    # Not under pytest's basetemp: another pytest run on the machine rotates
    # those folders away, data directory included.
    base = Path(tempfile.mkdtemp(prefix="plasmaart-pg-"))
    server = start_server(base)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(pg_server: PgServer | str) -> str:
    return pg_server if isinstance(pg_server, str) else pg_server.url


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    """A migrated template database that tests clone."""
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"plasmaart_template_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    database = create_database(pg_admin_url.rsplit("/", 1)[0] + f"/{name}")
    upgrade(database)
    database.dispose()
    return name


@pytest.fixture(scope="session")
def pg_clones(pg_admin_url: str, pg_template: str) -> Iterator[TemplateClones]:
    """Copies of ``pg_template`` made in the background, one per test."""
    clones = TemplateClones(pg_admin_url, pg_template)
    try:
        yield clones
    finally:
        clones.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    database = create_database(f"sqlite:///{path}")
    upgrade(database)
    with database.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()
    return path


def new_database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A fresh, migrated database of ``backend`` for one test."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / f"plasmaart-{next(_counter)}.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    admin_url: str = request.getfixturevalue("pg_admin_url")
    clones: TemplateClones = request.getfixturevalue("pg_clones")
    name = clones.take()
    # Dropped once whatever asked for it (a test, or a module's fixture) is over.
    request.addfinalizer(lambda: clones.give_back(name))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    return new_database_url(request, backend, tmp_path)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = create_database(database_url, busy_timeout_ms=30_000, pool_size=16)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(clock: ManualClock) -> LedgerService:
    return LedgerService(clock)


@pytest.fixture
def platform(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    """A platform with the default settings; a test module needing others
    overrides this fixture (``tests.support.platforms``), and ``client`` follows."""
    with running_platform(settings_for(database_url, tmp_path / "var"), clock) as built:
        yield built


@pytest.fixture
def client(platform: Platform) -> Iterator[TestClient]:
    with api_client(platform) as test_client:
        yield test_client

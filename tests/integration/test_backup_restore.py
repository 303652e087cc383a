"""``plasmaart backup`` and ``plasmaart restore`` with the platform running,
on SQLite and PostgreSQL.

An API process and a worker process serve creators who submit generations
from threads; meanwhile ``plasmaart backup`` runs as its own process. The
archive is restored into a fresh database and media folder by ``plasmaart
restore`` (in the test's process, to keep the test short): the ledger
verification it runs by itself passes, every
generation a client had an answer for before the backup started is there,
and every output that had succeeded by then is there byte for byte. Then
the refusals: a restore onto a database that is not empty changes nothing
without ``--force`` and replaces it with; an altered archive, one of the
other dialect and one from a newer schema are refused before anything is
written; an existing archive is never overwritten. On PostgreSQL the
database URL carries a password, which no output shows.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest
from sqlalchemy import create_engine, select, text
from typer.testing import CliRunner

import plasmaart
from plasmaart.backup import BackupError
from plasmaart.backup.postgres import connection, find_tool
from plasmaart.bootstrap import bootstrap
from plasmaart.cli import app
from plasmaart.config import Settings
from plasmaart.db.engine import create_database
from plasmaart.db.migrate import database_revision, head_revision, upgrade
from plasmaart.db.tables import generation_outputs, generations, users
from plasmaart.ledger.invariants import check_ledger
from plasmaart.media.storage import create_storage
from tests.support.accounts import TestUser, make_user
from tests.support.processes import ServerProcess, WorkerProcess, child_env
from tests.support.s3 import moto_server

PASSWORD = "pw-never-printed-7c1e"
SUBMIT_EVERY_S = 0.6  # under the Studio plan's 120 requests a minute
SUCCEEDED_BEFORE_BACKUP = 2
WAIT_S = 40.0
CLI_TIMEOUT_S = 60.0
# A revision before the head: an archive of it is older than this code.
OLDER_REVISION = "0013"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The commands run in this process configure logging; give the test run
    its own configuration back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def with_password(url: str) -> str:
    """The URL with a password (the test server trusts local connections,
    so any password is accepted: it is there to be kept secret)."""
    if not url.startswith("postgresql"):
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


class Targets:
    """Fresh, empty databases to restore into, of the test's backend."""

    def __init__(self, request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.admin_url = request.getfixturevalue("pg_admin_url") if backend == "postgres" else ""
        self.created: list[str] = []

    def new(self, name: str) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp_path / name}.db"
        database = f"restore_{os.getpid()}_{name}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        admin.dispose()
        self.created.append(database)
        return with_password(self.admin_url.rsplit("/", 1)[0] + f"/{database}")

    def drop_all(self) -> None:
        if not self.created:
            return
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for database in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Creator:
    user: TestUser
    name: str
    answered: list[tuple[str, float]] = field(default_factory=list)  # (id, monotonic)
    refusals: list[str] = field(default_factory=list)

    def run(self, url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, headers=self.user.auth, timeout=20) as client:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"{self.name}-{n}"
                try:
                    response = client.post(
                        "/v1/generations",
                        json={
                            "model": "flux-schnell",
                            "prompt": f"{key}: a lighthouse in a storm",
                            "num_outputs": 1,
                        },
                        headers={"Idempotency-Key": key},
                    )
                except httpx.TransportError as exc:
                    self.refusals.append(f"{key}: {exc!r}")
                else:
                    if response.status_code == 201:
                        self.answered.append((response.json()["id"], time.monotonic()))
                    else:
                        self.refusals.append(f"{key}: {response.status_code} {response.text}")
                stop.wait(SUBMIT_EVERY_S)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plasmaart.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def invoke(
    monkeypatch: pytest.MonkeyPatch, database_url: str, var_dir: Path, *args: str
) -> tuple[int, str]:
    """A command run in this process, against ``database_url``."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PLASMAART_VAR_DIR", str(var_dir))
    result = CliRunner().invoke(app, list(args), prog_name="plasmaart")
    return result.exit_code, result.output


def succeeded_outputs(database_url: str) -> dict[str, list[str]]:
    """Each succeeded generation's output keys."""
    db = create_database(database_url, pool_size=1, group_commit=False)
    try:
        with db.read() as conn:
            rows = conn.execute(
                select(generations.c.id, generation_outputs.c.storage_key)
                .join(generation_outputs, generation_outputs.c.generation_id == generations.c.id)
                .where(generations.c.status == "succeeded")
            ).all()
    finally:
        db.dispose()
    found: dict[str, list[str]] = {}
    for generation_id, key in rows:
        found.setdefault(str(generation_id), []).append(str(key))
    return found


def database_state(database_url: str) -> tuple[set[str], set[str], list[str]]:
    """The generation ids, the users' e-mail addresses and the ledger's problems."""
    db = create_database(database_url, pool_size=1, group_commit=False)
    try:
        with db.read() as conn:
            ids = {str(row[0]) for row in conn.execute(select(generations.c.id))}
            emails = {str(row[0]) for row in conn.execute(select(users.c.email))}
            problems = check_ledger(conn)
    finally:
        db.dispose()
    return ids, emails, problems


def has_tables(database_url: str) -> bool:
    if database_url.startswith("sqlite"):
        return Path(database_url.removeprefix("sqlite:///")).exists()
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(count) > 0


def rewritten(archive: Path, target: Path, *, member: str, change: bytes | None = None) -> Path:
    """A copy of ``archive`` with ``member`` replaced by ``change``, or (None)
    with one byte of it flipped; every other member as it was."""
    with tarfile.open(archive) as source, tarfile.open(target, "w") as copy:
        for info in source:
            data = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                if change is None:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
                else:
                    data = change
                info.size = len(data)
            copy.addfile(info, io.BytesIO(data))
    return target


def manifest_of(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        data: dict[str, object] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    return data


def test_backup_while_clients_submit_then_restore(
    request: pytest.FixtureRequest,
    backend: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    source_url = with_password(database_url)
    var_dir = tmp_path / "var"
    platform = bootstrap(Settings(database_url=source_url, var_dir=var_dir), migrate=False)
    env = child_env(source_url, var_dir)
    # The children import this checkout's code, from any folder.
    env["PYTHONPATH"] = str(Path(plasmaart.__file__).resolve().parents[1])
    targets = Targets(request, backend, tmp_path)
    server = ServerProcess("api", env, tmp_path)
    worker: WorkerProcess | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        creators = [
            Creator(make_user(platform, f"backup{n}@example.com", plan="studio"), f"c{n}")
            for n in range(3)
        ]
        platform.close()
        worker = WorkerProcess("worker", env, tmp_path, 4)  # starts while the server does
        server.start()
        threads = [
            threading.Thread(target=c.run, args=(server.url, stop), name=c.name) for c in creators
        ]
        for thread in threads:
            thread.start()

        # Some outputs exist before the backup begins.
        deadline = time.monotonic() + WAIT_S
        while len(succeeded_outputs(source_url)) < SUCCEEDED_BEFORE_BACKUP:
            assert worker.process.poll() is None, worker.log()
            assert time.monotonic() < deadline, f"no outputs:\n{worker.log()}\n{server.log()}"
            time.sleep(0.1)
        succeeded_before = succeeded_outputs(source_url)
        backup_began = time.monotonic()
        archive = tmp_path / "backups" / "plasmaart.tar"
        archive.parent.mkdir()
        made = run_cli(env, "backup", str(archive))
        backup_ended = time.monotonic()
        assert made.returncode == 0, made.stdout + made.stderr
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive()

        answered = [entry for c in creators for entry in c.answered]
        before = {gid for gid, at in answered if at < backup_began}
        during = [gid for gid, at in answered if backup_began <= at < backup_ended]
        assert before, "no generation was answered before the backup"
        assert during, "no generation was answered while the backup ran"
        assert not [r for c in creators for r in c.refusals], [c.refusals for c in creators]
        assert "wrote" in made.stdout
        assert PASSWORD not in made.stdout + made.stderr
        assert not [p.name for p in archive.parent.iterdir() if p != archive], "leftovers"
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        manifest = manifest_of(archive)
        assert manifest["dialect"] == ("sqlite" if backend == "sqlite" else "postgresql")
        assert manifest["media"] == "local"

        # An existing archive is never overwritten.
        code, said = invoke(monkeypatch, source_url, var_dir, "backup", str(archive))
        assert code == 1, said
        assert "exists" in said
        assert manifest_of(archive) == manifest

        # Not into a database the platform is using, even with --force.
        code, said = invoke(monkeypatch, source_url, var_dir, "restore", str(archive), "--force")
        assert code == 1, said
        assert "stop the API and the workers" in said
        assert server.process is not None
        assert server.process.poll() is None
        assert worker.process.poll() is None

        # Restore into a fresh database and media folder.
        restored_url = targets.new("fresh")
        restored_var = tmp_path / "restored-var"
        code, output = invoke(monkeypatch, restored_url, restored_var, "restore", str(archive))
        assert code == 0, output
        assert "checksums match" in output
        assert output.rstrip().endswith("the books balance")
        assert PASSWORD not in output
        ids, emails, problems = database_state(restored_url)
        assert problems == []
        assert {c.user.email for c in creators} <= emails
        assert before <= ids, sorted(before - ids)
        for generation_id, keys in succeeded_before.items():
            assert generation_id in ids
            for key in keys:
                original = (var_dir / "media" / key).read_bytes()
                copy = restored_var / "media" / key
                assert copy.read_bytes() == original, key
                sidecar = json.loads((restored_var / "media" / ".meta" / f"{key}.json").read_text())
                assert sidecar["sha256"] == hashlib.sha256(original).hexdigest()

        # Onto a database that is not empty: refused without --force, and
        # nothing changes (a user made after the restore stays).
        marker = bootstrap(Settings(database_url=restored_url, var_dir=restored_var), migrate=False)
        try:
            make_user(marker, "after-restore@example.com")
        finally:
            marker.close()
        code, said = invoke(monkeypatch, restored_url, restored_var, "restore", str(archive))
        assert code == 1, said
        assert "not empty" in said
        assert "--force" in said
        assert PASSWORD not in said
        assert "after-restore@example.com" in database_state(restored_url)[1]
        # With --force it is replaced by the archive's database.
        code, said = invoke(
            monkeypatch, restored_url, restored_var, "restore", str(archive), "--force"
        )
        assert code == 0, said
        assert "the books balance" in said
        forced_ids, forced_emails, forced_problems = database_state(restored_url)
        assert forced_problems == []
        assert "after-restore@example.com" not in forced_emails
        assert forced_ids == ids

        # Refused before anything is written: an altered archive, one of the
        # other dialect, one from a newer schema.
        untouched_url = targets.new("untouched")
        untouched_var = tmp_path / "untouched-var"
        database_member = (
            "database/plasmaart.sqlite3" if backend == "sqlite" else "database/plasmaart.pgdump"
        )
        altered = rewritten(archive, tmp_path / "altered.tar", member=database_member)
        code, said = invoke(monkeypatch, untouched_url, untouched_var, "restore", str(altered))
        assert code == 1, said
        assert "does not match its checksum in the manifest" in said
        other = "postgresql" if backend == "sqlite" else "sqlite"
        foreign = rewritten(
            archive,
            tmp_path / "foreign.tar",
            member="manifest.json",
            change=json.dumps({**manifest, "dialect": other}).encode(),
        )
        code, said = invoke(monkeypatch, untouched_url, untouched_var, "restore", str(foreign))
        assert code == 1, said
        assert f"holds a {other} database" in said
        future = rewritten(
            archive,
            tmp_path / "future.tar",
            member="manifest.json",
            change=json.dumps({**manifest, "revision": "9999_future"}).encode(),
        )
        code, said = invoke(monkeypatch, untouched_url, untouched_var, "restore", str(future))
        assert code == 1, said
        assert "newer PlasmaArt" in said
        cut = tmp_path / "cut.tar"
        cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        code, said = invoke(monkeypatch, untouched_url, untouched_var, "restore", str(cut))
        assert code == 1, said
        assert "cut short" in said or "damaged" in said
        assert not has_tables(untouched_url)
        assert not untouched_var.exists() or not any(untouched_var.rglob("*.png"))
        print(  # noqa: T201 - how long the scenario took, and what it carried
            f"\nbackup/restore ({backend}): {len(answered)} generations answered, "
            f"{len(during)} during the backup; {time.monotonic() - started:.1f} s"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        if worker is not None:
            worker.close()
        server.close()
        platform.close()
        targets.drop_all()


REGION = "us-east-1"
_buckets = itertools.count()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, for the module."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    """Offline credentials, a new bucket, and the settings that name it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"plasmaart-backups-{next(_buckets)}"
    client = boto3.session.Session().client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("PLASMAART_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("PLASMAART_S3_REGION", REGION)
    monkeypatch.setenv("PLASMAART_S3_BUCKET", bucket)
    return bucket


def test_media_in_s3_stay_there_and_a_folder_backup_restores_into_s3(
    request: pytest.FixtureRequest,
    backend: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_bucket: str,
) -> None:
    var_dir = tmp_path / "var"
    platform = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=False)
    try:
        make_user(platform, "s3@example.com")
        key = "outputs/2026/12/gen_s3/0.png"
        platform.storage.put(key, PNG, "image/png", {"license": "commercial"})
    finally:
        platform.close()
    targets = Targets(request, backend, tmp_path)
    try:
        # A backup of a media folder, restored where media live in S3: the
        # objects are uploaded, described as they were stored.
        folder_archive = tmp_path / "folder.tar.gz"
        code, said = invoke(monkeypatch, database_url, var_dir, "backup", str(folder_archive))
        assert code == 0, said
        assert "media: 1 file," in said
        in_s3_url = targets.new("s3")
        monkeypatch.setenv("PLASMAART_STORAGE", "s3")
        code, said = invoke(
            monkeypatch, in_s3_url, tmp_path / "s3-var", "restore", str(folder_archive)
        )
        assert code == 0, said
        assert f"media: 1 file restored into s3://{s3_bucket}" in said
        storage = create_storage(Settings(database_url=in_s3_url, var_dir=tmp_path / "s3-var"))
        assert storage.get(key) == PNG
        stored = storage.stat(key)
        assert stored.content_type == "image/png"
        assert dict(stored.metadata) == {"license": "commercial"}

        # A backup where media live in S3 leaves them there, and says so.
        bucket_archive = tmp_path / "bucket.tar"
        code, said = invoke(
            monkeypatch, in_s3_url, tmp_path / "s3-var", "backup", str(bucket_archive)
        )
        assert code == 0, said
        assert f"media: in the S3 bucket s3://{s3_bucket}, not in this archive" in said
        manifest = manifest_of(bucket_archive)
        assert manifest["media"] == "s3"
        names = list(manifest["files"])  # type: ignore[call-overload]
        assert names == [
            "database/plasmaart.sqlite3" if backend == "sqlite" else "database/plasmaart.pgdump"
        ]
        code, said = invoke(
            monkeypatch,
            targets.new("again"),
            tmp_path / "again-var",
            "restore",
            str(bucket_archive),
        )
        assert code == 0, said
        assert f"media: not in this archive; they are in the S3 bucket s3://{s3_bucket}" in said
        assert said.rstrip().endswith("the books balance")
    finally:
        targets.drop_all()


def test_a_failed_backup_leaves_no_archive(
    backend: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database cannot be read: one error line, nothing at PATH, no
    temporary files left beside it."""
    if backend == "sqlite":
        broken = tmp_path / "broken.db"
        broken.write_bytes(b"this is not a SQLite database, " * 200)
        url = f"sqlite:///{broken}"
        expected = "the backup failed, no archive was written"
    else:
        url = with_password(database_url.rsplit("/", 1)[0] + "/no_such_database")
        expected = "pg_dump failed"
    folder = tmp_path / "backups"
    folder.mkdir()
    code, said = invoke(monkeypatch, url, tmp_path / "var", "backup", str(folder / "x.tar"))
    assert code == 1, said
    assert said.startswith("error: "), said
    assert expected in said
    assert PASSWORD not in said
    assert list(folder.iterdir()) == []


def test_the_postgres_password_travels_in_the_environment_only() -> None:
    uri, env = connection(
        "postgresql://app%40x:p%40ss%3Aw0rd@[::1]:5433/plasma%20art?sslmode=require"
        "&host=/var/run/postgresql"
    )
    assert env["PGPASSWORD"] == "p@ss:w0rd"
    assert "p%40ss" not in uri
    assert "w0rd" not in uri
    assert uri == (
        "postgresql://app%40x@[::1]:5433/plasma%20art?sslmode=require&host=%2Fvar%2Frun%2Fpostgresql"
    )
    uri, env = connection("postgresql+psycopg://app@db.internal/plasmaart")
    assert uri == "postgresql://app@db.internal/plasmaart"
    assert env.get("PGPASSWORD") == os.environ.get("PGPASSWORD")  # a .pgpass or the caller's


def test_the_postgres_tools_are_found_in_pg_bin_dir_first(tmp_path: Path) -> None:
    tool = tmp_path / "pg_dump"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    settings = Settings(database_url="postgresql://app@db/plasmaart", pg_bin_dir=tmp_path)
    assert find_tool("pg_dump", settings) == tool
    with pytest.raises(BackupError, match="psql is not in PLASMAART_PG_BIN_DIR"):
        find_tool("psql", settings)
    found = find_tool("pg_restore", Settings(database_url="postgresql://app@db/plasmaart"))
    assert found.name == "pg_restore"


def test_an_older_archive_replaces_a_newer_database_and_is_migrated(
    request: pytest.FixtureRequest,
    backend: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An archive of an older schema, restored with --force over a database
    at the head (whose newer tables must not survive beside the restored
    ones), is migrated to the head and its books verified."""
    targets = Targets(request, backend, tmp_path)
    try:
        old_url = targets.new("old")
        old = create_database(old_url, pool_size=1, group_commit=False)
        try:
            upgrade(old, OLDER_REVISION)
        finally:
            old.dispose()
        archive = tmp_path / "old.tar"
        code, said = invoke(monkeypatch, old_url, tmp_path / "old-var", "backup", str(archive))
        assert code == 0, said
        assert f"at revision {OLDER_REVISION}," in said
        code, said = invoke(
            monkeypatch, with_password(database_url), tmp_path / "var", "restore", str(archive)
        )
        assert code == 1, said
        assert "not empty" in said
        code, said = invoke(
            monkeypatch,
            with_password(database_url),
            tmp_path / "var",
            "restore",
            str(archive),
            "--force",
        )
        assert code == 0, said
        assert f"migrated from revision {OLDER_REVISION} to {head_revision()}" in said
        assert said.rstrip().endswith("the books balance")
        db = create_database(database_url, pool_size=1, group_commit=False)
        try:
            assert database_revision(db) == head_revision()
        finally:
            db.dispose()
    finally:
        targets.drop_all()


def test_a_restore_whose_books_do_not_balance_exits_1(
    request: pytest.FixtureRequest,
    backend: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger verification that ends a restore decides its exit code: a
    database whose wallet says more than its journal is restored, and said
    to be wrong."""
    var_dir = tmp_path / "var"
    platform = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=False)
    try:
        user = make_user(platform, "books@example.com", credits=100)
    finally:
        platform.close()
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE wallets SET available = available + 7 WHERE id = :id"),
            {"id": user.wallet_id},
        )
    engine.dispose()
    archive = tmp_path / "wrong.tar"
    code, said = invoke(monkeypatch, database_url, var_dir, "backup", str(archive))
    assert code == 0, said
    targets = Targets(request, backend, tmp_path)
    try:
        target = targets.new("books")
        code, said = invoke(monkeypatch, target, tmp_path / "books-var", "restore", str(archive))
        assert code == 1, said
        assert "database: restored into" in said
        assert user.wallet_id in said
        assert "the books balance" not in said
    finally:
        targets.drop_all()

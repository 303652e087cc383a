"""PostgreSQL's own tools for backups: ``pg_dump``, ``pg_restore`` and ``psql``.

They are found in ``PLASMAART_PG_BIN_DIR``, then on ``PATH``, then in
Debian's ``/usr/lib/postgresql/<version>/bin``, newest first (``pg_dump``
must be at least the server's version). The database is named to them by a
connection URI without its password; the password travels in their
environment (``PGPASSWORD``), never on a command line (which every user of
the machine can read in ``ps``) nor in what is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlencode

from sqlalchemy.engine import make_url

from plasmaart.backup.archive import BackupError
from plasmaart.config import Settings
from plasmaart.db.engine import normalise_url

DEBIAN_BIN_DIRS = "/usr/lib/postgresql"
# A dump waits this long for a table lock (a migration running) before it fails.
LOCK_WAIT_TIMEOUT_MS = 60_000
_RELAY_CHUNK = 1024 * 1024
# What --force clears before a restore: every table, view and sequence of the
# schema (not those of extensions), so tables a newer migration added do
# not survive beside the restored ones. Runs in the restore's transaction.
CLEAR_SCHEMA = """
DO $plasmaart$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT c.relname,
               CASE c.relkind
                   WHEN 'v' THEN 'VIEW'
                   WHEN 'm' THEN 'MATERIALIZED VIEW'
                   WHEN 'S' THEN 'SEQUENCE'
                   WHEN 'f' THEN 'FOREIGN TABLE'
                   ELSE 'TABLE'
               END AS kind
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema()
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND NOT EXISTS (
              SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e'
          )
        ORDER BY c.relkind = 'S', c.relname
    LOOP
        EXECUTE format('DROP %s IF EXISTS %I CASCADE', item.kind, item.relname);
    END LOOP;
END
$plasmaart$;
"""


def _version(path: Path) -> tuple[int, ...]:
    name = path.parts[-3] if len(path.parts) >= 3 else ""
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def find_tool(name: str, settings: Settings) -> Path:
    """Where the PostgreSQL program ``name`` is, or a refusal saying how to provide it."""
    if settings.pg_bin_dir is not None:
        candidate = settings.pg_bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise BackupError(
            f"{name} is not in PLASMAART_PG_BIN_DIR ({settings.pg_bin_dir}): point it at the "
            "bin folder of a PostgreSQL client of your server's version or newer"
        )
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(Path(DEBIAN_BIN_DIRS).glob(f"*/bin/{name}"), key=_version, reverse=True)
    if candidates:
        return candidates[0]
    raise BackupError(
        f"{name} not found on PATH nor in {DEBIAN_BIN_DIRS}/*/bin: install the PostgreSQL "
        "client (apt install postgresql-client) of your server's version or newer, "
        "or set PLASMAART_PG_BIN_DIR"
    )


def connection(url: str) -> tuple[str, dict[str, str]]:
    """The libpq connection URI without its password, and the environment for
    the tools (the password in ``PGPASSWORD`` when the URL has one)."""
    parsed = make_url(normalise_url(url))
    netloc = ""
    if parsed.username:
        netloc = quote(parsed.username, safe="") + "@"
    if parsed.host:
        netloc += f"[{parsed.host}]" if ":" in parsed.host else quote(parsed.host, safe="")
    if parsed.port:
        netloc += f":{parsed.port}"
    query = urlencode(
        [
            (key, item)
            for key, value in parsed.query.items()
            for item in ((value,) if isinstance(value, str) else value)
        ]
    )
    uri = f"postgresql://{netloc}/{quote(parsed.database or '', safe='')}"
    if query:
        uri += f"?{query}"
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return uri, env


def _secretless(text: str, url: str) -> str:
    password = make_url(normalise_url(url)).password
    lines = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if password:
        lines = lines.replace(str(password), "***")
    return lines


def dump(settings: Settings, target: Path) -> None:
    """``pg_dump`` of the database into ``target`` (custom format): one
    snapshot in a repeatable-read transaction, taken while the platform runs."""
    pg_dump = find_tool("pg_dump", settings)
    uri, env = connection(settings.database_url)
    done = subprocess.run(  # noqa: S603 - a fixed program, no shell; the password is in env
        [
            str(pg_dump),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "--no-password",
            f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT_MS}",
            f"--file={target}",
            f"--dbname={uri}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(
            f"pg_dump failed: {_secretless(done.stderr or done.stdout, settings.database_url)}"
        )


def dump_revision(settings: Settings, dump_file: Path) -> str | None:
    """The migration revision inside a dump, read from its ``alembic_version``
    data (no database needed)."""
    pg_restore = find_tool("pg_restore", settings)
    done = subprocess.run(  # noqa: S603 - a fixed program, no shell
        [
            str(pg_restore),
            "--data-only",
            "--table=alembic_version",
            "--file=-",
            str(dump_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"pg_restore cannot read the dump: {' '.join(done.stderr.split())}")
    lines = iter(done.stdout.splitlines())
    for line in lines:
        if line.startswith("COPY ") and "alembic_version" in line:
            rows = []
            for row in lines:
                if row == "\\.":
                    break
                rows.append(row.strip())
            return rows[0] if len(rows) == 1 else None
    return None


@contextmanager
def _log_file() -> Iterator[IO[str]]:
    with tempfile.TemporaryFile("w+", prefix="plasmaart-restore-") as log:
        yield log


def _read(log: IO[str]) -> str:
    log.seek(0)
    return log.read()


def restore(settings: Settings, dump_file: Path, *, clear: bool) -> None:
    """Load the dump into the configured database, all or nothing.

    ``pg_restore`` turns the dump into SQL and ``psql`` runs it in one
    transaction that stops at the first error (the same as ``pg_restore
    --single-transaction --exit-on-error``, with ``--no-owner
    --no-privileges``). With ``clear`` the transaction first drops every
    table, view and sequence of the schema (``--clean`` would drop only those
    in the dump, leaving the tables of a newer migration behind), so a
    failed restore leaves the database as it was."""
    pg_restore = find_tool("pg_restore", settings)
    psql = find_tool("psql", settings)
    uri, env = connection(settings.database_url)
    run_sql = [
        str(psql),
        "--no-psqlrc",
        "--no-password",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={uri}",
    ]
    if clear:
        run_sql.append(f"--command={CLEAR_SCHEMA}")
    run_sql.append("--file=-")
    with _log_file() as restore_log, _log_file() as psql_log:
        producer = subprocess.Popen(  # noqa: S603 - a fixed program, no shell
            [str(pg_restore), "--no-owner", "--no-privileges", "--file=-", str(dump_file)],
            stdout=subprocess.PIPE,
            stderr=restore_log,
        )
        consumer = subprocess.Popen(  # noqa: S603 - a fixed program, no shell; password in env
            run_sql,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_log,
            env=env,
        )
        # Relayed here rather than piped: psql commits when its input ends,
        # so its input ends only once pg_restore has produced all of it; if
        # pg_restore fails, psql is killed first and its transaction is lost.
        if producer.stdout is None or consumer.stdin is None:  # pragma: no cover - PIPEs
            raise RuntimeError("pg_restore and psql are not connected")
        broken = False
        try:
            while chunk := producer.stdout.read(_RELAY_CHUNK):
                consumer.stdin.write(chunk)
        except BrokenPipeError:
            broken = True  # psql stopped at an error; it says which below
            producer.kill()
        producer.stdout.close()
        produced = producer.wait()
        if produced != 0 and not broken:
            consumer.kill()
            consumer.wait()
            raise BackupError(
                "pg_restore failed (nothing was restored): "
                + _secretless(_read(restore_log), settings.database_url)
            )
        try:
            consumer.stdin.close()
        except BrokenPipeError:
            broken = True
        if consumer.wait() != 0 or broken:
            raise BackupError(
                "the restore failed and was rolled back: "
                + _secretless(_read(psql_log), settings.database_url)
            )

"""The SQL of backups and restores: the SQLite online backup, what a database
holds, who else is connected to it."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from plasmaart.db.engine import normalise_url
from plasmaart.db.migrate import VERSION_TABLE, unreachable

# The tables whose rows an operator would miss most, counted in a refusal.
COUNTED_TABLES = ("users", "generations", "journal_entries")


@dataclass(frozen=True)
class Contents:
    """What a database holds: its tables, and the rows of the counted ones."""

    tables: int
    rows: dict[str, int]

    @property
    def empty(self) -> bool:
        return self.tables == 0

    def describe(self) -> str:
        counted = [f"{count} {table.replace('_', ' ')}" for table, count in self.rows.items()]
        if counted:
            return f"{self.tables} tables ({', '.join(counted)})"
        return f"{self.tables} tables"


def _sqlite_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def sqlite_snapshot(source: Path, target: Path) -> None:
    """Copy the SQLite database ``source`` into the new file ``target`` with
    SQLite's online backup API, as one consistent snapshot.

    The database runs in WAL mode, where a reader never blocks a writer, so
    the copy is made in one step inside one read transaction: writers go on
    committing meanwhile (into the WAL) and the copy is the database as it
    was when the step began. A copy in several steps would restart whenever
    another connection writes between two steps, which, under steady
    traffic, could be forever. The copy is then switched to a rollback
    journal so it is one self-contained file, and checked."""
    with contextlib.closing(_sqlite_readonly(source)) as live:
        live.execute("PRAGMA busy_timeout = 30000")
        with contextlib.closing(sqlite3.connect(target)) as copy:
            live.backup(copy, pages=-1)
            copy.execute("PRAGMA journal_mode = DELETE")
            problems = [row[0] for row in copy.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise RuntimeError(f"the snapshot fails SQLite's quick_check: {problems[:5]}")


def sqlite_file_revision(path: Path) -> str | None:
    """The migration revision recorded in a SQLite file (None: none)."""
    with contextlib.closing(_sqlite_readonly(path)) as conn:
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
        ).fetchone()
        if found is None:
            return None
        row = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
        return str(row[0]) if row else None


def sqlite_file_check(path: Path) -> list[str]:
    """SQLite's quick_check of a file: empty when it is sound."""
    with contextlib.closing(_sqlite_readonly(path)) as conn:
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
    return [] if problems == ["ok"] else problems


def sqlite_contents(path: Path) -> Contents:
    """What the SQLite file holds; a missing or zero-length file holds nothing."""
    if not path.exists() or path.stat().st_size == 0:
        return Contents(0, {})
    try:
        with contextlib.closing(_sqlite_readonly(path)) as conn:
            tables = [
                str(row[0])
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
            rows = {
                table: int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
                for table in COUNTED_TABLES
                if table in tables
            }
    except sqlite3.DatabaseError as exc:
        raise RuntimeError(f"{path} is not a SQLite database PlasmaArt can read: {exc}") from None
    return Contents(len(tables), rows)


def postgres_contents(url: str) -> tuple[Contents, list[str]]:
    """What the PostgreSQL database holds, and the other client sessions
    connected to it (their application names, or their addresses)."""
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM information_schema.tables"
                        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    )
                ).scalar_one()
            )
            present = set(inspect(conn).get_table_names())
            rows = {
                table: int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())
                for table in COUNTED_TABLES
                if table in present
            }
            sessions = [
                str(row[0])
                for row in conn.execute(
                    text(
                        "SELECT coalesce(nullif(application_name, ''), "
                        "host(client_addr), 'a local client') FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'"
                    )
                )
            ]
    except DBAPIError as exc:
        raise unreachable(url, exc) from None
    finally:
        engine.dispose()
    return Contents(tables, rows), sessions

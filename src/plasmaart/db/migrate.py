"""Alembic migrations, driven from code (``plasmaart migrate`` and the embedded start-up)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from plasmaart.db.engine import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found")
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def is_up_to_date(db: Database) -> bool:
    with db.engine.connect() as conn:
        return current_revision(conn) == head_revision()


@contextmanager
def _migrating(db: Database) -> Iterator[Connection]:
    """The one transaction a migration run takes.

    On PostgreSQL an advisory lock makes other processes wait; on SQLite the
    first write lock does. SQLite also has foreign keys switched off for the
    run, as its manual prescribes for schema changes: a batch migration copies
    a table to a new one and drops the old, which rows of other tables refer
    to. Every reference is checked before the commit instead.
    """
    with db.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Outside any transaction (SQLite ignores the pragma inside one).
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7355608)")
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:10]}")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Safe to run from several processes."""
    with _migrating(db) as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(db: Database, revision: str) -> None:
    """Undo migrations down to ``revision`` (for an operator rolling back a release)."""
    with _migrating(db) as conn:
        command.downgrade(alembic_config(conn), revision)

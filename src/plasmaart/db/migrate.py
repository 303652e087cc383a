"""Alembic migrations, driven from code (``plasmaart migrate`` and the embedded start-up)."""

from __future__ import annotations

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


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Safe to run from several processes:
    on PostgreSQL an advisory lock makes the others wait, on SQLite the first
    write lock does."""
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7355608)")
        command.upgrade(alembic_config(conn), revision)

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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from plasmaart.db.engine import Database, normalise_url

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


class DatabaseNotReady(Exception):
    """The database cannot serve this version of PlasmaArt; the message is one
    line for the operator, naming the database (never its password)."""


class DatabaseUnreachable(DatabaseNotReady):
    pass


class SchemaNotMigrated(DatabaseNotReady):
    pass


def describe_database(url: str) -> str:
    """The database's URL as an operator may see it: the password masked."""
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse: say no more than its scheme
        return url.split("://", 1)[0] + "://…"


def _reason(exc: BaseException) -> str:
    """The driver's own words, on one line."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return " ".join(lines) or type(cause).__name__


def unreachable(url: str, exc: BaseException) -> DatabaseUnreachable:
    return DatabaseUnreachable(
        f"cannot reach the database {describe_database(url)}: {_reason(exc)}"
    )


def database_revision(db: Database) -> str | None:
    """The revision the database is at (None: not migrated at all).

    Raises ``DatabaseUnreachable`` when it cannot be asked."""
    try:
        with db.engine.connect() as conn:
            return current_revision(conn)
    except (OperationalError, DBAPIError) as exc:
        raise unreachable(db.engine.url.render_as_string(hide_password=False), exc) from None


def known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


def require_migrated(db: Database) -> None:
    """Refuse a database whose schema is not the one this code needs, with
    what to do about it. Raises ``DatabaseUnreachable`` or ``SchemaNotMigrated``."""
    current = database_revision(db)
    head = head_revision()
    if current == head:
        return
    name = describe_database(db.engine.url.render_as_string(hide_password=False))
    if current is not None and current not in known_revisions():
        raise SchemaNotMigrated(
            f"the database {name} is at revision {current}, which this version of "
            f"PlasmaArt does not know (it needs {head}): a newer version migrated it"
        )
    raise SchemaNotMigrated(
        f"the database is not migrated (at {current or 'no revision'}, needs {head}): "
        f"run `plasmaart migrate` (database {name}; PLASMAART_AUTO_MIGRATE=true "
        "migrates at start-up)"
    )


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

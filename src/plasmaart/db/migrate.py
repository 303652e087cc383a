"""Alembic migrations, driven from code (``plasmaart migrate`` and the embedded start-up).

Alembic (with Mako and Pygments) costs a process tens of megabytes once
imported, for good: it is imported only to migrate. Knowing whether the
database is at the head needs none of it: the revisions are read from the
migration files' ``revision`` and ``down_revision`` lines, and the
database's revision from its ``alembic_version`` table, so a server that
starts on a migrated database never loads Alembic.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from plasmaart.db.engine import Database, normalise_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _names(node: ast.expr) -> tuple[str, ...]:
    """A ``down_revision`` value: None, one revision, or several (a merge)."""
    value = ast.literal_eval(node)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(item) for item in value)


@functools.cache
def _revisions() -> dict[str, tuple[str, ...]]:
    """Each migration's revision and the revisions it follows, from the files."""
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        fields: dict[str, ast.expr] = {}
        for statement in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(statement, ast.Assign | ast.AnnAssign):
                targets = (
                    statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                )
                for target in targets:
                    if isinstance(target, ast.Name) and statement.value is not None:
                        fields[target.id] = statement.value
        if "revision" in fields:
            revision = ast.literal_eval(fields["revision"])
            down = fields.get("down_revision")
            found[str(revision)] = _names(down) if down is not None else ()
    return found


def head_revision() -> str:
    revisions = _revisions()
    followed = {down for downs in revisions.values() for down in downs}
    heads = [revision for revision in revisions if revision not in followed]
    if len(heads) == 1:
        return heads[0]
    # None or several: Alembic says what is wrong.
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found")
    return head


def current_revision(conn: Connection) -> str | None:
    """The database's revision (None: never migrated), as Alembic reads it."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"the database has several revisions: {', '.join(sorted(rows))}")
    return str(rows[0]) if rows else None


def probe_revision(db: Database) -> str | None:
    """The readiness probe: a round trip that proves the database answers,
    then its revision (None: never migrated). Raises ``SQLAlchemyError``
    when the database does not answer."""
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        return current_revision(conn)


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
    return set(_revisions())


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
    """Apply migrations up to ``revision``. Safe to run from several processes.
    A database already at the head is left alone without loading Alembic."""
    if revision == "head" and is_up_to_date(db):
        return
    from alembic import command

    # A migration may take longer than PLASMAART_DB_TIMEOUT_S: no deadline.
    with db.deadline(None), _migrating(db) as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(db: Database, revision: str) -> None:
    """Undo migrations down to ``revision`` (for an operator rolling back a release)."""
    from alembic import command

    with db.deadline(None), _migrating(db) as conn:
        command.downgrade(alembic_config(conn), revision)

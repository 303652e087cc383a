"""The migrations build exactly the schema that ``db/tables.py`` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from plasmaart.db.engine import Database
from plasmaart.db.migrate import head_revision, is_up_to_date
from plasmaart.db.tables import metadata


def test_migrated_schema_matches_tables(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_database_is_at_head(db: Database) -> None:
    assert is_up_to_date(db)
    assert head_revision() == "0008"

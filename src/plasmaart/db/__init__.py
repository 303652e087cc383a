"""The database: engine and transactions, the tables, and the Alembic migrations."""

from plasmaart.db.engine import Database, create_database
from plasmaart.db.tables import metadata

__all__ = ["Database", "create_database", "metadata"]

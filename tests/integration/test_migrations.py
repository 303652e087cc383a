"""The migrations build exactly the schema that ``db/tables.py`` declares, and
carry existing data across."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from plasmaart.clock import ManualClock
from plasmaart.db.engine import Database, create_database
from plasmaart.db.migrate import current_revision, downgrade, head_revision, is_up_to_date, upgrade
from plasmaart.db.tables import holds, metadata
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.service import LedgerService

_names = count()


def test_migrated_schema_matches_tables(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_migrated_check_constraints_match_tables(db: Database) -> None:
    """Autogenerate does not compare CHECK constraints: every named one of
    tables.py is in the database, and no other (SQLite's table copies in
    batch migrations must carry them all)."""
    declared = {
        table.name: {
            str(constraint.name)
            for constraint in table.constraints
            if isinstance(constraint, CheckConstraint)
        }
        for table in metadata.sorted_tables
    }
    with db.engine.connect() as conn:
        inspector = inspect(conn)
        found = {
            name: {str(check["name"]) for check in inspector.get_check_constraints(name)}
            for name in declared
        }
    assert found == declared
    assert {"ck_holds_pending_parts", "ck_holds_captured_parts"} <= found["holds"]


def test_database_is_at_head(db: Database) -> None:
    assert is_up_to_date(db)
    assert head_revision() == "0014"


# -- upgrading a database that holds data ---------------------------------------


@pytest.fixture
def empty_db(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema at all, to migrate step by step."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        admin_url: str = request.getfixturevalue("pg_admin_url")
        name = f"e{os.getpid()}_{next(_names)}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    database = create_database(url)
    try:
        yield database
    finally:
        database.dispose()


def _holds_in_every_state(db: Database, ledger: LedgerService) -> dict[str, str]:
    with db.write() as conn:
        wallet = ledger.open_wallet(conn, "user", "usr_migrated")
        ledger.grant(conn, wallet, 100, source="purchase", idempotency_key="g")
        made = {
            state: ledger.hold(conn, wallet, 10, idempotency_key=f"h-{state}").hold_id
            for state in ("pending", "captured", "partial", "released", "zero", "flipped")
        }
        ledger.capture(conn, made["captured"], 10, idempotency_key="c1")
        ledger.capture(conn, made["partial"], 4, idempotency_key="c2")
        ledger.release(conn, made["released"], idempotency_key="r1")
        ledger.capture(conn, made["zero"], 0, idempotency_key="c3")  # nothing delivered
        ledger.release(conn, made["flipped"], idempotency_key="r2")
    return made


def _holds(db: Database) -> dict[str, tuple[str, int, int]]:
    with db.read() as conn:
        rows = conn.execute(select(holds.c.id, holds.c.status, holds.c.captured, holds.c.released))
        return {row.id: (row.status, int(row.captured), int(row.released)) for row in rows}


_CONTROL_COLUMNS = ("monthly_spend_limit", "watch_below", "watch_above")


def test_upgrade_keeps_holds_in_every_state_and_mends_a_flipped_status(
    empty_db: Database,
) -> None:
    upgrade(empty_db, "0007")
    ledger = LedgerService(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    # Today's ledger reads the wallet's credit controls (0013) with its lock:
    # lend them to the old schema while it writes, then take them back.
    with empty_db.write() as conn:
        for column in _CONTROL_COLUMNS:
            conn.execute(text(f"ALTER TABLE wallets ADD COLUMN {column} BIGINT"))
    made = _holds_in_every_state(empty_db, ledger)
    with empty_db.write() as conn:
        for column in _CONTROL_COLUMNS:
            conn.execute(text(f"ALTER TABLE wallets DROP COLUMN {column}"))
    # Before 0008 nothing stopped a released hold from claiming it was captured.
    with empty_db.write() as conn:
        conn.execute(
            text("UPDATE holds SET status = 'captured' WHERE id = :id"), {"id": made["flipped"]}
        )
    before = _holds(empty_db)
    assert before[made["flipped"]] == ("captured", 0, 10)

    upgrade(empty_db)

    with empty_db.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    after = _holds(empty_db)
    assert after == {**before, made["flipped"]: ("released", 0, 10)}
    assert {made[state]: after[made[state]] for state in made} == {
        made["pending"]: ("pending", 0, 0),
        made["captured"]: ("captured", 10, 0),
        made["partial"]: ("captured", 4, 6),
        made["released"]: ("released", 0, 10),
        made["zero"]: ("released", 0, 10),
        made["flipped"]: ("released", 0, 10),
    }
    with empty_db.read() as conn:
        assert check_ledger(conn) == []
        if empty_db.is_sqlite:  # the table copy left every reference whole
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    # The upgraded database refuses what the fresh one refuses, and the
    # ledger goes on working on it.
    with pytest.raises(IntegrityError, match="ck_holds_pending_parts"), empty_db.write() as conn:
        conn.execute(text("UPDATE holds SET captured = 1 WHERE id = :id"), {"id": made["pending"]})
    with empty_db.write() as conn:
        ledger.capture(conn, made["pending"], 10, idempotency_key="c4")
    assert _holds(empty_db)[made["pending"]] == ("captured", 10, 0)


def test_downgrade_to_0007_and_back(empty_db: Database) -> None:
    upgrade(empty_db)
    ledger = LedgerService(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    made = _holds_in_every_state(empty_db, ledger)
    downgrade(empty_db, "0007")
    with empty_db.engine.connect() as conn:
        assert current_revision(conn) == "0007"
        checks = {check["name"] for check in inspect(conn).get_check_constraints("holds")}
    assert "ck_holds_resolution" in checks
    assert "ck_holds_pending_parts" not in checks
    upgrade(empty_db)
    assert _holds(empty_db)[made["partial"]] == ("captured", 4, 6)
    with empty_db.read() as conn:
        assert check_ledger(conn) == []

"""The ``plasmaart`` command against a real database, as an operator uses it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from typer.testing import CliRunner

from plasmaart.catalog.changes import CatalogChange
from plasmaart.catalog.repository import insert_change
from plasmaart.cli import app
from plasmaart.db.engine import create_database
from plasmaart.db.tables import abuse_flags, audit_log, users
from plasmaart.ledger.invariants import check_ledger


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The commands configure logging for a real process; give the test run
    its own configuration back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = False


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PLASMAART_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("PLASMAART_CATALOG_FILE", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_users_create_with_plan_grants_its_credits(run: CliRunner, database_url: str) -> None:
    code, out = invoke(
        run,
        "users",
        "create",
        "--email",
        "Ada@Example.com",
        "--password",
        "correct horse",
        "--plan",
        "starter",
    )
    assert code == 0, out
    assert "ada@example.com" in out
    code, out = invoke(run, "credits", "grant", "ada@example.com", "250", "--reason", "goodwill")
    assert code == 0, out
    assert "available now 2250" in out
    code, out = invoke(
        run, "credits", "grant", "--reason", "oops", "ada@example.com", "--", "-3000"
    )
    assert code == 1
    assert "needs 3000 credits and 2250 are available" in out
    code, out = invoke(run, "ledger", "verify")
    assert (code, out.strip()) == (0, "the books balance")
    db = create_database(database_url)
    with db.read() as conn:
        assert check_ledger(conn) == []
        actions = conn.execute(select(audit_log.c.action).order_by(audit_log.c.id)).scalars()
        assert list(actions) == ["user.create", "credits.adjust"]
    db.dispose()


def test_users_create_refuses_bad_input_and_duplicates(run: CliRunner) -> None:
    code, out = invoke(run, "users", "create", "--email", "not-an-address", "--password", "short")
    assert code == 1
    assert "email: not a valid e-mail address" in out
    assert "password: must be at least 10 characters" in out
    assert invoke(run, "users", "create", "--email", "a@b.co", "--password", "0123456789")[0] == 0
    code, out = invoke(run, "users", "create", "--email", "A@B.co", "--password", "0123456789")
    assert (code, "already registered" in out) == (1, True)
    code, out = invoke(
        run,
        "users",
        "create",
        "--email",
        "c@b.co",
        "--password",
        "0123456789",
        "--plan",
        "platinum",
    )
    assert (code, "unknown plan 'platinum'" in out) == (1, True)


def test_suspend_and_reinstate(run: CliRunner, database_url: str) -> None:
    invoke(
        run, "users", "create", "--email", "eve@example.com", "--password", "0123456789", "--admin"
    )
    code, out = invoke(run, "users", "suspend", "eve@example.com", "--reason", "spam flood")
    assert (code, out.strip()) == (0, "eve@example.com is now suspended")
    db = create_database(database_url)
    with db.read() as conn:
        row = conn.execute(select(users.c.status, users.c.status_reason, users.c.role)).one()
    assert tuple(row) == ("suspended", "spam flood", "admin")
    # The suspension came with an abuse flag; reinstating resolves it.
    now = datetime.now(UTC)
    with db.write() as conn:
        user_id = conn.execute(select(users.c.id)).scalar_one()
        conn.execute(
            insert(abuse_flags).values(
                id="flag_cli",
                user_id=user_id,
                status="suspended",
                score=120,
                created_at=now,
                updated_at=now,
            )
        )
    assert invoke(run, "users", "reinstate", "eve@example.com")[0] == 0
    with db.read() as conn:
        assert conn.execute(select(users.c.status)).scalar_one() == "active"
        flag = conn.execute(select(abuse_flags.c.status, abuse_flags.c.resolved_by)).one()
    assert flag.status == "resolved"
    assert flag.resolved_by
    db.dispose()
    assert invoke(run, "users", "suspend", "nobody@example.com", "--reason", "x")[0] == 1


def test_catalog_show(run: CliRunner) -> None:
    code, out = invoke(run, "catalog", "show")
    assert code == 0
    assert "Kling Video v2.1 (Image-to-Video)" in out
    assert "$99.00/month" in out


def test_catalog_commands_print_the_catalog_in_force(run: CliRunner, database_url: str) -> None:
    """Once an announced change has taken effect, ``catalog show`` and
    ``catalog pricing`` print the catalog the API serves; ``--file`` prints
    the file as loaded (docs/pricing.md is made from it)."""
    created = invoke(
        run, "users", "create", "--email", "root@example.com", "--password", "0123456789", "--admin"
    )
    assert created[0] == 0, created[1]
    db = create_database(database_url)
    now = datetime.now(UTC)
    with db.write() as conn:
        admin_id = conn.execute(select(users.c.id)).scalar_one()
        insert_change(
            conn,
            CatalogChange(
                id="chg_cli",
                target="plan",
                target_id="studio",
                field="price_cents",
                value=12900,
                effective_at=now - timedelta(days=1),
            ),
            created_by=admin_id,
            now=now - timedelta(days=20),
        )
    db.dispose()
    for command in ("show", "pricing"):
        code, out = invoke(run, "catalog", command)
        assert code == 0, out
        assert ("$129" in out, "$99" in out) == (True, False), out
        code, out = invoke(run, "catalog", command, "--file")
        assert code == 0, out
        assert ("$99" in out, "$129" in out) == (True, False), out


def test_bad_configuration_names_the_variable(
    run: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLASMAART_PORT", "eighty")
    code, out = invoke(run, "migrate")
    assert code == 2
    assert "PLASMAART_PORT" in out


def test_bad_catalog_stops_start_up_with_field_and_reason(
    run: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from plasmaart.catalog import DEFAULT_CATALOG_PATH

    broken = tmp_path / "catalog.toml"
    broken.write_text(
        DEFAULT_CATALOG_PATH.read_text().replace("credits = 800", "credits = -800", 1)
    )
    monkeypatch.setenv("PLASMAART_CATALOG_FILE", str(broken))
    code, out = invoke(run, "migrate")
    assert code == 2
    assert "credits" in out
    assert "greater than 0" in out
    assert str(broken) in out

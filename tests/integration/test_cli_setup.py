"""Start-up as an operator meets it: ``serve``, ``worker`` and ``migrate``
against an unmigrated or unreachable database, and ``plasmaart doctor``."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from plasmaart.cli import app
from plasmaart.db.engine import create_database
from plasmaart.db.migrate import head_revision, is_up_to_date, upgrade
from tests.support.doctor_table import levels, parse_table
from tests.support.pgserver import free_port

_names = itertools.count()


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = False


@pytest.fixture
def empty_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A database with no schema at all."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    admin_url: str = request.getfixturevalue("pg_admin_url")
    name = f"cli{os.getpid()}_{next(_names)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("PLASMAART_", "STRIPE_")) or name in ("DATABASE_URL", "FAL_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PLASMAART_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("PLASMAART_LOG_FORMAT", "text")
    # A terminal wide enough that the doctor's table wraps nothing.
    monkeypatch.setenv("COLUMNS", "1000")
    return monkeypatch


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The one API process's server and the worker's loop replaced: a serve
    or a worker that gets this far returns at once (serve records its
    ``host`` and ``port``, the worker ``{"worker": True}``)."""
    from plasmaart import serving
    from plasmaart.worker import Worker

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        serving, "serve_one", lambda _app, _settings, **kwargs: calls.append(kwargs)
    )
    monkeypatch.setattr(Worker, "run_until_signalled", lambda _self: calls.append({"worker": True}))
    return calls


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    # Only a deliberate exit: an exception escaping would be a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _revision(url: str) -> str | None:
    db = create_database(url)
    try:
        with db.engine.connect() as conn:
            from plasmaart.db.migrate import current_revision

            return current_revision(conn)
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unmigrated_database_is_refused_at_start_up(
    env: pytest.MonkeyPatch, empty_url: str, served: list[dict[str, Any]], command: str
) -> None:
    env.setenv("DATABASE_URL", empty_url)
    env.setenv("PLASMAART_AUTO_MIGRATE", "false")
    code, out = invoke(command)
    assert code == 1
    assert out.strip() == (
        f"error: the database is not migrated (at no revision, needs {head_revision()}): "
        f"run `plasmaart migrate` (database {empty_url}"
        "; PLASMAART_AUTO_MIGRATE=true migrates at start-up)"
    )
    assert served == []
    assert _revision(empty_url) is None


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_partly_migrated_database_says_where_it_is(
    env: pytest.MonkeyPatch, empty_url: str, served: list[dict[str, Any]]
) -> None:
    db = create_database(empty_url)
    upgrade(db, "0005")
    db.dispose()
    env.setenv("DATABASE_URL", empty_url)
    env.setenv("PLASMAART_AUTO_MIGRATE", "false")
    code, out = invoke("serve")
    assert code == 1
    assert f"the database is not migrated (at 0005, needs {head_revision()})" in out
    assert served == []
    # Migrating makes it servable.
    code, out = invoke("migrate")
    assert code == 0, out
    assert invoke("serve")[0] == 0
    assert len(served) == 1


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_with_auto_migrate_serve_migrates_instead(
    env: pytest.MonkeyPatch, empty_url: str, served: list[dict[str, Any]]
) -> None:
    env.setenv("DATABASE_URL", empty_url)
    env.setenv("PLASMAART_AUTO_MIGRATE", "true")
    code, out = invoke("serve", "--port", "8123")
    assert code == 0, out
    assert served[0]["port"] == 8123
    db = create_database(empty_url)
    assert is_up_to_date(db)
    db.dispose()


@pytest.mark.postgres
def test_postgres_does_not_auto_migrate_by_default(
    env: pytest.MonkeyPatch, pg_admin_url: str, served: list[dict[str, Any]]
) -> None:
    name = f"cli{os.getpid()}_{next(_names)}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    env.setenv("DATABASE_URL", pg_admin_url.rsplit("/", 1)[0] + f"/{name}")
    code, out = invoke("serve")
    assert code == 1
    assert "run `plasmaart migrate`" in out
    assert served == []


def test_a_database_newer_than_the_code_is_named_as_such(
    env: pytest.MonkeyPatch, tmp_path: Path, served: list[dict[str, Any]]
) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    db = create_database(url)
    upgrade(db)
    with db.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    db.dispose()
    env.setenv("DATABASE_URL", url)
    env.setenv("PLASMAART_AUTO_MIGRATE", "false")
    code, out = invoke("serve")
    assert code == 1
    assert "is at revision 9999, which this version of PlasmaArt does not know" in out
    assert served == []


def test_migrate_with_postgres_unreachable_prints_one_line(env: pytest.MonkeyPatch) -> None:
    port = free_port()  # nobody listens there
    env.setenv("DATABASE_URL", f"postgresql://ops:s3cret-pass@127.0.0.1:{port}/plasmaart")
    for command in ("migrate", "serve", "ledger"):
        args = ["ledger", "verify"] if command == "ledger" else [command]
        code, out = invoke(*args)
        assert code == 1
        lines = out.strip().splitlines()
        assert len(lines) == 1, out
        assert lines[0].startswith(
            "error: cannot reach the database "
            f"postgresql+psycopg://ops:***@127.0.0.1:{port}/plasmaart: "
        )
        assert "refused" in lines[0].lower()
        assert "s3cret" not in out
        assert "Traceback" not in out


def test_migrate_with_sqlite_unreachable_prints_one_line(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env.setenv("DATABASE_URL", f"sqlite:///{blocker}/plasmaart.db")
    code, out = invoke("migrate")
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(
        f"error: cannot reach the database sqlite:///{blocker}/plasmaart.db: "
    )


# -- the support address -----------------------------------------------------


def _cli_warnings(out: str) -> list[str]:
    """The warnings ``serve`` logged (text format: "<time> WARNING plasmaart.cli: …")."""
    return [
        line.split("plasmaart.cli: ", 1)[1]
        for line in out.splitlines()
        if " WARNING plasmaart.cli: " in line
    ]


def test_serve_warns_when_stripe_billing_keeps_the_default_support_address(
    env: pytest.MonkeyPatch, database_url: str, served: list[dict[str, Any]]
) -> None:
    env.setenv("DATABASE_URL", database_url)
    env.setenv("PLASMAART_BILLING", "stripe")
    env.setenv("STRIPE_SECRET_KEY", "sk_test_x")
    env.setenv("STRIPE_WEBHOOK_SECRET", "whsec_x")
    code, out = invoke("serve")
    assert code == 0, out
    warnings = _cli_warnings(out)
    assert len(warnings) == 1, out
    assert warnings[0].startswith(
        "PLASMAART_SUPPORT_EMAIL is still PlasmaArt's default (neonstudioscontact@gmail.com) "
        "while billing is stripe"
    )
    env.setenv("PLASMAART_SUPPORT_EMAIL", "help@example.com")
    code, out = invoke("serve")
    assert (code, _cli_warnings(out)) == (0, [])
    assert len(served) == 2


def test_serve_on_loopback_with_sandbox_billing_does_not_warn(
    env: pytest.MonkeyPatch, database_url: str, served: list[dict[str, Any]]
) -> None:
    env.setenv("DATABASE_URL", database_url)
    code, out = invoke("serve")
    assert (code, _cli_warnings(out)) == (0, [])
    code, out = invoke("serve", "--host", "0.0.0.0")  # noqa: S104
    warnings = _cli_warnings(out)
    assert len(warnings) == 1, out
    assert "while it listens on 0.0.0.0" in warnings[0]
    assert len(served) == 2


# -- plasmaart doctor ------------------------------------------------------------


def _findings(out: str) -> dict[str, list[str]]:
    rows, _summary = parse_table(out)
    return levels(rows)


def _last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_doctor_on_the_embedded_setup_is_all_good(
    env: pytest.MonkeyPatch, database_url: str, backend: str
) -> None:
    env.setenv("DATABASE_URL", database_url)
    code, out = invoke("doctor")
    assert code == 0, out
    found = _findings(out)
    # PostgreSQL may serve from several machines: their rate limits want Redis.
    assert found.pop("redis") == (["ok"] if backend == "sqlite" else ["warning"])
    assert found == {
        topic: ["ok"]
        for topic in (
            "catalog",
            "database",
            "migrations",
            "clock",
            "storage",
            "mail",
            "billing",
            "provider",
            "public url",
            "trusted proxies",
            "support address",
        )
    }
    assert _last_line(out) == ("all good" if backend == "sqlite" else "0 errors, 1 warning")
    rows, _ = parse_table(out)
    assert {row.check: row.finding for row in rows}["migrations"] == (
        f"at the head ({head_revision()})"
    )
    # A media folder that exists gets one object written and deleted, and
    # keeps nothing of it.
    media = Path(os.environ["PLASMAART_VAR_DIR"]) / "media"
    media.mkdir(parents=True)
    code, out = invoke("doctor", "--json")
    assert code == 0, out
    checks = json.loads(out)["checks"]
    assert {"check": "storage", "status": "ok", "finding": f"{media}: writable", "fix": ""} in (
        checks
    )
    assert [path.name for path in media.rglob("*")] == [".meta"]


def test_doctor_warns_of_a_production_setup_with_the_default_support_address(
    env: pytest.MonkeyPatch, database_url: str
) -> None:
    env.setenv("DATABASE_URL", database_url)
    env.setenv("PLASMAART_HOST", "0.0.0.0")  # noqa: S104
    code, out = invoke("doctor")
    assert code == 0, out  # warnings only
    assert _findings(out)["support address"] == ["warning"]
    assert "while it listens on 0.0.0.0" in parse_table(out)[0][-1].finding
    env.setenv("PLASMAART_SUPPORT_EMAIL", "help@example.com")
    code, out = invoke("doctor")
    assert (code, _findings(out)["support address"]) == (0, ["ok"])


def test_doctor_finds_missing_stripe_keys_and_an_unmigrated_database(
    env: pytest.MonkeyPatch, empty_url: str, backend: str
) -> None:
    env.setenv("DATABASE_URL", empty_url)
    env.setenv("PLASMAART_AUTO_MIGRATE", "false")
    env.setenv("PLASMAART_BILLING", "stripe")
    env.setenv("STRIPE_SECRET_KEY", "sk_live_x")
    code, out = invoke("doctor")
    assert code == 1
    rows, summary = parse_table(out)
    found = levels(rows)
    # A SQLite file is not made by looking; a PostgreSQL database answers.
    schema = "database" if backend == "sqlite" else "migrations"
    assert found[schema] == ["error"]
    assert {row.fix for row in rows if row.check == schema} == {
        "run `plasmaart migrate`"
        if backend == "sqlite"
        else "run `plasmaart migrate` (or PLASMAART_AUTO_MIGRATE=true to migrate at start-up)"
    }
    assert found["billing"] == ["warning", "error"]  # a live key on the sandbox; no secret
    assert "STRIPE_WEBHOOK_SECRET is not set" in " ".join(row.finding for row in rows)
    assert found["support address"] == ["warning"]
    assert summary.startswith("2 errors, ")
    # Nothing was made or migrated by looking.
    if backend == "sqlite":
        assert not Path(empty_url.removeprefix("sqlite:///")).exists()
    else:
        assert _revision(empty_url) is None
    # With auto-migrate on, start-up will migrate it: not an error.
    env.setenv("PLASMAART_AUTO_MIGRATE", "true")
    env.setenv("STRIPE_WEBHOOK_SECRET", "whsec_x")
    env.setenv("PLASMAART_SUPPORT_EMAIL", "help@example.com")
    code, out = invoke("doctor")
    assert (code, _findings(out)[schema]) == (0, ["ok"]), out


def test_doctor_finds_an_unreachable_database_and_unwritable_storage(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    env.setenv("DATABASE_URL", f"postgresql://ops:s3cret@127.0.0.1:{port}/plasmaart")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env.setenv("PLASMAART_STORAGE_DIR", str(blocker))
    code, out = invoke("doctor")
    assert code == 1
    rows, _ = parse_table(out)
    found = levels(rows)
    assert (found["database"], found["storage"]) == (["error"], ["error"])
    # What depends on the database is not asked.
    assert "migrations" not in found
    assert "clock" not in found
    said = {row.check: row.finding for row in rows}
    assert (
        f"cannot reach the database postgresql+psycopg://ops:***@127.0.0.1:{port}"
        in said["database"]
    )
    assert f"{blocker} is not writable" in said["storage"]
    assert "s3cret" not in out


def test_doctor_with_a_bad_setting_exits_2(env: pytest.MonkeyPatch) -> None:
    env.setenv("PLASMAART_BILLING", "paypal")
    code, out = invoke("doctor")
    assert code == 2
    assert "PLASMAART_BILLING" in out

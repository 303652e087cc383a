"""The operator's first hour at the ``plasmaart`` command: help that reads as
it should, the examples it gives actually running, giving an existing user
the admin role or a new password, and ``generate`` with no server to talk to.
On SQLite and PostgreSQL wherever a database is touched."""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from plasmaart.cli import app
from plasmaart.config import Settings
from plasmaart.db.engine import create_database
from plasmaart.db.tables import audit_log, users
from tests.support.pgserver import free_port

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


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


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input, env=WIDE, prog_name="plasmaart")
    return result.exit_code, result.output


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of ``plasmaart``, as the words that name it."""
    paths: list[tuple[str, ...]] = [()]
    pending: list[tuple[tuple[str, ...], click.Command]] = [((), typer.main.get_command(app))]
    while pending:
        path, command = pending.pop()
        for name, sub in getattr(command, "commands", {}).items():
            paths.append((*path, name))
            pending.append(((*path, name), sub))
    return sorted(paths)


def help_of(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE, prog_name="plasmaart")
    assert result.exit_code == 0, result.output
    return result.output


def test_every_help_text_reads_plainly() -> None:
    paths = command_paths()
    assert ("users", "set-role") in paths
    assert ("users", "set-password") in paths
    for path in paths:
        text = help_of(path)
        # A flag takes no value: nothing like `--no-worker <bool>`.
        assert "<bool>" not in text, path
        # Arguments are named as the docs name them: EMAIL, not {email}.
        assert not re.search(r"\{[a-z_]+\}", text), (path, text)
    assert "Usage: plasmaart credits grant [OPTIONS] EMAIL AMOUNT" in help_of(("credits", "grant"))
    assert "Usage: plasmaart users set-role [OPTIONS] EMAIL ROLE" in help_of(("users", "set-role"))
    serve = help_of(("serve",))
    assert re.search(r"--no-worker\s+No embedded worker", serve)


@pytest.mark.parametrize("path", [("users", "create"), ("users", "set-password")])
def test_the_password_option_is_not_marked_required_since_it_is_asked_for(
    path: tuple[str, ...],
) -> None:
    lines = [line for line in help_of(path).splitlines() if "--password" in line]
    assert len(lines) == 1
    assert "[required]" not in lines[0]
    assert "asked for (twice)" in lines[0]


def examples() -> list[list[str]]:
    """The ``Example: plasmaart ...`` lines of every help text, as arguments."""
    found = []
    for path in command_paths():
        for line in help_of(path).splitlines():
            match = re.search(r"Example: plasmaart (.+?)\s*$", line.strip(" │"))
            if match:
                found.append(shlex.split(match.group(1)))
    return found


def test_the_examples_in_the_help_texts_run(run: CliRunner, database_url: str) -> None:
    found = examples()
    assert ["users", "set-role", "ada@example.com", "admin"] in found
    assert ["credits", "grant", "ada@example.com", "-50", "--reason", "refund reversed"] in found
    code, out = invoke(
        run, "users", "create", "--email", "ada@example.com", "--password", "0123456789"
    )
    assert code == 0, out
    # ada has 100 credits, so that the credits example can take 50 back.
    code, out = invoke(run, "credits", "grant", "ada@example.com", "100", "--reason", "start")
    assert code == 0, out
    for args in found:
        code, out = invoke(run, *args)
        assert code == 0, (args, out)
    db = create_database(database_url)
    try:
        with db.read() as conn:
            assert conn.execute(select(users.c.role)).scalar_one() == "admin"
            adjusted = conn.execute(
                select(audit_log.c.data).where(audit_log.c.action == "credits.adjust")
            ).scalars()
            assert [json.loads(data)["amount"] for data in adjusted] == [100, -50]
    finally:
        db.dispose()


def test_a_negative_amount_is_read_wherever_it_is_written(run: CliRunner) -> None:
    invoke(run, "users", "create", "--email", "ada@example.com", "--password", "0123456789")
    invoke(run, "credits", "grant", "ada@example.com", "100", "--reason", "start")
    code, out = invoke(run, "credits", "grant", "ada@example.com", "-10", "--reason", "r")
    assert (code, out.strip()) == (0, "-10 credits for ada@example.com; available now 90")
    # The form with `--` still works, and an option's own value is not moved.
    code, out = invoke(
        run, "credits", "grant", "--reason", "r", "--key", "-7", "ada@example.com", "--", "-5"
    )
    assert (code, out.strip()) == (0, "-5 credits for ada@example.com; available now 85")
    # A mistyped option is still named as such, not taken for the amount.
    code, out = invoke(run, "credits", "grant", "ada@example.com", "--reasn", "r", "-5")
    assert code == 2
    assert "No such option: --reasn" in out


def test_users_create_asks_for_the_password_twice(run: CliRunner, database_url: str) -> None:
    code, out = invoke(
        run,
        "users",
        "create",
        "--email",
        "ada@example.com",
        input="correct horse\ncorrect horsf\ncorrect horse\ncorrect horse\n",
    )
    assert code == 0, out
    assert out.count("Repeat for confirmation") == 2
    assert "do not match" in out
    assert "created user ada@example.com" in out
    # Never matching: nothing is created.
    code, out = invoke(
        run, "users", "create", "--email", "bob@example.com", input="correct horse\nother one\n"
    )
    assert code == 1
    db = create_database(database_url)
    try:
        with db.read() as conn:
            assert list(conn.execute(select(users.c.email)).scalars()) == ["ada@example.com"]
    finally:
        db.dispose()


def test_users_create_on_an_existing_address_points_to_set_role(run: CliRunner) -> None:
    invoke(run, "users", "create", "--email", "ada@example.com", "--password", "0123456789")
    code, out = invoke(
        run, "users", "create", "--email", "ada@example.com", "--password", "0123456789", "--admin"
    )
    assert code == 1
    assert "plasmaart users set-role ada@example.com admin" in out


def audit_entries(database_url: str, action: str) -> list[tuple[str, str, dict[str, object]]]:
    db = create_database(database_url)
    try:
        with db.read() as conn:
            rows = conn.execute(
                select(audit_log.c.actor, audit_log.c.target, audit_log.c.data)
                .where(audit_log.c.action == action)
                .order_by(audit_log.c.id)
            ).all()
    finally:
        db.dispose()
    return [(row.actor, row.target, json.loads(row.data)) for row in rows]


def test_set_role_gives_and_takes_back_the_admin_role(run: CliRunner, database_url: str) -> None:
    invoke(run, "users", "create", "--email", "ada@example.com", "--password", "0123456789")
    code, out = invoke(run, "users", "set-role", "Ada@Example.com", "admin")
    assert (code, out.strip()) == (0, "ada@example.com is now admin")
    code, out = invoke(run, "users", "set-role", "ada@example.com", "admin")
    assert (code, out.strip()) == (0, "ada@example.com is now admin (unchanged)")
    code, out = invoke(run, "users", "set-role", "ada@example.com", "user")
    assert (code, out.strip()) == (0, "ada@example.com is now user")
    entries = audit_entries(database_url, "user.set_role")
    assert [(actor, data["from"], data["to"]) for actor, _target, data in entries] == [
        ("cli", "user", "admin"),
        ("cli", "admin", "admin"),
        ("cli", "admin", "user"),
    ]
    code, out = invoke(run, "users", "set-role", "ada@example.com", "root")
    assert code == 2
    assert "'root' is not one of 'admin', 'user'" in out


@pytest.mark.parametrize("command", ["set-role", "set-password", "suspend", "reinstate"])
def test_an_unknown_address_is_one_clear_line(run: CliRunner, command: str) -> None:
    extra = {
        "set-role": ["admin"],
        "set-password": ["--password", "0123456789"],
        "suspend": ["--reason", "spam"],
        "reinstate": [],
    }[command]
    code, out = invoke(run, "users", command, "nobody@example.com", *extra)
    assert (code, out.strip()) == (1, "error: no user with e-mail nobody@example.com")


def test_set_password_asks_twice_and_ends_the_users_sessions(
    run: CliRunner, database_url: str, tmp_path: Path
) -> None:
    from plasmaart.bootstrap import bootstrap

    invoke(run, "users", "create", "--email", "ada@example.com", "--password", "old password")
    platform = bootstrap(Settings(database_url=database_url, var_dir=tmp_path / "var"))
    try:
        with platform.db.write() as conn:
            ada = platform.accounts.get_by_email(conn, "ada@example.com")
            session = platform.credentials.open_session(conn, ada.id)
            key = platform.credentials.create_api_key(conn, ada.id, "laptop")
        # Refused: the two differ (then nothing more comes), or too short.
        code, out = invoke(
            run, "users", "set-password", "ada@example.com", input="new password\nnew passwore\n"
        )
        assert code == 1
        assert "do not match" in out
        code, out = invoke(run, "users", "set-password", "ada@example.com", input="short\nshort\n")
        assert code == 1
        assert "error: must be at least 10 characters" in out
        with platform.db.write() as conn:
            platform.accounts.authenticate(conn, "ada@example.com", "old password")
            assert platform.credentials.session(conn, session.token) is not None
        code, out = invoke(
            run, "users", "set-password", "ada@example.com", input="new password\nnew password\n"
        )
        assert code == 0, out
        assert out.count("Repeat for confirmation") == 1
        assert "password of ada@example.com changed; their sessions are ended" in out
        with platform.db.write() as conn:
            platform.accounts.authenticate(conn, "ada@example.com", "new password")
            assert platform.credentials.session(conn, session.token) is None
            # API keys are credentials of their own: they keep working.
            assert platform.credentials.user_of_api_key(conn, key.secret) is not None
    finally:
        platform.close()
    entries = audit_entries(database_url, "user.set_password")
    assert [(actor, data) for actor, _target, data in entries] == [
        ("cli", {"email": "ada@example.com"})
    ]


def test_generate_without_a_server_names_the_url_it_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PLASMAART_API_KEY", "pa_live_unused")
    monkeypatch.setenv("PLASMAART_URL", url)
    result = CliRunner().invoke(app, ["generate", "--model", "flux-schnell", "--prompt", "x"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: cannot reach the PlasmaArt server at {url} (connection refused): "
        "start it with `plasmaart serve`, or point --url (PLASMAART_URL) at it"
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)

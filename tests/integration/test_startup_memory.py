"""What ``plasmaart serve`` loads on the default setup (SQLite, sandbox
billing and provider, local storage): none of the large libraries that only
other setups use, so that its memory stays small (docs/configuration.md).
And what replaced Alembic on that path reads the same revisions as Alembic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from plasmaart.db.engine import Database
from plasmaart.db.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    known_revisions,
)

SRC = Path(__file__).resolve().parents[2] / "src"
# Only Stripe billing, PostgreSQL, migrating, S3, fal, videos or the
# ``generate`` command need these.
UNUSED = (
    "stripe",
    "psycopg",
    "alembic",
    "mako",
    "botocore",
    "boto3",
    "httpx",
    "cryptography",
    "imageio_ffmpeg",
)

SERVE = """
import asyncio, json, sys
from plasmaart import cli  # the command's own module, as `plasmaart serve` starts
from plasmaart.bootstrap import bootstrap
from plasmaart.web.app import create_app

platform = bootstrap(require_schema=True)
app = create_app(platform, embedded_worker=False)

async def get(path):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "headers": [],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return sent[0]["status"]

statuses = [asyncio.run(get(path)) for path in ("/healthz", "/readyz", "/v1/models", "/login")]
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"statuses": statuses, "loaded": loaded}))
"""


def test_serve_on_the_default_setup_loads_no_library_it_does_not_use(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PLASMAART_")}
    env.update(
        PYTHONPATH=str(SRC),
        PLASMAART_DATABASE_URL=f"sqlite:///{tmp_path / 'plasmaart.db'}",
        PLASMAART_VAR_DIR=str(tmp_path / "var"),
    )
    migrate = [sys.executable, "-m", "plasmaart.cli", "migrate"]
    subprocess.run(migrate, env=env, check=True, capture_output=True, timeout=120)
    done = subprocess.run(
        [sys.executable, "-c", SERVE, *UNUSED],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [200, 200, 200, 200]
    assert result["loaded"] == []


def test_the_revisions_are_alembics(db: Database) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == script.get_current_head()
    assert known_revisions() == {revision.revision for revision in script.walk_revisions()}
    with db.engine.connect() as conn:
        assert current_revision(conn) == MigrationContext.configure(conn).get_current_revision()
        assert current_revision(conn) == head_revision()


def test_a_database_never_migrated_has_no_revision(tmp_path: Path) -> None:
    from plasmaart.db.engine import create_database

    db = create_database(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with db.engine.connect() as conn:
            assert current_revision(conn) is None
    finally:
        db.dispose()

"""The throwaway PostgreSQL server (``tests/support/pgserver.py``) and its
databases; used as a module: ``postgres.create(server, name)``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from tests.support.pgserver import PgServer, start_server

__all__ = [
    "PgServer",
    "create",
    "drop",
    "dsn",
    "libpq_url",
    "rows",
    "throwaway_server",
    "url",
    "version",
]


def url(server: PgServer, database: str) -> str:
    """SQLAlchemy's URL of ``database`` on ``server``."""
    return server.url.rsplit("/", 1)[0] + f"/{database}"


def dsn(server: PgServer, database: str) -> str:
    """libpq's URL of ``database`` on ``server``."""
    return libpq_url(url(server, database))


def libpq_url(url: str) -> str:
    """libpq's form of SQLAlchemy's URL (``postgresql+psycopg://``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _admin(server: PgServer, *statements: str) -> None:
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def create(server: PgServer, name: str, template: str | None = None) -> str:
    """A new, empty database ``name`` (or a copy of ``template``); its URL."""
    from_template = f' TEMPLATE "{template}"' if template else ""
    _admin(
        server,
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f'CREATE DATABASE "{name}"{from_template}',
    )
    return url(server, name)


def rows(dsn_: str, sql: bytes) -> list[tuple[Any, ...]]:
    """The rows of one statement, on a connection of its own."""
    with psycopg.connect(dsn_) as conn:
        return conn.execute(sql).fetchall()


def drop(server: PgServer, name: str) -> None:
    _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def version(server: PgServer) -> str:
    with psycopg.connect(dsn(server, "postgres")) as conn:
        row = conn.execute(b"SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


@contextmanager
def throwaway_server(workdir: Path) -> Iterator[PgServer]:
    """A server of its own in ``workdir``, stopped at the end."""
    server = start_server(workdir / "pg")
    try:
        yield server
    finally:
        server.stop()

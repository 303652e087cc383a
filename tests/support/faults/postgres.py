"""PostgreSQL going away: a throwaway server of its own for the fault tests
(never the session's shared one, which other tests use meanwhile), and the
faults that stop or restart it.

``FaultPostgres(base)`` runs initdb and ``pg_ctl start`` on a free loopback
port (as tests/support/pgserver.py does for the shared server);
``stop`` and ``restart`` take pg_ctl's shutdown mode, ``immediate`` by
default: every backend is killed at once, as in a crash, and the server
replays its WAL at the next start. Unlike the shared server it runs with
``synchronous_commit`` on, so that a crash loses no commit that was
answered. Every wait is bounded.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import psycopg

from tests.support.pgserver import PgServer, free_port, pg_bindir

UP_WITHIN_S = 60.0


class FaultPostgres:
    """A PostgreSQL server a test may stop and restart at will."""

    def __init__(self, base: Path) -> None:
        datadir = base / "pgdata"
        user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = "postgres"
            account = pwd.getpwnam(user)
            datadir.mkdir(mode=0o700, parents=True)
            os.chown(datadir, account.pw_uid, account.pw_gid)
        self._server = PgServer(pg_bindir(), datadir, free_port(), user)
        self.port = self._server.port
        self._reachable()
        self._server._run(
            "initdb", "-D", str(datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self.running = False
        self.start()

    @property
    def url(self) -> str:
        """The ``postgres`` database on it (SQLAlchemy form)."""
        return self._server.url

    def url_of(self, database: str, *, port: int | None = None) -> str:
        """A database on it, through ``port`` when given (a proxy's)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{port or self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self._server.datadir / "server.log"

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URL."""
        self.wait_accepting()
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def _conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=2"

    def _reachable(self) -> None:
        """Let the postgres user reach the data directory: every parent
        searchable. Again before each pg_ctl: a pytest run of the same user
        elsewhere puts its base folder (/tmp/pytest-of-root) back to 0700."""
        if self._server.user is None:
            return
        for parent in self._server.datadir.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)

    def _pg_ctl(self, *args: str) -> None:
        self._reachable()
        self._server._run("pg_ctl", "-D", str(self._server.datadir), *args)

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m mode``: every connection ends now."""
        self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def start(self) -> None:
        """``pg_ctl start`` (same port, same options), returning once it accepts."""
        # synchronous_commit on, unlike the shared server: with it off, a crash
        # (-m immediate) loses the last commits, answered writes would vanish.
        # fsync stays off: the operating system's cache outlives a killed server.
        options = (
            f"-p {self.port} -k {self._server.datadir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=on -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._pg_ctl("-o", options, "-l", str(self.log_path), "-w", "-t", "60", "start")
        self.running = True
        self.wait_accepting()

    def restart(self, mode: str = "immediate") -> None:
        """``pg_ctl restart -m mode``, returning once it accepts again."""
        # -l: without it the new server would write to pg_ctl's output.
        self._pg_ctl("-m", mode, "-l", str(self.log_path), "-w", "-t", "60", "restart")
        self.running = True
        self.wait_accepting()

    def wait_accepting(self, within_s: float = UP_WITHIN_S) -> None:
        deadline = time.monotonic() + within_s
        while True:
            try:
                with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        if self.running:
            self.stop()


class PostgresRestart:
    """``pg_ctl restart -m immediate`` mid-run: every backend killed, the
    server back once its recovery is done (``inject`` returns then)."""

    kind = "postgres restart"

    def __init__(self, server: FaultPostgres) -> None:
        self.server = server

    def inject(self) -> None:
        self.server.restart("immediate")

    def heal(self) -> None:
        if not self.server.running:
            self.server.start()


class PostgresOutage:
    """The server stopped (``-m immediate``) until ``heal`` starts it again."""

    kind = "postgres down"

    def __init__(self, server: FaultPostgres) -> None:
        self.server = server

    def inject(self) -> None:
        self.server.stop("immediate")

    def heal(self) -> None:
        if not self.server.running:
            self.server.start()

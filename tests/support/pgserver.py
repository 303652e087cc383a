"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl on a free port.

Runs the server as the ``postgres`` system user when the tests run as root
(PostgreSQL refuses to run as root). ``PLASMAART_TEST_PG_URL`` points the tests
at an existing server instead.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import queue
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


def pg_bindir() -> Path:
    override = os.environ.get("PLASMAART_TEST_PG_BIN")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the 'postgresql' "
        "package (.ci/run does) or set PLASMAART_TEST_PG_BIN"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    bindir: Path
    datadir: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-l",
            str(self.datadir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")


def start_server(base: Path) -> PgServer:
    datadir = base / "pgdata"
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        pw = pwd.getpwnam(user)
        base.mkdir(parents=True, exist_ok=True)
        datadir.mkdir(mode=0o700)
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        # The postgres user must be able to reach the data directory.
        for parent in [base, *base.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    server = PgServer(pg_bindir(), datadir, free_port(), user)
    server.start()
    return server


class TemplateClones:
    """Fresh copies of a template database, made ahead of need: a thread
    keeps ``ahead`` clones ready (``CREATE DATABASE … TEMPLATE``, 0.1-0.4 s
    each on a 2-core machine), so the server copies while a test runs
    instead of while the next one waits. Each clone is handed out once
    (``take``); one given back (``give_back``, once its test is over) is
    dropped by the same thread when no clone is wanted, so a session does
    not leave a thousand databases (10 MB and 300 files each) to delete at
    its end. ``close`` stops the thread and drops what is left."""

    WAIT_S = 120.0  # the longest ``take`` waits for a clone
    IDLE_S = 0.05  # how often the thread looks for work when there is none

    def __init__(self, admin_url: str, template: str, *, ahead: int = 2) -> None:
        self.template = template
        self.ahead = ahead
        self._prefix = f"t{os.getpid()}_"
        self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self._ready: queue.Queue[str] = queue.Queue()
        self._used: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        self._failure: Exception | None = None
        self._made = 0
        self._thread = threading.Thread(target=self._run, name="pg-template-clones", daemon=True)
        self._thread.start()

    def take(self) -> str:
        """The name of a database nobody else was given, a copy of the template."""
        deadline = time.monotonic() + self.WAIT_S
        while True:
            try:
                return self._ready.get(timeout=self.IDLE_S)
            except queue.Empty:
                if self._failure is not None:
                    raise RuntimeError(f"cloning {self.template} failed") from self._failure
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no clone of {self.template} within {self.WAIT_S} s"
                    ) from None

    def give_back(self, name: str) -> None:
        """``name`` (from ``take``) is no longer used: drop it."""
        self._used.put(name)

    def _run(self) -> None:
        try:
            with self._admin.connect() as conn:
                while not self._stopping.is_set():
                    if self._ready.qsize() < self.ahead:
                        name = f"{self._prefix}{self._made}"
                        self._made += 1
                        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
                        self._ready.put(name)
                        continue
                    try:
                        used = self._used.get(timeout=self.IDLE_S)
                    except queue.Empty:
                        continue
                    self._drop(conn, used)
        except Exception as exc:  # raised in the test that waits for a clone
            self._failure = exc

    @staticmethod
    def _drop(conn: Connection, name: str) -> None:
        # FORCE ends the connections a test may have left behind (a killed
        # child process's, a pool not yet disposed); nothing uses them now.
        # A database that cannot be dropped stays, as it always did, and goes
        # with the server's data directory.
        try:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except DBAPIError as exc:
            log.warning("test database %s left in place: %s", name, exc)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=self.WAIT_S)
        with self._admin.connect() as conn:
            for left in (self._ready, self._used):
                while True:
                    try:
                        name = left.get_nowait()
                    except queue.Empty:
                        break
                    self._drop(conn, name)
        self._admin.dispose()

"""The processes of ``plasmaart serve``: one API process, or a supervisor and
N API processes sharing one listening socket (``serve --workers N``).

Each API process is a ``GracefulServer``: on SIGTERM or SIGINT it stops
accepting, ends its open ``/v1/events`` streams at once with a ``retry:``
hint (``web/api/events.py`` ``OpenStreams``), lets the requests in flight
finish within ``PLASMAART_SHUTDOWN_TIMEOUT_S``, runs the app's shutdown (the
embedded worker hands its jobs back, the platform closes) and exits 0. It
believes ``X-Forwarded-For`` and ``X-Forwarded-Proto`` only from
``PLASMAART_TRUSTED_PROXIES`` (uvicorn's proxy headers).

With N processes the ``serve`` process is their supervisor (``Supervisor``):
it binds the socket once and starts each API process as
``python -m plasmaart.serving`` with the socket passed down; each builds its
own platform from the environment (the command line's options travel as
``PLASMAART_*`` variables). The processes share the socket's one accept
queue, so a connection waits there for whichever process accepts next, and
none is refused while at least one process serves. Signals to the
supervisor:

* SIGTERM / SIGINT: every process stops gracefully; the supervisor exits 0
  once they have (those still running after the shutdown deadline and a
  margin are killed).
* SIGHUP: a rolling restart, one process at a time: a replacement starts and
  reports ready (it serves) before the process it replaces is told to stop.
  A replacement that fails to start leaves the old process serving and ends
  the restart, with the reason in the log.
* A process that dies is replaced (after a pause if it died young).

The embedded worker (``--no-worker`` absent, ``PLASMAART_EMBEDDED_WORKER``)
runs in the first API process only, so a machine runs
``PLASMAART_WORKER_CONCURRENCY`` jobs at once whatever N is; during a restart
the replacement's worker starts before the old one hands its jobs back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn

from plasmaart.config import Settings
from plasmaart.signals import SignalThread

log = logging.getLogger(__name__)

# How long a new API process may take to serve before it counts as failed.
START_WITHIN_S = 60.0
# Beyond the shutdown deadline, how long a stopping process may take to exit
# (the app's shutdown: the embedded worker's hand-back, closing the platform).
EXIT_MARGIN_S = 15.0
# A process that dies younger than this is replaced only after a pause.
YOUNG_S = 10.0
RESPAWN_PAUSE_S = 2.0
TICK_S = 0.2
# How long a stopping process keeps connections it accepted but that have no
# request under way yet, for that request to arrive.
ACCEPTED_GRACE_S = 0.5
READY = b"r"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What every API process passes uvicorn: the proxies it believes, the
    shutdown deadline, our logging."""
    return {
        "proxy_headers": True,
        "forwarded_allow_ips": settings.trusted_proxies or "127.0.0.1",
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout_s),
        "log_level": settings.log_level.lower(),
        "log_config": None,  # keep our structured logging
    }


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which on its exit signal ends the app's event
    streams at once and may report when it serves (``on_started``)."""

    def __init__(
        self, config: uvicorn.Config, on_started: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, then give the connections accepted just before a
        moment to deliver their first request (uvicorn closes a connection
        with no request under way at once, resetting one whose request is
        still on its way), then uvicorn's graceful shutdown."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await asyncio.sleep(ACCEPTED_GRACE_S)
        await super().shutdown()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags and wakes the loop, which ends
        # the streams (taking locks here could wait forever on the main
        # thread's own).
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:
            self.soon(self._end_streams, sig)

    def soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the server's loop (safe in a signal
        handler: it takes no lock); dropped before the loop runs."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(callback, *args)

    def _end_streams(self, sig: int) -> None:
        streams = getattr(getattr(self.config.app, "state", None), "streams", None)
        ended = streams.end_all() if streams is not None else 0
        log.info("received signal %d: stopping gracefully (%d event stream(s) ended)", sig, ended)

    def run_quietly(self, sockets: list[socket.socket] | None = None) -> None:
        """``run``, then exit normally: uvicorn raises the signal it caught
        again once it has stopped, which must not kill the process."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _signum, _frame: None)
        self.run(sockets=sockets)


def serve_one(app: Any, settings: Settings, *, host: str, port: int) -> None:
    """One API process in the foreground (``serve`` with one process).
    SIGHUP is logged and ignored: a rolling restart needs a supervisor
    (``--workers 2`` or more)."""

    config = uvicorn.Config(app, host=host, port=port, **uvicorn_options(settings))
    server = GracefulServer(config)

    def _hup(_signum: int, _frame: FrameType | None) -> None:
        server.soon(log.warning, "SIGHUP ignored: a rolling restart needs `serve --workers 2`")

    signal.signal(signal.SIGHUP, _hup)
    server.run_quietly()


# -- the supervisor ----------------------------------------------------------


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every API process accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[bytes]
    ready_fd: int
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def close_pipe(self) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = -1


class StartFailed(Exception):
    """An API process exited or did not serve in time."""


class Supervisor:
    """Runs ``workers`` API processes on ``sock`` until SIGTERM/SIGINT."""

    def __init__(
        self,
        sock: socket.socket,
        settings: Settings,
        *,
        workers: int,
        env: Mapping[str, str],
        embedded_worker: bool,
    ) -> None:
        self.sock = sock
        self.settings = settings
        self.workers = workers
        self.env = dict(env)
        self.embedded_worker = embedded_worker
        self.children: list[_Child | None] = [None] * workers
        self._stopping = threading.Event()
        self._restart = threading.Event()
        self._wake = threading.Event()
        self.stop_within_s = settings.shutdown_timeout_s + EXIT_MARGIN_S

    # -- signals -------------------------------------------------------------

    # On the signal thread (plasmaart/signals.py), not in a signal handler.

    def _on_stop(self, signum: int) -> None:
        if not self._stopping.is_set():
            log.info("received signal %d: stopping the API processes", signum)
        self._stopping.set()
        self._wake.set()

    def _on_hup(self, _signum: int) -> None:
        log.info("received SIGHUP: restarting the API processes one by one")
        self._restart.set()
        self._wake.set()

    # -- processes -------------------------------------------------------------

    def _spawn(self, slot: int) -> _Child:
        read_fd, write_fd = os.pipe()
        env = dict(self.env)
        env["PLASMAART_EMBEDDED_WORKER"] = "true" if self.embedded_worker and slot == 0 else "false"
        fd = self.sock.fileno()
        try:
            process = subprocess.Popen(  # noqa: S603 - this interpreter, our module
                [
                    sys.executable,
                    "-m",
                    "plasmaart.serving",
                    "--fd",
                    str(fd),
                    "--ready-fd",
                    str(write_fd),
                    "--parent",
                    str(os.getpid()),
                    "--slot",
                    str(slot),
                ],
                env=env,
                pass_fds=(fd, write_fd),
                # Signals come from the supervisor, not the terminal's group.
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        log.info("started API process %d (slot %d)", process.pid, slot)
        return _Child(slot, process, read_fd)

    def _await_ready(self, child: _Child, within_s: float = START_WITHIN_S) -> None:
        """Wait until ``child`` serves; ``StartFailed`` if it exits first or
        takes longer than ``within_s``, or the supervisor is stopping."""
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartFailed(f"API process {child.pid} did not serve within {within_s:g}s")
            if self._stopping.is_set():
                raise StartFailed("stopping")
            readable, _w, _x = select.select([child.ready_fd], [], [], min(left, TICK_S))
            if readable:
                data = os.read(child.ready_fd, 16)
                child.close_pipe()
                if data.startswith(READY):
                    child.ready = True
                    return
                code = child.process.wait(timeout=within_s)
                raise StartFailed(f"API process {child.pid} exited with code {code}")

    def _stop_child(self, child: _Child) -> int | None:
        """SIGTERM, then wait for the graceful stop (SIGKILL past it)."""
        child.close_pipe()
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        return self._wait_child(child)

    def _wait_child(self, child: _Child) -> int | None:
        """Wait for a process told to stop (SIGKILL past the deadline). Never
        a second SIGTERM: uvicorn takes it for "quit now" and would drop the
        requests in flight, and one arriving while Python finalises kills."""
        try:
            return child.process.wait(timeout=self.stop_within_s)
        except subprocess.TimeoutExpired:
            log.error("API process %d did not stop in time: killed", child.pid)
            child.process.kill()
            return child.process.wait(timeout=10)

    def start(self) -> None:
        """Start every process and wait until each serves."""
        started = [self._spawn(slot) for slot in range(self.workers)]
        self.children = list(started)
        for child in started:
            self._await_ready(child)
        log.info(
            "serving on %s with %d API processes (supervisor %d)",
            _address(self.sock),
            self.workers,
            os.getpid(),
        )

    def restart(self) -> bool:
        """Replace each process in turn; False if it stopped half-way."""
        for slot in range(self.workers):
            if self._stopping.is_set():
                return False
            old = self.children[slot]
            new = self._spawn(slot)
            try:
                self._await_ready(new)
            except StartFailed as failed:
                self._stop_child(new)
                if not self._stopping.is_set():
                    log.error("restart stopped: the replacement failed (%s); kept the old", failed)
                return False
            self.children[slot] = new
            if old is not None:
                code = self._stop_child(old)
                log.info("API process %d replaced by %d (exit %s)", old.pid, new.pid, code)
        log.info("rolling restart done")
        return True

    def _replace_dead(self) -> None:
        for slot, child in enumerate(self.children):
            if child is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            child.close_pipe()
            young = time.monotonic() - child.started_at < YOUNG_S
            log.error("API process %d died (exit %s): replacing it", child.pid, code)
            if young and self._stopping.wait(RESPAWN_PAUSE_S):
                return
            replacement = self._spawn(slot)
            self.children[slot] = replacement
            try:
                self._await_ready(replacement)
            except StartFailed as failed:
                log.error("the replacement of API process %d failed: %s", child.pid, failed)

    def run(self) -> int:
        """Until SIGTERM/SIGINT; the exit code (0 once every process stopped)."""
        handlers: dict[int, Callable[[int], None]] = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_hup,
        }
        with SignalThread(handlers):
            try:
                return self._run()
            finally:
                self.sock.close()

    def _run(self) -> int:
        try:
            self.start()
        except StartFailed as failed:
            if not self._stopping.is_set():
                log.error("could not start the API processes: %s", failed)
                self.stop_all()
                return 1
        while not self._stopping.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._stopping.is_set():
                break
            if self._restart.is_set():
                self._restart.clear()
                self.restart()
                continue
            self._replace_dead()
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        """SIGTERM every process at once, then wait for each."""
        running = [child for child in self.children if child is not None]
        for child in running:
            child.close_pipe()
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        for child in running:
            code = self._wait_child(child)
            log.info("API process %d stopped (exit %s)", child.pid, code)
        log.info("supervisor %d stopped", os.getpid())


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def child_environment(*, host: str | None, port: int | None) -> dict[str, str]:
    """The environment of the API processes: this one's, the command line's
    options as variables, and no migration (the supervisor migrated)."""
    env = dict(os.environ)
    if host:
        env["PLASMAART_HOST"] = host
    if port:
        env["PLASMAART_PORT"] = str(port)
    env["PLASMAART_AUTO_MIGRATE"] = "false"
    return env


# -- one API process under the supervisor -----------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux), so that no API
    process serves on without it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def child_main(argv: list[str] | None = None) -> int:
    """An API process started by the supervisor: its own platform from the
    environment, served on the inherited socket."""
    from plasmaart import logs
    from plasmaart.bootstrap import bootstrap
    from plasmaart.catalog import CatalogError
    from plasmaart.config import ConfigError, load_settings
    from plasmaart.db.migrate import DatabaseNotReady
    from plasmaart.web.app import create_app

    parser = argparse.ArgumentParser(prog="plasmaart.serving")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--slot", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    # Until the server handles them: a stop during start-up ends it cleanly.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = load_settings()
        logs.configure(settings.log_level, json_lines=settings.log_format, buffered=True)
        platform = bootstrap(settings, migrate=False, require_schema=True)
    except (ConfigError, CatalogError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except DatabaseNotReady as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    try:
        try:
            platform.events.start(wait=5)
        except OSError as exc:
            log.error("cannot hear the other processes of the database: %s", exc)
            return 2
        sock = socket.socket(fileno=args.fd)
        ready_fd = args.ready_fd

        def _ready() -> None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, READY)
                os.close(ready_fd)

        app = create_app(platform)
        config = uvicorn.Config(app, **uvicorn_options(settings))
        server = GracefulServer(config, on_started=_ready)
        log.info("API process %d starting (slot %d)", os.getpid(), args.slot)
        server.run_quietly(sockets=[sock])
        return 0
    finally:
        platform.close()
        logs.shutdown()


if __name__ == "__main__":
    sys.exit(child_main())

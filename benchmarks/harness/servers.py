"""A server in its own process: started with its output in a log, ready when
it answers ``/healthz``, stopped with SIGINT (uvicorn's graceful shutdown,
after which a profile is written) and killed if it does not stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support.pgserver import free_port

from benchmarks.harness import REPO
from benchmarks.harness.fixtures import Context
from benchmarks.harness.session import progress

# The real app, the bare app and the worker, each in its own process.
SERVERS = REPO / "benchmarks" / "generation_servers.py"
SERVER_START_TIMEOUT = 60.0
# uvicorn's graceful shutdown takes up to 5 s, then the profile is written.
SERVER_STOP_TIMEOUT = 15.0
# A process may end on the signal that stopped it.
STOPPED = (0, -signal.SIGINT, -signal.SIGTERM)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until_ready(base: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    give_up = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode} at start:\n{tail(log_path)}"
            )
        with suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {SERVER_START_TIMEOUT:.0f} s")


def stop_process(process: subprocess.Popen[bytes]) -> bool:
    """Stop the process (SIGINT); whether it had to be killed."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True
    return False


@contextmanager
def logged_process(
    what: str,
    command: Sequence[str],
    log_path: Path,
    *,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in its own process (a new session), its output in
    ``log_path``, stopped at the end; an error if it failed (``what`` names it)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    try:
        yield process
    finally:
        killed = stop_process(process)
    if killed:
        progress(f"  {what} did not stop within {SERVER_STOP_TIMEOUT:g} s: killed")
    elif process.returncode not in STOPPED:
        raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail(log_path)}")


def server_command(context: Context, app: str, url: str, port: int, *options: str) -> list[str]:
    """``generation_servers.py`` running ``app`` ("plasmaart", "bare" or
    "worker") on ``url`` with the run's folder and catalog."""
    return [
        sys.executable,
        str(SERVERS),
        app,
        "--database-url",
        url,
        "--port",
        str(port),
        "--var-dir",
        str(context.workdir / "var"),
        "--catalog-file",
        str(context.catalog),
        *options,
    ]


@dataclass(frozen=True)
class Server:
    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stuck_in(self) -> Counter[str]:
        """Where the server's threads are, by the innermost PlasmaArt frame of
        each: the server dumps its threads' stacks on SIGUSR1 (faulthandler)."""
        start = self.log_path.stat().st_size
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        with self.log_path.open("rb") as log:
            log.seek(start)
            dump = log.read().decode(errors="replace")
        places: Counter[str] = Counter()
        for thread in re.split(r"^(?:Current thread|Thread) 0x", dump, flags=re.MULTILINE)[1:]:
            # Most recent call first: the innermost PlasmaArt frames come first.
            frames = [
                f"{path.removeprefix('plasmaart/')}:{line} ({function})"
                for path, line, function in re.findall(
                    r'File ".*?/src/(plasmaart/[^"]+)", line (\d+) in (\w+)', thread
                )
            ]
            if not frames:
                continue
            # The database layer's frame says what it waits for (a connection,
            # the write lock), its caller who waits.
            caller = next((f for f in frames if not f.startswith("db/")), None)
            if frames[0].startswith("db/") and caller is not None:
                places[f"{caller} → {frames[0]}"] += 1
            else:
                places[frames[0]] += 1
        return places


@contextmanager
def serve(
    context: Context, app: str, url: str, profile_out: Path | None = None
) -> Iterator[Server]:
    """Run ``app`` of ``generation_servers.py`` in its own process on a free
    port; with ``profile_out``, profiled (the profile written there at the end)."""
    port = free_port()
    log_path = context.workdir / f"server-{app}-{port}.log"
    options = [] if profile_out is None else ["--profile-out", str(profile_out)]
    command = server_command(context, app, url, port, *options)
    with logged_process(f"the {app} server", command, log_path) as process:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process, log_path)
        yield Server(base, process, log_path)

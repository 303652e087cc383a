"""Events, wake-ups and cache invalidations between the processes of one
SQLite file (db/peers.py, eventbus.py ``LocalSocketEventBus``, caches.py):
two ``plasmaart serve --no-worker`` processes and a ``plasmaart worker``
process, all real, on one database file.

- A stream served by one API process hears the worker process's
  ``generation.updated`` (the job's end, which only the worker announces).
- A job queued through one API process wakes the wait of another process's
  worker loop at once (not at its next poll).
- A session revoked through one API process is refused by the other at once
  (its cache keeps a session 30 s while it hears invalidations).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from plasmaart.bootstrap import bootstrap
from plasmaart.config import Settings
from plasmaart.db.peers import EVENT as PEER_EVENT
from plasmaart.db.peers import RESYNC as PEER_RESYNC
from plasmaart.db.peers import SEND_WAIT_S, STALLED_S, SUFFIX, PeerChannel
from plasmaart.eventbus import LocalSocketEventBus
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.live_server import open_stream
from tests.support.processes import ServerProcess, WorkerProcess, child_env

WAIT_S = 15.0
# A wake-up arrives within this, far less than any poll it replaces.
WAKE_WITHIN_S = 1.0
REFUSED_WITHIN_S = 0.25


@dataclass
class Topology:
    platform: Platform  # the test's own process on the same file
    first: ServerProcess
    second: ServerProcess
    worker: WorkerProcess


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("peers")
    var_dir = root / "var"
    database_url = f"sqlite:///{var_dir / 'plasmaart.db'}"
    platform = bootstrap(Settings(database_url=database_url, var_dir=var_dir), migrate=True)
    env = child_env(database_url, var_dir)
    worker = WorkerProcess("worker", env, root, concurrency=2)
    first = ServerProcess("first", env, root)
    second = ServerProcess("second", env, root)
    try:
        with ThreadPoolExecutor(2) as starting:  # both start at once
            list(starting.map(ServerProcess.start, (first, second)))
        assert worker.process.poll() is None, worker.log()
        yield Topology(platform, first, second, worker)
    finally:
        for process in (first, second):
            process.close()
        worker.close()
        platform.close()


def submit(base_url: str, user: TestUser, prompt: str, delay_s: float = 0.2) -> str:
    answer = httpx.post(
        f"{base_url}/v1/generations",
        json={
            "model": "flux-schnell",
            "prompt": prompt,
            "params": {"sandbox": {"delay_s": delay_s}},
        },
        headers=user.auth,
        timeout=WAIT_S,
    )
    assert answer.status_code == 201, answer.text
    generation_id: str = answer.json()["id"]
    return generation_id


def test_a_stream_hears_the_worker_process(topology: Topology) -> None:
    user = make_user(topology.platform, "stream@example.com", plan="starter")
    with open_stream(topology.first.url, user.auth) as stream:
        generation_id = submit(topology.second.url, user, "heard across processes")
        seen: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            event = stream.next_event()
            if event.event == "generation.updated" and event.data["id"] == generation_id:
                seen.append(event.data["status"])
                if event.data["status"] == "succeeded":
                    break
        # Queued in the second API process, run and ended in the worker's:
        # both announced on the first API process's stream.
        assert seen[0] == "queued", seen
        assert seen[-1] == "succeeded", seen
        assert "running" in seen, seen


def test_a_job_queued_in_one_process_wakes_another(topology: Topology) -> None:
    user = make_user(topology.platform, "wake@example.com", plan="starter")
    wakeups = topology.platform.wakeups
    wakeups.start(wait=5)
    assert wakeups.listening
    claimable = wakeups.claimable
    claimable.clear()
    started = time.monotonic()
    submit(topology.first.url, user, "wake up")
    # Set by the datagram the first API process sends after its commit.
    assert claimable.wait(WAKE_WITHIN_S), "the queued job woke no other process"
    assert time.monotonic() - started < WAKE_WITHIN_S


def test_a_session_revoked_in_one_process_is_refused_by_another_at_once(
    topology: Topology,
) -> None:
    user = make_user(topology.platform, "session@example.com")
    with httpx.Client(base_url=topology.first.url, timeout=WAIT_S) as first:
        logged_in = first.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
        assert logged_in.status_code == 200, logged_in.text
        cookies = dict(first.cookies)
    with httpx.Client(base_url=topology.second.url, timeout=WAIT_S, cookies=cookies) as second:
        # The second process now keeps the session in its cache.
        for _ in range(3):
            assert second.get("/v1/me").status_code == 200
        sessions = httpx.get(f"{topology.first.url}/v1/sessions", headers=user.auth, timeout=WAIT_S)
        assert sessions.status_code == 200, sessions.text
        (session,) = sessions.json()["data"]
        revoked = httpx.delete(
            f"{topology.first.url}/v1/sessions/{session['id']}", headers=user.auth, timeout=WAIT_S
        )
        assert revoked.status_code == 204, revoked.text
        # At once (the datagram is sent after the commit, before the answer;
        # the other process reads it on a thread of its own): well within
        # the 0.5 s an unheard process would keep the session.
        deadline = time.monotonic() + REFUSED_WITHIN_S
        while (status := second.get("/v1/me").status_code) == 200:
            assert time.monotonic() < deadline, "the other process still accepts the session"
            time.sleep(0.01)
        assert status == 401


def test_every_process_has_its_socket_beside_the_database(topology: Topology) -> None:
    assert isinstance(topology.platform.events, LocalSocketEventBus)
    folder = Path(str(topology.platform.db.engine.url.database) + "-peers")
    sockets = sorted(path.name for path in folder.glob("*.sock"))
    pids = {name.split("-")[0] for name in sockets}
    processes = (topology.first.process, topology.second.process, topology.worker.process)
    for process in processes:
        assert process is not None
        assert str(process.pid) in pids, sockets


def test_a_gone_process_is_forgotten_and_a_stuck_one_resyncs(tmp_path: Path) -> None:
    """The channel itself: a socket left by a killed process is removed on
    the next send; a process that does not read costs a sender at most one
    wait a second, and hears ``resync`` when it reads again."""
    folder = tmp_path / "db.sqlite-peers"
    sender = PeerChannel(folder)
    listener = PeerChannel(folder)
    heard: list[tuple[bytes, bytes]] = []
    listener.on(PEER_EVENT, lambda payload: heard.append((PEER_EVENT, payload)))
    listener.on(PEER_RESYNC, lambda payload: heard.append((PEER_RESYNC, payload)))
    listener.start()
    # A socket whose process died without removing it.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / f"999999-dead{SUFFIX}"))
    dead.close()
    # A socket whose process is alive but never reads.
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck_name = f"999998-stuck{SUFFIX}"
    stuck.bind(str(folder / stuck_name))
    stuck.setblocking(False)
    try:
        started = time.monotonic()
        for n in range(40):  # more than a socket's queue holds
            sender.send(PEER_EVENT, str(n).encode())
        # One wait of SEND_WAIT_S for the stuck peer, then skipped: not 40.
        assert time.monotonic() - started < 4 * SEND_WAIT_S + 1
        assert not (folder / f"999999-dead{SUFFIX}").exists(), "the dead socket was removed"
        deadline = time.monotonic() + WAIT_S
        while len(heard) < 40:
            assert time.monotonic() < deadline, heard
            time.sleep(0.01)
        assert [payload for _kind, payload in heard] == [str(n).encode() for n in range(40)]
        # The stuck process reads what it could hold, then the next message
        # it gets is preceded by a resync.
        queued = []
        while True:
            try:
                queued.append(stuck.recv(100))
            except BlockingIOError:
                break
        assert 0 < len(queued) < 40
        time.sleep(STALLED_S)
        sender.send(PEER_EVENT, b"after")
        assert stuck.recv(100) == PEER_RESYNC
        assert stuck.recv(100) == PEER_EVENT + b"after"
    finally:
        stuck.close()
        listener.close()
        sender.close()
    assert not (folder / listener.name).exists(), "a closed channel removes its socket"


def test_threads_starting_a_channel_at_once_bind_it_once(tmp_path: Path) -> None:
    """The worker's loop and its wake-up listener start the bus together."""
    for attempt in range(20):
        channel = PeerChannel(tmp_path / f"db{attempt}.sqlite-peers")
        failures: list[BaseException] = []

        def start(channel: PeerChannel = channel, failures: list[BaseException] = failures) -> None:
            try:
                channel.start()
            except BaseException as exc:  # an OSError: the name bound twice
                failures.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        try:
            assert failures == []
            assert channel.receiving
        finally:
            channel.close()

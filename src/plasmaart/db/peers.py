"""The processes of one SQLite database file, told of each other's events
and cache invalidations through Unix datagram sockets (the SQLite
counterpart of PostgreSQL's LISTEN/NOTIFY, ``listener.py``).

Every process that receives (an API process, a worker: ``start``) binds one
socket in a folder beside the database, ``<database>-peers/`` (like the
sandbox clock's ``<database>-clock`` stamp), and tells the processes already
there that it arrived (a ``hello``). A message is one datagram to each
peer's socket: the folder is listed when first needed, again when it
changed or a second went by, and a peer that hellos is added at once. A
socket that refuses belongs to a process that is gone: it is removed.
Sending needs no socket of one's own, so a command that never receives (the
CLI suspending a user) still evicts the caches of every running process.

Best effort, like NOTIFY: a peer whose queue stays full for ``SEND_WAIT_S``
misses the message, and is sent ``resync`` (events may have been missed,
drop every cache entry) with the next message that reaches it.

The folder is made readable by its owner only: anyone who can write into it
could send events to users' streams. API and worker processes of one
database run as one user.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# Kinds of message: the first byte of a datagram.
EVENT: Final = b"e"
CACHE: Final = b"c"
RESYNC: Final = b"r"
_HELLO: Final = b"h"
# A datagram's largest payload (the kernel allows about 200 kB by default).
MAX_PAYLOAD: Final = 60_000
# How long a send waits for a peer whose queue is full; a peer that made it
# wait that long is skipped (and owed a resync) for STALLED_S.
SEND_WAIT_S: Final = 0.2
STALLED_S: Final = 1.0
# How often the folder is listed again at most, and at least.
RELIST_S: Final = 1.0
# How often the receiving thread looks at its stop flag.
POLL_S: Final = 0.25
# The longest socket path Linux binds (sun_path holds 108 bytes).
_SUN_PATH: Final = 107
SUFFIX: Final = ".sock"

Handler = Callable[[bytes], None]


def peers_folder(database: str) -> Path:
    """The folder of the sockets of the processes of a SQLite file."""
    return Path(f"{database}-peers")


class PeerChannel:
    """This process's place among the processes of one SQLite file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self._lock = threading.Lock()
        # Held through a start or a close: threads may start it at once.
        self._life = threading.Lock()
        self._handlers: dict[bytes, list[Handler]] = {}
        self._on_start: list[Callable[[], None]] = []
        self._peers: set[str] = set()
        self._owed: set[str] = set()  # peers that missed a message
        self._stalled: dict[str, float] = {}  # peer: skipped until (monotonic)
        self._listed_at = -RELIST_S
        self._listed_mtime = -1
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dir_fd: int | None = None

    # -- handlers ----------------------------------------------------------

    def on(self, kind: bytes, handler: Handler) -> None:
        """Call ``handler(payload)`` for every message of ``kind`` received
        (on the receiving thread; it must not block). ``RESYNC`` carries no
        payload."""
        with self._lock:
            self._handlers.setdefault(kind, []).append(handler)

    def on_start(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time this process starts receiving:
        whatever was sent before is not heard."""
        with self._lock:
            self._on_start.append(callback)

    @property
    def receiving(self) -> bool:
        return self._receiver is not None

    # -- sending -------------------------------------------------------------

    def send(self, kind: bytes, payload: bytes) -> None:
        """``payload`` to every other process of the database; never raises."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"a peer message holds at most {MAX_PAYLOAD} bytes")
        try:
            peers = self._current_peers()
        except OSError as exc:
            log.warning("cannot list the peer processes in %s: %s", self.folder, exc)
            return
        now = time.monotonic()
        for peer in peers:
            if self._stalled.get(peer, 0.0) > now:
                self._owed.add(peer)  # it will resync once it reads again
                continue
            if peer in self._owed and self._deliver(peer, RESYNC):
                self._owed.discard(peer)
            if not self._deliver(peer, kind + payload) and peer in self._peers:
                self._owed.add(peer)

    def _deliver(self, peer: str, datagram: bytes) -> bool:
        """One datagram to ``peer``; False if it could not be queued (the
        peer is dropped if its process is gone)."""
        sender = self._sending_socket()
        try:
            sender.sendto(datagram, self._address(peer))
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            self._forget(peer, unlink=True)
        except TimeoutError:
            self._stalled[peer] = time.monotonic() + STALLED_S
            log.warning("peer process %s is not reading its messages; it will resync", peer)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                self._forget(peer, unlink=True)
            else:
                log.warning("could not tell peer process %s: %s", peer, exc)
        return False

    def _forget(self, peer: str, *, unlink: bool) -> None:
        with self._lock:
            self._peers.discard(peer)
            self._owed.discard(peer)
            self._stalled.pop(peer, None)
        if unlink:
            with contextlib.suppress(OSError):
                (self.folder / peer).unlink()

    def _sending_socket(self) -> socket.socket:
        with self._lock:
            if self._sender is None:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.settimeout(SEND_WAIT_S)
                self._sender = sender
            return self._sender

    def _current_peers(self) -> list[str]:
        now = time.monotonic()
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return []
        with self._lock:
            fresh = mtime == self._listed_mtime and now - self._listed_at < RELIST_S
            if fresh:
                return sorted(self._peers)
        names = {entry for entry in os.listdir(self.folder) if entry.endswith(SUFFIX)} - {self.name}
        with self._lock:
            self._peers = names
            self._owed &= names
            self._listed_at, self._listed_mtime = now, mtime
            return sorted(names)

    def _address(self, name: str) -> str:
        path = str(self.folder / name)
        if len(path.encode()) <= _SUN_PATH:
            return path
        # Too long for sun_path: reach the folder through a descriptor of it.
        with self._lock:
            if self._dir_fd is None:
                self._dir_fd = os.open(self.folder, os.O_PATH | os.O_DIRECTORY)
            return f"/proc/self/fd/{self._dir_fd}/{name}"

    # -- receiving -----------------------------------------------------------

    def start(self) -> None:
        """Bind this process's socket and receive (once). Raises ``OSError``
        when the folder or the socket cannot be made: a process that cannot
        hear the others must not run as if it did."""
        with self._life:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._receiver is not None:
                return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.bind(self._address(self.name))
        except OSError:
            receiver.close()
            raise
        receiver.settimeout(POLL_S)
        self._stopping = threading.Event()
        thread = threading.Thread(
            target=self._receive,
            args=(receiver, self._stopping),
            name="plasmaart-peers",
            daemon=True,
        )
        with self._lock:
            self._receiver = receiver
            self._thread = thread
            callbacks = list(self._on_start)
        thread.start()
        for callback in callbacks:
            callback()
        self.send(_HELLO, self.name.encode())

    def close(self) -> None:
        """Stop receiving and remove this process's socket (sending still works)."""
        with self._life:
            self._close()

    def _close(self) -> None:
        with self._lock:
            receiver, self._receiver = self._receiver, None
            thread, self._thread = self._thread, None
            sender, self._sender = self._sender, None
            dir_fd, self._dir_fd = self._dir_fd, None
        self._stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if receiver is not None:
            receiver.close()
            with contextlib.suppress(OSError):
                (self.folder / self.name).unlink()
        if sender is not None:
            sender.close()
        if dir_fd is not None:
            os.close(dir_fd)

    def _receive(self, receiver: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                datagram = receiver.recv(MAX_PAYLOAD + 1)
            except TimeoutError:
                continue
            except OSError:
                if stopping.is_set():
                    return
                log.exception("the peer socket failed")
                stopping.wait(POLL_S)
                continue
            if datagram:
                self._dispatch(datagram[:1], datagram[1:])

    def _dispatch(self, kind: bytes, payload: bytes) -> None:
        if kind == _HELLO:
            name = payload.decode(errors="replace")
            if name.endswith(SUFFIX) and "/" not in name and name != self.name:
                with self._lock:
                    self._peers.add(name)
            return
        with self._lock:
            handlers = list(self._handlers.get(kind, ()))
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                log.exception("a peer message handler failed")

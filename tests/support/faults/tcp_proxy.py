"""A small TCP proxy between the platform and its database, which a test
can make cut or stall the connections through it.

``TcpProxy(host, port)`` listens on 127.0.0.1:<free port> (``port``) and
forwards each connection to ``host:port`` of the target, in one thread
with a selector (at most ``MAX_CONNECTIONS`` at once; more are refused).
``drop_all`` resets every open connection (SO_LINGER 0: an RST, as a
crashed middlebox or a failover would), ``stall`` stops forwarding bytes on
the open connections and holds new ones accepted but unconnected (a hung
server or pooler: the kernel still acknowledges, so only a deadline of the
client notices), ``resume`` forwards again and connects the held ones.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_CONNECTIONS = 400
COMMAND_WITHIN_S = 10.0
TICK_S = 0.05
CHUNK = 65536


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket | None = None
    # Bytes read from one side, not yet written to the other.
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._pairs: list[_Pair] = []
        self._held: list[_Pair] = []
        self._stalled = False
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._closing = threading.Event()
        self.accepted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def open_connections(self) -> int:
        return len(self._pairs) + len(self._held)

    # -- control (any thread) -------------------------------------------------

    def drop_all(self) -> None:
        """Reset every open (and held) connection now."""
        self._command(self._drop_all)

    def stall(self) -> None:
        """Stop forwarding; hold new connections without connecting them."""
        self._command(self._stall)

    def resume(self) -> None:
        """Forward again, and connect the connections held meanwhile."""
        self._command(self._resume)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._command(self._drop_all)
        self._closing.set()
        self._thread.join(timeout=COMMAND_WITHIN_S)
        self._selector.close()
        self._listener.close()

    def _command(self, action: Callable[[], None]) -> None:
        done = threading.Event()
        self._commands.put((action, done))
        if not done.wait(COMMAND_WITHIN_S):
            raise RuntimeError("the TCP proxy did not answer")

    # -- the loop (its thread only) -------------------------------------------

    def _loop(self) -> None:
        while not self._closing.is_set():
            while True:
                try:
                    action, done = self._commands.get_nowait()
                except queue.Empty:
                    break
                action()
                done.set()
            for key, events in self._selector.select(TICK_S):
                if key.data is None:
                    self._accept()
                    continue
                pair, side = key.data
                if pair not in self._pairs:
                    continue  # closed earlier in this round
                self._pump(pair, side, events)

    def _accept(self) -> None:
        try:
            client, _address = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        if self.open_connections >= MAX_CONNECTIONS:
            _reset(client)
            return
        pair = _Pair(client)
        if self._stalled:
            self._held.append(pair)
        else:
            self._connect(pair)

    def _connect(self, pair: _Pair) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            _reset(pair.client)  # the target is down: as it would refuse
            return
        upstream.setblocking(False)
        pair.client.setblocking(False)
        pair.upstream = upstream
        self._pairs.append(pair)
        self._register(pair)

    def _register(self, pair: _Pair) -> None:
        assert pair.upstream is not None
        for sock, side in ((pair.client, "client"), (pair.upstream, "upstream")):
            waiting = pair.to_client if side == "client" else pair.to_upstream
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
            try:
                self._selector.modify(sock, events, (pair, side))
            except KeyError:
                self._selector.register(sock, events, (pair, side))

    def _pump(self, pair: _Pair, side: str, events: int) -> None:
        assert pair.upstream is not None
        source = pair.client if side == "client" else pair.upstream
        outgoing = pair.to_upstream if side == "client" else pair.to_client
        incoming = pair.to_client if side == "client" else pair.to_upstream
        try:
            if events & selectors.EVENT_READ:
                data = source.recv(CHUNK)
                if not data:
                    self._close(pair)
                    return
                outgoing.extend(data)
            if events & selectors.EVENT_WRITE and incoming:
                try:
                    sent = source.send(incoming)
                    del incoming[:sent]
                except BlockingIOError:
                    pass
            # Write what was just read as far as the other side takes it.
            target = pair.upstream if side == "client" else pair.client
            if outgoing:
                try:
                    sent = target.send(outgoing)
                    del outgoing[:sent]
                except BlockingIOError:
                    pass
        except OSError:
            self._close(pair)
            return
        self._register(pair)

    def _close(self, pair: _Pair, *, reset: bool = False) -> None:
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()
        if pair in self._pairs:
            self._pairs.remove(pair)

    def _drop_all(self) -> None:
        for pair in [*self._pairs, *self._held]:
            self._close(pair, reset=True)
            self.dropped += 1
        self._held.clear()

    def _stall(self) -> None:
        self._stalled = True
        for pair in self._pairs:
            for sock in (pair.client, pair.upstream):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)

    def _resume(self) -> None:
        self._stalled = False
        for pair in self._pairs:
            self._register(pair)
        held, self._held = self._held, []
        for pair in held:
            self._connect(pair)


def wait_until(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds, at most ``within_s``."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s}s: {what}")
        time.sleep(0.05)


class ConnectionsDropped:
    """Every connection through the proxy reset at once (the server stays up)."""

    kind = "connections dropped"

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy

    def inject(self) -> None:
        self.proxy.drop_all()

    def heal(self) -> None:
        pass  # new connections go through at once


class ConnectionsStalled:
    """The proxy forwards nothing for ``seconds`` (``inject`` returns at
    once; ``heal`` waits out what is left of it, then resumes)."""

    kind = "connections stalled"

    def __init__(self, proxy: TcpProxy, seconds: float) -> None:
        self.proxy = proxy
        self.seconds = seconds
        self._since: float | None = None

    def inject(self) -> None:
        self.proxy.stall()
        self._since = time.monotonic()

    def heal(self) -> None:
        if self._since is None:
            return
        left = self.seconds - (time.monotonic() - self._since)
        if left > 0:
            time.sleep(left)
        self.proxy.resume()
        self._since = None

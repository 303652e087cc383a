"""One POST of a webhook, to an address chosen before the connection.

``webhook_urls.check_destination`` resolves the URL's host and accepts or
refuses every address it found; this transport then connects to one of
THOSE addresses (``PinnedBackend``), never resolving the name again, so a
name that resolves elsewhere a moment later (DNS rebinding) cannot steer
the request to a private address. The request itself still names the host:
the ``Host`` header, and for ``https`` the TLS server name (SNI) and the
certificate's check, are the URL's host's (httpcore does both from the URL).

No redirect is followed (httpcore follows none), no proxy is used, and the
answer's body is read up to ``MAX_RESPONSE_BYTES`` and within the deadline,
then dropped: a receiver cannot hold a worker with an endless answer.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore

from plasmaart.webhook_urls import Address

# What one attempt may take: to connect, and then between bytes; and all in all.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
# Of the answer only its status matters; this much of its body is read.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "PlasmaArt-Webhooks/1"
# The checked addresses an attempt tries, in order, at most (each may take
# the connect timeout: an attempt stays well inside its lease).
MAX_ADDRESSES = 4


@dataclass(frozen=True)
class Outcome:
    """What an attempt got: a status code, or the error that stopped it."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network backend connecting to the checked addresses, in
    order, whatever host the request names."""

    def __init__(self, addresses: Sequence[Address]) -> None:
        if not addresses:
            raise ValueError("a pinned connection needs an address")
        self.addresses = tuple(addresses)[:MAX_ADDRESSES]
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,  # noqa: ARG002 - the name is not resolved again: the addresses stand for it
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failed: Exception | None = None
        for address in self.addresses:
            try:
                return self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        assert failed is not None  # noqa: S101 - addresses is never empty
        raise failed

    def connect_unix_socket(
        self,
        path: str,  # noqa: ARG002 - refused whatever it is
        timeout: float | None = None,  # noqa: ARG002
        socket_options: Iterable[Any] | None = None,  # noqa: ARG002
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are not sent to local sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def post(
    url: str,
    addresses: Sequence[Address],
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
) -> Outcome:
    """POST ``body`` to ``url`` through one of ``addresses``; the outcome,
    never an exception for what the network or the receiver did."""
    started = time.monotonic()
    deadline = started + connect_timeout_s + read_timeout_s
    sent = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Content-Length": str(len(body)),
        **headers,
    }
    pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        network_backend=PinnedBackend(addresses),
        max_connections=1,
        max_keepalive_connections=0,
        retries=0,
    )
    status: int | None = None
    error: str | None = None
    try:
        with pool.stream(
            "POST",
            url,
            headers=list(sent.items()),
            content=body,
            extensions={
                "timeout": {
                    "connect": connect_timeout_s,
                    "read": read_timeout_s,
                    "write": read_timeout_s,
                    "pool": connect_timeout_s,
                }
            },
        ) as response:
            status = response.status
            read = 0
            for chunk in response.iter_stream():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                    break
    # An answer whose status arrived counts by its status, however its body ends.
    except httpcore.TimeoutException as exc:
        error = None if status is not None else f"timed out ({type(exc).__name__})"
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        error = None if status is not None else f"{type(exc).__name__}: {exc}"[:500]
    except httpcore.UnsupportedProtocol as exc:  # pragma: no cover - the URL was checked
        error = f"unsupported URL: {exc}"
    except Exception as exc:  # what the receiver sent must never end the pass
        error = None if status is not None else f"{type(exc).__name__}: {exc}"[:500]
    finally:
        pool.close()
    duration_ms = int((time.monotonic() - started) * 1000)
    if status is not None and not 200 <= status < 300:
        error = f"HTTP {status}"
    return Outcome(status, error, duration_ms)

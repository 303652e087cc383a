"""Where outbound webhooks may go (docs/webhooks.md, "Addresses refused").

A webhook URL is chosen by a user and fetched by our servers: left unchecked,
it would let anyone make the platform call its own database, a cloud
metadata service, or anything else on the private network (SSRF). So a URL
must be ``http`` or ``https`` with a host, and every address its host
resolves to must be public: no private, loopback, link-local, multicast,
reserved or unspecified address, IPv4 or IPv6 (an IPv4-mapped IPv6 address
is judged as the IPv4 address it maps). The check runs when a URL is
registered and again before each delivery, with a fresh resolution, so a
name that later resolves elsewhere (DNS rebinding) is refused then; the
delivery then connects to an address the check accepted.

``PLASMAART_WEBHOOKS_ALLOW_PRIVATE=true`` turns the address rule off (the
tests' receivers listen on loopback); the scheme rule stays.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(ValueError):
    """A URL webhooks may not be sent to, with the reason in words."""


def is_public(address: Address) -> bool:
    """Whether ``address`` is on the public internet."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def parse(url: str) -> tuple[str, str, int]:
    """``url``'s scheme, host and port; raises ``UnsafeUrl`` when it is not
    an absolute ``http``/``https`` URL with a host."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"a webhook URL has at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("a webhook URL starts with https:// (or http://)")
    if not parts.hostname:
        raise UnsafeUrl("a webhook URL names a host")
    if parts.username or parts.password:
        raise UnsafeUrl("a webhook URL may not carry a user name or password")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to now; raises ``UnsafeUrl`` when it
    resolves to none."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve ({exc})") from None
    found: list[Address] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UnsafeUrl(f"the host {host!r} does not resolve")
    return found


def check_destination(url: str, *, allow_private: bool) -> list[Address]:
    """The addresses a webhook to ``url`` may connect to, resolved now;
    raises ``UnsafeUrl`` when the URL is malformed or any of its addresses is
    not public (unless ``allow_private``)."""
    _, host, port = parse(url)
    addresses = resolve(host, port)
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise UnsafeUrl(
                f"webhooks are not sent to private, loopback or link-local addresses "
                f"({host} resolves to {refused[0]})"
            )
    return addresses

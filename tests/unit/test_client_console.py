"""The one line ``plasmaart generate`` prints when no server answers."""

from __future__ import annotations

import httpx
import pytest

from plasmaart.client.console import describe_unreachable, why_unreachable
from plasmaart.client.errors import TransportError


def failed(cause: Exception) -> TransportError:
    error = TransportError(f"POST /v1/generations: {cause!r}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("cause", "why"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "host not found"),
        (httpx.ConnectError("[Errno 8] nodename nor servname provided"), "host not found"),
        (httpx.ConnectTimeout("timed out"), "connection timed out"),
        (httpx.ReadTimeout("timed out"), "no answer in time"),
        (httpx.RemoteProtocolError("Server disconnected"), "the connection dropped"),
        (httpx.ReadError("reset"), "the connection dropped"),
        (
            httpx.ConnectError("[Errno 101] Network is unreachable"),
            "could not connect: [Errno 101] Network is unreachable",
        ),
    ],
)
def test_why_names_the_failure_in_a_few_words(cause: Exception, why: str) -> None:
    assert why_unreachable(failed(cause)) == why


def test_the_line_names_the_url_and_what_to_do() -> None:
    error = failed(httpx.ConnectError("[Errno 111] Connection refused"))
    assert describe_unreachable("http://127.0.0.1:8000", error) == (
        "cannot reach the PlasmaArt server at http://127.0.0.1:8000 (connection refused): "
        "start it with `plasmaart serve`, or point --url (PLASMAART_URL) at it"
    )


def test_a_job_already_submitted_carries_on() -> None:
    error = failed(httpx.RemoteProtocolError("Server disconnected"))
    assert describe_unreachable("https://pa.example", error, "gen_1") == (
        "lost the PlasmaArt server at https://pa.example (the connection dropped) while "
        "waiting for gen_1; it carries on on the server"
    )

"""API fuzzing: schemathesis generates requests for every operation of
``/openapi.json``, valid and invalid, and checks every answer: no 5xx, and
every response agrees with the schema it is documented with (status code,
content type, body), and no refusal uses pydantic's wording.

It calls as an ordinary user with credits and as an admin, so that both the
authenticated paths and the admin paths are explored; anonymous calls are
covered by the authorization matrix. SQLite and PostgreSQL both run.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from tests.integration.test_error_messages import pydantic_phrasing
from tests.support.accounts import TestUser, make_user

# Checks: no 5xx, status codes, content types, headers and bodies as
# documented, and schema-invalid requests refused. Not ``positive_data_acceptance``:
# a request the schema allows may still be refused by the business rules
# (a cursor this API never handed out, too few credits, a model outside the
# plan), and those refusals are documented problems.
# Cases per operation and caller: with ~60 operations and two callers this is
# a few thousand requests per database.
EXAMPLES = 50


@pytest.fixture(autouse=True)
def no_outside_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Webhook URLs are resolved when registered: the fuzzer's host names are
    refused at once rather than looked up in DNS (slow, and not loopback)."""
    asked: list[str] = []
    resolve = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("localhost", "127.0.0.1", "::1"):
            return resolve(host, *args, **kwargs)
        asked.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "no outside names while fuzzing")

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    return asked


@pytest.fixture
def creator(platform: Platform) -> TestUser:
    return make_user(platform, "fuzz-user@example.com", plan="pro", credits=5_000)


@pytest.fixture
def admin(platform: Platform) -> TestUser:
    return make_user(platform, "fuzz-admin@example.com", admin=True, credits=100)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


@dataclass
class FuzzRun:
    operations: int = 0
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


def fuzz_every_operation(platform: Platform, caller: TestUser) -> FuzzRun:
    """Run every operation's cases. A failing operation's error is collected so
    that one report names all of them."""
    # schemathesis' pytest plugin does not support this pytest; its Python API
    # does the same thing with Hypothesis directly.
    app = create_app(platform, embedded_worker=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    fuzz = FuzzRun()
    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz.operations += 1

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                headers=caller.auth, excluded_checks=[positive_data_acceptance]
            )
            fuzz.cases += 1
            fuzz.statuses[response.status_code] += 1
            if response.status_code == 422:
                # Refusals in the project's words, never pydantic's.
                leaked = pydantic_phrasing(response.json())
                assert not leaked, f"pydantic's wording in a refusal: {leaked}"

        try:
            run()
        # Schemathesis raises its failures as an exception group.
        except (Exception, BaseExceptionGroup) as error:
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)
    return fuzz


def report(capsys: pytest.CaptureFixture[str], who: str, platform: Platform, fuzz: FuzzRun) -> None:
    with capsys.disabled():
        print(  # noqa: T201 - the fuzzing report is meant to be read
            f"\nfuzzing as {who} ({platform.db.dialect}): {fuzz.operations} operations, "
            f"{fuzz.cases} cases, statuses {dict(sorted(fuzz.statuses.items()))}, violations: 0"
        )


def test_every_operation_as_a_creator(
    platform: Platform, creator: TestUser, capsys: pytest.CaptureFixture[str]
) -> None:
    fuzz = fuzz_every_operation(platform, creator)
    report(capsys, "a creator", platform, fuzz)
    assert fuzz.operations >= 50
    assert fuzz.cases >= fuzz.operations * 5
    # The creator's calls do succeed somewhere, so the fuzzing reaches past auth.
    assert sum(n for status, n in fuzz.statuses.items() if status < 300) > 0
    # DELETE /v1/me needs the account's password, which the fuzzer never
    # sends: the account it fuzzes as lives to the end of the run.
    with platform.db.read() as conn:
        assert platform.accounts.get(conn, creator.id).email == creator.email


def test_every_operation_as_an_admin(
    platform: Platform, admin: TestUser, capsys: pytest.CaptureFixture[str]
) -> None:
    fuzz = fuzz_every_operation(platform, admin)
    report(capsys, "an admin", platform, fuzz)
    assert fuzz.operations >= 50
    assert fuzz.cases >= fuzz.operations * 5

"""Which database errors mean "out of reach for now" (503 ``unavailable``,
a background loop's backoff) and which stay bugs (500), on real PostgreSQL
and SQLite errors; the deadline that cuts a stalled connection; and the API
in front of a database behind a proxy that stalls and resets its
connections (docs/reliability.md, "The database goes away")."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from plasmaart.clock import ManualClock
from plasmaart.db.engine import PING_IDLE_S, Database, create_database
from plasmaart.db.outage import Backoff, is_unavailable, kind_of
from plasmaart.web.app import create_app
from tests.conftest import new_database_url
from tests.support.accounts import make_user
from tests.support.faults.tcp_proxy import TcpProxy
from tests.support.pgserver import free_port
from tests.support.platforms import running_platform, settings_for

pytestmark = pytest.mark.postgres
# A stall a test starts ends by itself after this long, whatever happens.
SAFETY_RESUME_S = 15.0


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_database_url(request, "postgres", tmp_path)


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:
    db = create_database(pg_url, pool_size=2, timeout_s=2)
    try:
        yield db
    finally:
        db.dispose()


def raised(db: Database, *statements: str) -> SQLAlchemyError:
    """The error the statements raise, run in order on one connection."""

    def run() -> None:
        with db.engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))

    with pytest.raises(SQLAlchemyError) as caught:
        run()
    return caught.value


def test_a_database_out_of_reach_is_unavailable(pg: Database, pg_url: str) -> None:
    nowhere = create_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout_s=2)
    try:
        refused = raised(nowhere, "SELECT 1")
    finally:
        nowhere.dispose()
    assert is_unavailable(refused)
    assert kind_of(refused) == "connection refused"

    timed_out = raised(pg, "SET statement_timeout = 50", "SELECT pg_sleep(2)")
    assert is_unavailable(timed_out)
    assert kind_of(timed_out) == "no answer in time"

    # The server ends the session (an operator, a failover): 57P01.
    with pg.engine.connect() as victim:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with pg.engine.connect() as admin:
            admin.execute(text(f"SELECT pg_terminate_backend({pid})"))
        with pytest.raises(DBAPIError) as caught:
            victim.execute(text("SELECT 1"))
    assert is_unavailable(caught.value)

    # Every connection of the pool busy past the pool's timeout.
    small = create_database(pg_url, pool_size=1, timeout_s=0.3)
    try:
        with small.engine.connect(), small.engine.connect():
            started = time.monotonic()
            pool_timeout = raised(small, "SELECT 1")
            assert time.monotonic() - started < 2
    finally:
        small.dispose()
    assert is_unavailable(pool_timeout)
    assert kind_of(pool_timeout) == "no free connection in time"


def test_errors_of_the_statement_or_its_data_stay_errors(pg: Database) -> None:
    integrity = raised(
        pg,
        "CREATE TEMP TABLE once (id int PRIMARY KEY)",
        "INSERT INTO once VALUES (1)",
        "INSERT INTO once VALUES (1)",
    )
    data = raised(pg, "SELECT 1 / 0")
    programming = raised(pg, "SELECT * FROM no_such_table")
    for error in (integrity, data, programming):
        assert not is_unavailable(error), error
    assert not is_unavailable(ValueError("not a database error"))


def test_sqlite_locked_is_unavailable_a_constraint_is_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    first = create_database(url, busy_timeout_ms=0, group_commit=False)
    second = create_database(url, busy_timeout_ms=0, group_commit=False)
    try:
        with first.write() as conn:
            conn.execute(text("CREATE TABLE once (id INTEGER PRIMARY KEY)"))
        with first.write() as conn:
            conn.execute(text("INSERT INTO once VALUES (1)"))
            with pytest.raises(SQLAlchemyError) as locked, second.write() as other:
                other.execute(text("INSERT INTO once VALUES (2)"))
        assert is_unavailable(locked.value)
        with pytest.raises(SQLAlchemyError) as duplicate, first.write() as conn:
            conn.execute(text("INSERT INTO once VALUES (1)"))
        assert not is_unavailable(duplicate.value)
    finally:
        first.dispose()
        second.dispose()


def behind_a_proxy(pg_url: str) -> tuple[TcpProxy, str]:
    """A ``TcpProxy`` in front of ``pg_url``'s server, and the URL of the
    same database through it."""
    database = pg_url.rsplit("/", 1)[1]
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy("127.0.0.1", port)
    return proxy, f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"


def test_a_stalled_connection_is_cut_at_the_deadline(pg_url: str) -> None:
    proxy, url = behind_a_proxy(pg_url)
    db = create_database(url, timeout_s=1)
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            proxy.stall()
            # Bounded even without a deadline: the stall ends by itself.
            safety = threading.Timer(SAFETY_RESUME_S, proxy.resume)
            safety.start()
            started = time.monotonic()
            with pytest.raises(DBAPIError) as caught:
                conn.execute(text("SELECT 2"))
            took = time.monotonic() - started
        assert 0.9 <= took < 2.0, took
        assert is_unavailable(caught.value)
        safety.cancel()
        proxy.resume()
        # Work that may take long goes without a deadline: it waits out the stall.
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            proxy.stall()
            threading.Timer(1.5, proxy.resume).start()
            with db.deadline(None):
                assert conn.execute(text("SELECT 3")).scalar_one() == 3
    finally:
        proxy.resume()
        db.dispose()
        proxy.close()


def test_connections_reset_while_idle_are_replaced_unseen(pg_url: str) -> None:
    proxy, url = behind_a_proxy(pg_url)
    db = create_database(url, timeout_s=2)
    try:
        with db.read() as conn, db.read() as other:  # two pooled connections
            conn.execute(text("SELECT 1"))
            other.execute(text("SELECT 1"))
        proxy.drop_all()  # a restart, a failover: every connection reset
        time.sleep(PING_IDLE_S + 0.1)
        for _ in range(2):
            with db.read() as conn:
                assert conn.execute(text("SELECT 2")).scalar_one() == 2
    finally:
        db.dispose()
        proxy.close()


def test_backoff_grows_and_says_an_outage_once(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = create_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout_s=2)
    try:
        refused = raised(nowhere, "SELECT 1")
    finally:
        nowhere.dispose()
    backoff = Backoff("the test loop", first_s=0.1, longest_s=0.4, jitter=lambda: 1.0)
    with caplog.at_level(logging.INFO, logger="plasmaart.db.outage"):
        waits = [backoff.failed(refused) for _ in range(5)]
        backoff.succeeded()
        bug = backoff.failed(ZeroDivisionError("a bug"))
    assert waits == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert bug == 0.1  # the waits started over
    lines = [record.getMessage() for record in caplog.records]
    assert sum("the database is unavailable" in line for line in lines) == 1
    assert sum("the database answers again" in line for line in lines) == 1
    assert any(record.exc_info for record in caplog.records if "failed" in record.getMessage())


@pytest.fixture
def proxied(pg_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, TcpProxy, str]]:
    proxy, url = behind_a_proxy(pg_url)
    settings = settings_for(url, tmp_path / "var", db_timeout_s=1.0)
    try:
        with running_platform(settings, ManualClock()) as platform:
            user = make_user(platform, "stall@example.com", plan="pro", credits=100)
            app = create_app(platform, embedded_worker=False)

            @app.get("/test/divide")
            def divide() -> dict[str, int]:
                with platform.db.read() as conn:
                    return {"value": conn.execute(text("SELECT 1 / 0")).scalar_one()}

            calls: list[int] = []

            @app.post("/test/stall-once")
            def stall_once() -> dict[str, int]:
                # The database goes away after the key's claim, mid-request.
                calls.append(1)
                if len(calls) == 1:
                    proxy.stall()
                with platform.db.read() as conn:
                    return {"calls": len(calls), "one": conn.execute(text("SELECT 1")).scalar_one()}

            with TestClient(app, raise_server_exceptions=False) as client:
                yield client, proxy, user.api_key
    finally:
        proxy.resume()
        proxy.close()


def test_the_api_answers_503_while_the_database_stalls(
    proxied: tuple[TestClient, TcpProxy, str],
) -> None:
    client, proxy, api_key = proxied
    auth = {"Authorization": f"Bearer {api_key}"}
    submission = {"model": "flux-schnell", "prompt": "a lighthouse", "num_outputs": 1}
    keyed = {**auth, "Idempotency-Key": "stalled-1"}
    assert client.get("/v1/balance", headers=auth).status_code == 200
    # A bug stays a 500, database or not.
    bug = client.get("/test/divide")
    assert bug.status_code == 500
    assert bug.json()["code"] == "internal_error"

    proxy.stall()
    # Bounded even without a deadline: the stall ends by itself.
    safety = threading.Timer(SAFETY_RESUME_S, proxy.resume)
    safety.start()
    for method, path, headers, body in (
        ("GET", "/v1/balance", auth, None),
        ("POST", "/v1/generations", keyed, submission),
    ):
        started = time.monotonic()
        answer = client.request(method, path, headers=headers, json=body)
        took = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "unavailable"
        assert answer.headers["retry-after"] == "2"
        assert took < 6, took
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "not_ready"
    safety.cancel()
    proxy.resume()

    assert client.get("/readyz").status_code == 200
    made = client.post("/v1/generations", headers=keyed, json=submission)
    assert made.status_code == 201, made.text
    again = client.post("/v1/generations", headers=keyed, json=submission)
    assert again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == made.json()["id"]

    # Connections reset while idle: pinged and replaced, no error leaks out.
    proxy.drop_all()
    time.sleep(1.1)
    assert client.get("/v1/balance", headers=auth).status_code == 200


def test_a_key_claimed_before_the_outage_is_not_stuck_after_it(
    proxied: tuple[TestClient, TcpProxy, str],
) -> None:
    client, proxy, api_key = proxied
    keyed = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": "mid-outage"}
    safety = threading.Timer(SAFETY_RESUME_S, proxy.resume)
    safety.start()
    try:
        first = client.post("/test/stall-once", headers=keyed)
    finally:
        safety.cancel()
        proxy.resume()
    assert first.status_code == 503, first.text
    assert first.json()["code"] == "unavailable"
    # The record the outage kept from being forgotten is forgotten now: the
    # retry runs (not "still running" until the takeover), then replays.
    again = client.post("/test/stall-once", headers=keyed)
    assert again.status_code == 200, again.text
    assert again.json() == {"calls": 2, "one": 1}
    replayed = client.post("/test/stall-once", headers=keyed)
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json() == {"calls": 2, "one": 1}

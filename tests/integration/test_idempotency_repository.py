"""The idempotency records' repository (web/idempotency_repository.py) on
both databases: a claim is a running record, a second claim of the same key
is refused by the database, a stored answer comes back whole and typed, and
another principal's key is another record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from plasmaart.db.engine import Database
from plasmaart.web import idempotency_repository as records
from plasmaart.web.idempotency_repository import IdempotencyRecord, StoredAnswer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_claimed_key_is_running_then_holds_its_answer(db: Database) -> None:
    with db.write() as conn:
        assert records.find(conn, "p1", "k") is None
        records.claim(conn, "p1", "k", path="/v1/api-keys", request_hash="h" * 64, now=NOW)
    with db.read() as conn:
        assert records.find(conn, "p1", "k") == IdempotencyRecord(
            path="/v1/api-keys",
            request_hash="h" * 64,
            status="running",
            created_at=NOW,
            answer=None,
        )
        assert records.find(conn, "p2", "k") is None  # keys are per principal
    body = b'{"id": "key_1", "key": null}\x00\xff'  # bytes as sent, not text
    with db.write() as conn:
        records.store_answer(
            conn, "p1", "k", status=201, headers='[["content-type", "application/json"]]', body=body
        )
    with db.read() as conn:
        found = records.find(conn, "p1", "k")
    assert found is not None
    assert found.status == "done"
    assert found.created_at == NOW
    assert found.answer == StoredAnswer(
        status=201, headers='[["content-type", "application/json"]]', body=body
    )


def test_a_second_claim_of_a_key_is_refused_and_forgetting_frees_it(db: Database) -> None:
    with db.write() as conn:
        records.claim(conn, "p1", "k", path="/a", request_hash="1", now=NOW)
    with pytest.raises(IntegrityError), db.write() as conn:
        records.claim(conn, "p1", "k", path="/b", request_hash="2", now=NOW)
    with db.write() as conn:
        records.claim(conn, "p2", "k", path="/b", request_hash="2", now=NOW)
        records.forget(conn, "p1", "k")
        assert records.find(conn, "p1", "k") is None
        records.claim(conn, "p1", "k", path="/c", request_hash="3", now=NOW)
    with db.read() as conn:
        again = records.find(conn, "p1", "k")
        other = records.find(conn, "p2", "k")
    assert again is not None
    assert (again.path, again.request_hash) == ("/c", "3")
    assert other is not None
    assert (other.path, other.request_hash) == ("/b", "2")

"""``/v1/webhook-endpoints`` and ``/v1/webhook-secret`` as API.md "Outbound
webhooks" shows them, on SQLite and PostgreSQL: validation, the address rule
at registration (with private addresses refused, then allowed), the cap of
endpoints, ownership, rotations and their 24-hour overlap, the delivery log
and replays (deliveries and attempts are written here as the dispatcher
writes them), the account's own secret, suspended accounts, and what
account deletion and the export do with webhooks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
    webhook_secrets,
)
from plasmaart.outbox.webhooks import EVENT_TYPES
from plasmaart.platform import Platform
from plasmaart.webhooks import signing
from plasmaart.webhooks.endpoints import MAX_ENDPOINTS, WebhookEndpoints
from tests.integration.test_security import Captured
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.platforms import api_client, running_platform, settings_for

PUBLIC = "https://93.184.215.14/hooks/plasmaart"  # an address literal: no DNS
EVENTS = ["generation.succeeded", "generation.failed"]
PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.10/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:9000/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://0.0.0.0/hook",
    "http://100.64.0.1/hook",
]


@pytest.fixture
def ada(platform: Platform) -> TestUser:
    return make_user(platform, "ada@example.com")


@pytest.fixture
def bob(platform: Platform) -> TestUser:
    return make_user(platform, "bob@example.com")


def create(client: TestClient, who: TestUser, **body: Any) -> Any:
    answer = client.post(
        "/v1/webhook-endpoints", json={"url": PUBLIC, "events": EVENTS} | body, headers=who.auth
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def count(platform: Platform, table: Any, *where: Any) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def refused(answer: Any, status: int, code: str, field: str | None = None) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == code, problem
    if field is not None:
        assert [e["field"] for e in problem["errors"]] == [field], problem
    return str(problem["detail"])


# -- creating, listing, reading --------------------------------------------------


def test_an_endpoint_is_created_with_a_secret_shown_only_once(
    client: TestClient, platform: Platform, ada: TestUser, clock: ManualClock
) -> None:
    made = create(client, ada, events=["payment.failed", "generation.succeeded", "payment.failed"])
    assert made["url"] == PUBLIC
    # Each event once, in the catalogue's order.
    assert made["events"] == ["generation.succeeded", "payment.failed"]
    assert made["description"] == ""
    assert made["enabled"] is True
    assert made["created_at"] == clock.now().isoformat().replace("+00:00", "Z")
    secret = made["secret"]
    assert secret.startswith("whsec_")
    assert len(signing.key_of(secret)) == 32
    assert made["secret_hint"] == "whsec_…" + secret[-4:]

    listed = client.get("/v1/webhook-endpoints", headers=ada.auth)
    assert listed.status_code == 200
    assert listed.json()["next_cursor"] is None
    [row] = listed.json()["data"]
    one = client.get(f"/v1/webhook-endpoints/{made['id']}", headers=ada.auth)
    assert one.json() == row
    for answer in (listed, one):
        assert secret not in answer.text
        assert "secret" not in answer.json().get("data", [row])[0]
    assert row["secret_hint"] == made["secret_hint"]
    with platform.db.read() as conn:
        stored = conn.execute(select(webhook_endpoints.c.secret)).scalar_one()
    assert stored == secret


def test_an_idempotent_replay_of_a_creation_withholds_the_secret(
    client: TestClient, platform: Platform, ada: TestUser
) -> None:
    headers = ada.auth | {"Idempotency-Key": "one-endpoint"}
    body = {"url": PUBLIC, "events": EVENTS}
    first = client.post("/v1/webhook-endpoints", json=body, headers=headers)
    again = client.post("/v1/webhook-endpoints", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["secret"].startswith("whsec_")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["secret"] is None
    assert again.json()["id"] == first.json()["id"]
    assert count(platform, webhook_endpoints) == 1


def test_the_list_is_paginated(client: TestClient, ada: TestUser) -> None:
    made = [create(client, ada, description=f"n{i}")["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/webhook-endpoints", params=params, headers=ada.auth).json()
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made
    bad = client.get("/v1/webhook-endpoints", params={"cursor": "nope"}, headers=ada.auth)
    refused(bad, 422, "invalid_input", "cursor")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": PUBLIC, "events": []}, "events"),
        ({"url": PUBLIC, "events": ["generation.exploded"]}, "events"),
        ({"url": PUBLIC, "events": ["generation.succeeded", "nope"]}, "events"),
        ({"url": "ftp://93.184.215.14/x", "events": EVENTS}, "url"),
        ({"url": "93.184.215.14/hook", "events": EVENTS}, "url"),
        ({"url": "https://user:pw@93.184.215.14/", "events": EVENTS}, "url"),
        ({"url": "https://" + "a" * 2001, "events": EVENTS}, "url"),
        ({"url": "https://does-not-resolve.invalid/hook", "events": EVENTS}, "url"),
        ({"url": PUBLIC, "events": EVENTS, "description": "d" * 201}, "description"),
        ({"url": PUBLIC, "events": EVENTS, "secret": "whsec_mine"}, "secret"),
    ],
)
def test_invalid_endpoints_are_refused_and_write_nothing(
    client: TestClient, platform: Platform, ada: TestUser, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/v1/webhook-endpoints", json=body, headers=ada.auth)
    refused(answer, 422, "invalid_input", field)
    assert count(platform, webhook_endpoints) == 0


def test_private_loopback_and_link_local_addresses_are_refused(
    client: TestClient, platform: Platform, ada: TestUser
) -> None:
    # One platform for every address (each is a request of its own).
    for url in PRIVATE_URLS:
        answer = client.post(
            "/v1/webhook-endpoints", json={"url": url, "events": EVENTS}, headers=ada.auth
        )
        detail = refused(answer, 422, "invalid_input", "url")
        assert "private, loopback or link-local" in detail, url
    assert count(platform, webhook_endpoints) == 0


def test_a_changed_url_is_checked_too(
    client: TestClient, platform: Platform, ada: TestUser
) -> None:
    made = create(client, ada)
    answer = client.patch(
        f"/v1/webhook-endpoints/{made['id']}",
        json={"url": "http://169.254.169.254/latest/meta-data/", "events": ["topup.failed"]},
        headers=ada.auth,
    )
    refused(answer, 422, "invalid_input", "url")
    after = client.get(f"/v1/webhook-endpoints/{made['id']}", headers=ada.auth).json()
    assert (after["url"], after["events"]) == (PUBLIC, EVENTS)


@pytest.fixture
def open_platform(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Platform]:
    """An operator who set PLASMAART_WEBHOOKS_ALLOW_PRIVATE=true."""
    settings = settings_for(database_url, tmp_path / "var", webhooks_allow_private=True)
    with running_platform(settings, clock) as built:
        yield built


def test_private_addresses_are_accepted_when_the_operator_allows_them(
    open_platform: Platform,
) -> None:
    carol = make_user(open_platform, "carol@example.com")
    with api_client(open_platform) as client:
        for url in PRIVATE_URLS:
            made = create(client, carol, url=url, events=["topup.failed"])
            assert made["url"] == url
            # At most 20 endpoints an account: make room for the next one.
            client.delete(f"/v1/webhook-endpoints/{made['id']}", headers=carol.auth)
        # The scheme rule stays.
        answer = client.post(
            "/v1/webhook-endpoints",
            json={"url": "file:///etc/passwd", "events": EVENTS},
            headers=carol.auth,
        )
    refused(answer, 422, "invalid_input", "url")


def test_a_host_that_resolves_slowly_is_refused_within_the_timeout(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = threading.Event()

    def hanging(*_args: Any, **_kwargs: Any) -> Any:
        released.wait(10)
        raise socket.gaierror("gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    endpoints = WebhookEndpoints(
        platform.clock, platform.accounts, allow_private=False, resolve_timeout_s=0.2
    )
    started = datetime.now().astimezone()
    try:
        with pytest.raises(Exception, match=r"did not resolve within 0\.2 seconds") as raised:
            endpoints.check_url("https://slow-dns.example.com/hook")
    finally:
        released.set()
    assert (datetime.now().astimezone() - started) < timedelta(seconds=3)
    assert getattr(raised.value, "code", None) == "invalid_input"


def test_an_account_has_at_most_twenty_endpoints(
    client: TestClient, platform: Platform, ada: TestUser, bob: TestUser
) -> None:
    for i in range(MAX_ENDPOINTS):
        create(client, ada, description=f"#{i}")
    answer = client.post(
        "/v1/webhook-endpoints", json={"url": PUBLIC, "events": EVENTS}, headers=ada.auth
    )
    assert "at most 20" in refused(answer, 422, "invalid_input")
    assert count(platform, webhook_endpoints) == MAX_ENDPOINTS
    create(client, bob)  # the cap is per account
    first = client.get("/v1/webhook-endpoints", headers=ada.auth).json()["data"][0]
    client.delete(f"/v1/webhook-endpoints/{first['id']}", headers=ada.auth)
    create(client, ada)


# -- changing, disabling, deleting -----------------------------------------------


def test_an_endpoint_is_changed_disabled_and_enabled_again(
    client: TestClient, platform: Platform, ada: TestUser, clock: ManualClock
) -> None:
    made = create(client, ada)
    path = f"/v1/webhook-endpoints/{made['id']}"
    clock.advance(timedelta(minutes=5))
    changed = client.patch(
        path,
        json={"events": ["topup.failed", "credits.low"], "description": "billing"},
        headers=ada.auth,
    ).json()
    assert changed["events"] == ["credits.low", "topup.failed"]
    assert changed["description"] == "billing"
    assert changed["url"] == PUBLIC
    assert changed["updated_at"] > made["created_at"]
    assert changed["secret_hint"] == made["secret_hint"]
    other = "https://93.184.215.15/v2"
    assert client.patch(path, json={"url": other}, headers=ada.auth).json()["url"] == other

    off = client.patch(path, json={"enabled": False}, headers=ada.auth).json()
    assert (off["enabled"], off["disabled_reason"]) == (False, "disabled by you")
    assert off["disabled_at"] is not None

    # The dispatcher disabled it after days of failures (as E's would write it).
    with platform.db.write() as conn:
        conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == made["id"])
            .values(
                disabled_reason="every delivery failed for 3 days",
                failing_since=clock.now() - timedelta(days=3),
            )
        )
    failing = client.get(path, headers=ada.auth).json()
    assert failing["failing_since"] is not None
    assert failing["disabled_reason"] == "every delivery failed for 3 days"
    on = client.patch(path, json={"enabled": True}, headers=ada.auth).json()
    assert on["enabled"] is True
    assert (on["disabled_at"], on["disabled_reason"], on["failing_since"]) == (None, None, None)

    for body, field in (({"events": []}, "events"), ({"events": ["x.y"]}, "events")):
        refused(client.patch(path, json=body, headers=ada.auth), 422, "invalid_input", field)
    refused(
        client.patch(path, json={"enabled": "maybe"}, headers=ada.auth),
        422,
        "invalid_input",
        "enabled",
    )


def test_a_deleted_endpoint_is_gone_with_its_delivery_log(
    client: TestClient, platform: Platform, ada: TestUser
) -> None:
    kept = create(client, ada)
    gone = create(client, ada)
    event = emit(platform, ada, "generation.succeeded")
    deliver(platform, event, kept["id"], status="succeeded", codes=[200])
    deliver(platform, event, gone["id"], status="failed", codes=[500, 502])
    answer = client.delete(f"/v1/webhook-endpoints/{gone['id']}", headers=ada.auth)
    assert answer.status_code == 200
    assert answer.json()["id"] == gone["id"]
    assert "secret" not in answer.json()
    refused(client.get(f"/v1/webhook-endpoints/{gone['id']}", headers=ada.auth), 404, "not_found")
    refused(
        client.delete(f"/v1/webhook-endpoints/{gone['id']}", headers=ada.auth), 404, "not_found"
    )
    assert count(platform, webhook_endpoints) == 1
    assert count(platform, webhook_deliveries) == 1
    assert count(platform, webhook_attempts) == 1
    assert count(platform, webhook_events) == 1  # the event stays: other endpoints got it


def test_another_users_endpoint_is_not_found(
    client: TestClient, platform: Platform, ada: TestUser, bob: TestUser
) -> None:
    made = create(client, ada)
    event = emit(platform, ada, "payment.succeeded")
    delivery = deliver(platform, event, made["id"], status="succeeded", codes=[204])
    base = f"/v1/webhook-endpoints/{made['id']}"
    calls = [
        ("GET", base, None),
        ("PATCH", base, {"enabled": False}),
        ("DELETE", base, None),
        ("POST", f"{base}/rotate-secret", None),
        ("GET", f"{base}/deliveries", None),
        ("POST", f"{base}/deliveries/{delivery}/replay", None),
    ]
    for method, path, body in calls:
        answer = client.request(method, path, json=body, headers=bob.auth)
        refused(answer, 404, "not_found")
        assert made["secret"] not in answer.text
    assert client.get("/v1/webhook-endpoints", headers=bob.auth).json()["data"] == []
    after = client.get(base, headers=ada.auth).json()
    assert after["enabled"] is True
    assert after["secret_hint"] == made["secret_hint"]
    assert count(platform, webhook_deliveries) == 1


# -- rotation --------------------------------------------------------------------


def test_a_rotation_keeps_the_previous_secret_signing_for_24_hours(
    client: TestClient, platform: Platform, ada: TestUser, clock: ManualClock
) -> None:
    made = create(client, ada)
    old = made["secret"]
    rotated = client.post(f"/v1/webhook-endpoints/{made['id']}/rotate-secret", headers=ada.auth)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert rotated.json()["secret_hint"] == "whsec_…" + new[-4:]
    expires = clock.now() + timedelta(hours=24)
    assert rotated.json()["previous_secret_expires_at"] == expires.isoformat().replace(
        "+00:00", "Z"
    )
    listed = client.get("/v1/webhook-endpoints", headers=ada.auth)
    assert new not in listed.text
    assert old not in listed.text

    def signers() -> list[str]:
        with platform.db.read() as conn:
            endpoint = platform.webhook_endpoints.get(conn, ada.id, made["id"])
        return platform.webhook_endpoints.signing_secrets(endpoint)

    assert signers() == [new, old]
    clock.advance(timedelta(hours=23, minutes=59))
    assert signers() == [new, old]
    clock.advance(timedelta(minutes=1))
    assert signers() == [new]

    # A second rotation: the one just replaced overlaps; the oldest is dropped.
    third = client.post(
        f"/v1/webhook-endpoints/{made['id']}/rotate-secret", headers=ada.auth
    ).json()["secret"]
    assert signers() == [third, new]


# -- the delivery log and replays ------------------------------------------------


def emit(platform: Platform, who: TestUser, type: Any, cause: str | None = None) -> str:
    with platform.db.write() as conn:
        event = platform.webhook_events.emit(
            conn,
            cause_key=cause or f"test:{type}:{who.id}",
            user_id=who.id,
            type=type,
            data={"id": "gen_test"},
        )
    assert event is not None
    return event


def deliver(
    platform: Platform,
    event: str,
    endpoint_id: str,
    *,
    status: str,
    codes: list[int | None],
    at: datetime | None = None,
) -> str:
    """A delivery with an attempt per status code, as the dispatcher writes them."""
    now = at or platform.clock.now()
    delivery = f"wd_{event[-12:]}{endpoint_id[-6:]}{len(codes)}{status[:2]}{now.timestamp():.0f}"
    with platform.db.write() as conn:
        conn.execute(
            insert(webhook_deliveries).values(
                id=delivery,
                event_id=event,
                endpoint_id=endpoint_id,
                url=PUBLIC,
                status=status,
                attempts=len(codes),
                next_attempt_at=now + timedelta(minutes=5),
                last_status_code=codes[-1] if codes else None,
                last_error=None if status == "succeeded" else "the receiver answered 5xx",
                created_at=now,
                delivered_at=now if status == "succeeded" else None,
            )
        )
        for i, code in enumerate(codes):
            conn.execute(
                insert(webhook_attempts).values(
                    delivery_id=delivery,
                    attempted_at=now + timedelta(seconds=i),
                    status_code=code,
                    error=None if code and code < 300 else "connection refused",
                    duration_ms=40 + i,
                )
            )
    return delivery


def test_the_delivery_log_shows_attempts_newest_first_by_pages(
    client: TestClient, platform: Platform, ada: TestUser, clock: ManualClock
) -> None:
    made = create(client, ada)
    other = create(client, ada)
    first = emit(platform, ada, "generation.succeeded")
    second = emit(platform, ada, "payment.failed")
    start = clock.now()
    old = deliver(platform, first, made["id"], status="succeeded", codes=[500, 200], at=start)
    new = deliver(
        platform, second, made["id"], status="failed", codes=[None], at=start + timedelta(hours=1)
    )
    deliver(platform, second, other["id"], status="pending", codes=[])

    log = client.get(f"/v1/webhook-endpoints/{made['id']}/deliveries", headers=ada.auth)
    assert log.status_code == 200, log.text
    data = log.json()["data"]
    assert [d["id"] for d in data] == [new, old]
    assert log.json()["next_cursor"] is None
    latest, earliest = data
    assert (latest["event_id"], latest["type"], latest["status"]) == (
        second,
        "payment.failed",
        "failed",
    )
    assert (latest["attempts"], latest["last_status_code"]) == (1, None)
    assert latest["last_error"] == "the receiver answered 5xx"
    assert latest["delivered_at"] is None
    assert [a["status_code"] for a in latest["attempt_log"]] == [None]
    assert latest["attempt_log"][0]["error"] == "connection refused"
    assert (earliest["type"], earliest["status"], earliest["attempts"]) == (
        "generation.succeeded",
        "succeeded",
        2,
    )
    assert [a["status_code"] for a in earliest["attempt_log"]] == [500, 200]
    assert earliest["delivered_at"] is not None

    page = client.get(
        f"/v1/webhook-endpoints/{made['id']}/deliveries", params={"limit": 1}, headers=ada.auth
    ).json()
    assert [d["id"] for d in page["data"]] == [new]
    rest = client.get(
        f"/v1/webhook-endpoints/{made['id']}/deliveries",
        params={"limit": 1, "cursor": page["next_cursor"]},
        headers=ada.auth,
    ).json()
    assert [d["id"] for d in rest["data"]] == [old]
    assert rest["next_cursor"] is None
    bad = client.get(
        f"/v1/webhook-endpoints/{made['id']}/deliveries",
        params={"cursor": "bm90LWEtY3Vyc29y"},
        headers=ada.auth,
    )
    refused(bad, 422, "invalid_input", "cursor")


def test_a_replay_adds_a_pending_delivery_of_the_same_event(
    client: TestClient, platform: Platform, ada: TestUser, clock: ManualClock
) -> None:
    made = create(client, ada)
    other = create(client, ada)
    event = emit(platform, ada, "generation.failed")
    failed = deliver(platform, event, made["id"], status="failed", codes=[500, 500, 503])
    elsewhere = deliver(platform, event, other["id"], status="succeeded", codes=[200])
    clock.advance(timedelta(hours=2))
    base = f"/v1/webhook-endpoints/{made['id']}"

    answer = client.post(f"{base}/deliveries/{failed}/replay", headers=ada.auth)
    assert answer.status_code == 202, answer.text
    replay = answer.json()
    assert replay["id"] not in (failed, elsewhere)
    assert (replay["event_id"], replay["type"], replay["status"]) == (
        event,
        "generation.failed",
        "pending",
    )
    assert (replay["attempts"], replay["attempt_log"], replay["url"]) == (0, [], PUBLIC)
    now = clock.now().isoformat().replace("+00:00", "Z")
    assert replay["next_attempt_at"] == replay["created_at"] == now
    with platform.db.read() as conn:
        rows = conn.execute(
            select(webhook_deliveries.c.id, webhook_deliveries.c.status)
            .where(webhook_deliveries.c.event_id == event)
            .order_by(webhook_deliveries.c.created_at, webhook_deliveries.c.id)
        ).all()
    assert {tuple(r) for r in rows} == {
        (failed, "failed"),
        (elsewhere, "succeeded"),
        (replay["id"], "pending"),
    }
    log = client.get(f"{base}/deliveries", headers=ada.auth).json()["data"]
    assert [d["id"] for d in log] == [replay["id"], failed]

    # A delivery of another endpoint, or none at all: 404; a disabled endpoint: 422.
    refused(
        client.post(f"{base}/deliveries/{elsewhere}/replay", headers=ada.auth), 404, "not_found"
    )
    refused(client.post(f"{base}/deliveries/wd_nope/replay", headers=ada.auth), 404, "not_found")
    client.patch(base, json={"enabled": False}, headers=ada.auth)
    disabled = client.post(f"{base}/deliveries/{failed}/replay", headers=ada.auth)
    refused(disabled, 422, "invalid_input", "endpoint")
    assert count(platform, webhook_deliveries) == 3


# -- the account's own secret ----------------------------------------------------


def test_the_account_secret_is_made_on_first_use_and_rotated(
    client: TestClient, platform: Platform, ada: TestUser, bob: TestUser
) -> None:
    assert count(platform, webhook_secrets) == 0
    first = client.get("/v1/webhook-secret", headers=ada.auth)
    assert first.status_code == 200
    secret = first.json()["secret"]
    assert secret.startswith("whsec_")
    assert len(signing.key_of(secret)) == 32
    assert client.get("/v1/webhook-secret", headers=ada.auth).json() == {"secret": secret}
    theirs = client.get("/v1/webhook-secret", headers=bob.auth).json()["secret"]
    assert theirs != secret
    rotated = client.post("/v1/webhook-secret/rotate", headers=ada.auth)
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new.startswith("whsec_")
    assert new not in (secret, theirs)
    assert client.get("/v1/webhook-secret", headers=ada.auth).json() == {"secret": new}
    assert client.get("/v1/webhook-secret", headers=bob.auth).json() == {"secret": theirs}
    assert count(platform, webhook_secrets) == 2


# -- suspended accounts, deletion, export ----------------------------------------


def test_a_suspended_account_reads_its_webhooks_but_changes_nothing(
    client: TestClient, platform: Platform, ada: TestUser
) -> None:
    admin = make_user(platform, "root@example.com", admin=True)
    made = create(client, ada)
    event = emit(platform, ada, "credits.low")
    delivery = deliver(platform, event, made["id"], status="failed", codes=[500])
    client.get("/v1/webhook-secret", headers=ada.auth)
    suspended = client.post(
        f"/v1/admin/users/{ada.id}/suspend", json={"reason": "abuse"}, headers=admin.auth
    )
    assert suspended.status_code == 200
    base = f"/v1/webhook-endpoints/{made['id']}"
    for path in ("/v1/webhook-endpoints", base, f"{base}/deliveries", "/v1/webhook-secret"):
        assert client.get(path, headers=ada.auth).status_code == 200, path
    with platform.db.read() as conn:
        before = (
            conn.execute(select(webhook_endpoints)).all(),
            conn.execute(select(webhook_deliveries)).all(),
            conn.execute(select(webhook_secrets)).all(),
        )
    writes = [
        ("POST", "/v1/webhook-endpoints", {"url": PUBLIC, "events": EVENTS}),
        ("PATCH", base, {"enabled": False}),
        ("DELETE", base, None),
        ("POST", f"{base}/rotate-secret", None),
        ("POST", f"{base}/deliveries/{delivery}/replay", None),
        ("POST", "/v1/webhook-secret/rotate", None),
    ]
    for method, path, body in writes:
        answer = client.request(method, path, json=body, headers=ada.auth)
        refused(answer, 403, "account_suspended")
    with platform.db.read() as conn:
        after = (
            conn.execute(select(webhook_endpoints)).all(),
            conn.execute(select(webhook_deliveries)).all(),
            conn.execute(select(webhook_secrets)).all(),
        )
    assert after == before


def test_deleting_the_account_deletes_its_webhooks(
    client: TestClient, platform: Platform, ada: TestUser, bob: TestUser
) -> None:
    mine = create(client, ada)
    theirs = create(client, bob)
    event = emit(platform, ada, "generation.succeeded")
    deliver(platform, event, mine["id"], status="succeeded", codes=[200])
    kept = emit(platform, bob, "generation.succeeded")
    deliver(platform, kept, theirs["id"], status="failed", codes=[500])
    for who in (ada, bob):
        client.get("/v1/webhook-secret", headers=who.auth)

    answer = client.request("DELETE", "/v1/me", json={"password": PASSWORD}, headers=ada.auth)
    assert answer.status_code == 200, answer.text

    for table, column in (
        (webhook_endpoints, webhook_endpoints.c.user_id),
        (webhook_secrets, webhook_secrets.c.user_id),
        (webhook_events, webhook_events.c.user_id),
    ):
        assert count(platform, table, column == ada.id) == 0, table.name
        assert count(platform, table, column == bob.id) == 1, table.name
    assert count(platform, webhook_deliveries) == 1
    assert count(platform, webhook_attempts) == 1
    assert (
        client.get("/v1/webhook-endpoints", headers=bob.auth).json()["data"][0]["id"]
        == (theirs["id"])
    )


def test_the_export_lists_endpoints_without_secrets(
    client: TestClient, platform: Platform, ada: TestUser
) -> None:
    made = create(client, ada, description="orders")
    rotated = client.post(f"/v1/webhook-endpoints/{made['id']}/rotate-secret", headers=ada.auth)
    secret = client.get("/v1/webhook-secret", headers=ada.auth).json()["secret"]
    answer = client.get("/v1/me/export", headers=ada.auth)
    assert answer.status_code == 200
    zipped = zipfile.ZipFile(BytesIO(answer.content))
    [row] = json.loads(zipped.read("webhook_endpoints.json"))
    assert (row["id"], row["url"], row["description"]) == (made["id"], PUBLIC, "orders")
    assert json.loads(row["events"]) == EVENTS
    assert "webhook_endpoints.json" in zipped.read("README.txt").decode()
    everything = b"".join(zipped.read(name) for name in zipped.namelist())
    for hidden in (made["secret"], rotated.json()["secret"], secret):
        assert hidden.encode() not in everything
    assert set(EVENT_TYPES) >= set(EVENTS)


@pytest.fixture
def logged() -> Iterator[Captured]:
    """Every log record, as production formats it (test_security.py's handler)."""
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_no_webhook_secret_reaches_the_logs(
    client: TestClient, ada: TestUser, logged: Captured
) -> None:
    made = create(client, ada)
    path = f"/v1/webhook-endpoints/{made['id']}"
    rotated = client.post(f"{path}/rotate-secret", headers=ada.auth).json()["secret"]
    account = client.get("/v1/webhook-secret", headers=ada.auth).json()["secret"]
    again = client.post("/v1/webhook-secret/rotate", headers=ada.auth).json()["secret"]
    client.post(
        "/v1/webhook-endpoints", json={"url": "http://[::1]/", "events": EVENTS}, headers=ada.auth
    )
    assert len(logged.lines) >= 5  # the requests were logged, so the check can fail
    secrets = [made["secret"], rotated, account, again]
    leaks = [line for line in logged.lines for secret in secrets if secret[6:] in line]
    assert leaks == []

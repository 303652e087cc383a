"""``/v1/balance``, ``/v1/ledger``, ``/v1/usage`` and ``/v1/usage.csv`` as API.md
shows them, on SQLite and PostgreSQL. History is made through the ledger
service (holds with a model, captures with outputs) while the clock moves."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from plasmaart.clock import ManualClock
from plasmaart.db.tables import ENTRY_KINDS, journal_entries, usage_daily
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger import queries
from plasmaart.ledger.queries import UsageSpans, usage_spans
from plasmaart.platform import Platform
from plasmaart.web.api import credits
from plasmaart.web.pagination import encode_cursor
from plasmaart.worker import Worker
from tests.support import accounts
from tests.support.accounts import make_user

PROBLEM = "application/problem+json"
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


def grant(
    platform: Platform,
    user: accounts.TestUser,
    credits: int,
    source: str,
    expires_at: datetime | None = None,
) -> str:
    with platform.db.write() as conn:
        return platform.ledger.grant(
            conn,
            user.wallet_id,
            credits,
            source=source,
            expires_at=expires_at,
            idempotency_key=f"grant:{user.id}:{source}:{credits}:{expires_at}",
        ).lot_id


def hold(
    platform: Platform, user: accounts.TestUser, credits: int, model: str, generation_id: str
) -> str:
    with platform.db.write() as conn:
        return platform.ledger.hold(
            conn,
            user.wallet_id,
            credits,
            idempotency_key=f"hold:{generation_id}",
            generation_id=generation_id,
            model=model,
        ).hold_id


def capture(platform: Platform, hold_id: str, credits: int, outputs: int) -> None:
    with platform.db.write() as conn:
        platform.ledger.capture(
            conn, hold_id, credits, idempotency_key=f"capture:{hold_id}", outputs=outputs
        )


def release(platform: Platform, hold_id: str) -> None:
    with platform.db.write() as conn:
        platform.ledger.release(conn, hold_id, idempotency_key=f"release:{hold_id}")


def generate(
    platform: Platform,
    clock: ManualClock,
    user: accounts.TestUser,
    when: datetime,
    model: str,
    held: int,
    captured: int,
    outputs: int,
) -> None:
    """A generation held at ``when`` and captured (or released, if nothing
    was delivered) one minute later."""
    clock.set(when)
    generation_id = f"gen_{user.id[-6:]}_{when:%d%H%M}"
    hold_id = hold(platform, user, held, model, generation_id)
    clock.advance(timedelta(minutes=1))
    if captured:
        capture(platform, hold_id, captured, outputs)
    else:
        release(platform, hold_id)


def assert_problem(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body: dict[str, Any] = answer.json()
    assert body["code"] == code
    return body


# -- balance --------------------------------------------------------------------


def test_balance_lists_lots_in_burn_order_with_the_next_expiry(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "ada@example.com", credits=100)  # a never-expiring purchase
    soon = JAN_1 + timedelta(days=10)
    promo = grant(platform, user, 50, "promo", soon)
    subscription = grant(platform, user, 30, "subscription", soon)
    adjustment = grant(platform, user, 20, "adjustment", JAN_1 + timedelta(days=40))
    # A lot past its expiry that the sweep has not reached: not spendable, not shown.
    grant(platform, user, 5, "promo", JAN_1 + timedelta(hours=1))
    clock.advance(timedelta(hours=2))
    hold(platform, user, 10, "flux-schnell", "gen_running")  # taken from the promo lot

    body = client.get("/v1/balance", headers=user.auth).json()

    assert (body["available"], body["held"]) == (190, 10)
    assert [
        {key: lot[key] for key in ("id", "source", "granted", "remaining", "expires_at")}
        for lot in body["lots"]
    ] == [
        {
            "id": promo,
            "source": "promo",
            "granted": 50,
            "remaining": 40,
            "expires_at": "2026-01-11T00:00:00Z",
        },
        {
            "id": subscription,
            "source": "subscription",
            "granted": 30,
            "remaining": 30,
            "expires_at": "2026-01-11T00:00:00Z",
        },
        {
            "id": adjustment,
            "source": "adjustment",
            "granted": 20,
            "remaining": 20,
            "expires_at": "2026-02-10T00:00:00Z",
        },
        {
            "id": body["lots"][3]["id"],
            "source": "purchase",
            "granted": 100,
            "remaining": 100,
            "expires_at": None,
        },
    ]
    assert body["next_expiry"] == {"credits": 70, "expires_at": "2026-01-11T00:00:00Z"}


def test_balance_of_a_wallet_with_nothing_that_expires(
    client: TestClient, platform: Platform
) -> None:
    admin = make_user(platform, "root@example.com", admin=True, credits=7)
    other = make_user(platform, "bob@example.com", credits=1000)
    body = client.get("/v1/balance", headers=admin.auth).json()
    # An admin sees their own wallet, never someone else's.
    assert (body["available"], body["held"], body["next_expiry"]) == (7, 0, None)
    assert [lot["remaining"] for lot in body["lots"]] == [7]
    assert client.get("/v1/balance", headers=other.auth).json()["available"] == 1000


# -- ledger ---------------------------------------------------------------------


def make_history(platform: Platform, clock: ManualClock, user: accounts.TestUser) -> None:
    """Thirteen days of grants and generations: some captured in part, some
    failed, and two grants at the same instant."""
    grant(platform, user, 500, "subscription", JAN_1 + timedelta(days=31))
    grant(platform, user, 40, "promo")
    for day in range(2, 15):
        generate(platform, clock, user, at(day, 9), "flux-schnell", 4, 4 if day % 3 else 0, 4)
        generate(platform, clock, user, at(day, 15), "kling-video-v2.1", 28, 14, 1)


def test_ledger_pages_walk_every_entry_once_newest_first(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "ada@example.com", credits=100)
    make_history(platform, clock, user)
    other = make_user(platform, "bob@example.com", credits=100)
    generate(platform, clock, other, at(14, 16), "flux-schnell", 4, 4, 4)
    with platform.db.read() as conn:
        stored = conn.execute(
            select(journal_entries.c.id, journal_entries.c.amount)
            .where(journal_entries.c.wallet_id == user.wallet_id)
            .order_by(journal_entries.c.id.desc())
        ).all()

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
        answer = client.get("/v1/ledger", params=params, headers=user.auth)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["data"]) <= 7
        seen.extend(page["data"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert [entry["id"] for entry in seen] == [row.id for row in stored]
    # Grants; Flux holds and their captures or releases; Kling holds, captures, releases.
    assert len(stored) == 3 + 13 * 2 + 13 * 3
    assert pages == -(-len(stored) // 7)
    available = client.get("/v1/balance", headers=user.auth).json()["available"]
    assert sum(entry["amount"] for entry in seen) == available
    assert seen[0]["balance_after"] == available
    # Each entry's balance_after is the running sum of the amounts up to it.
    running = 0
    for entry in reversed(seen):
        running += entry["amount"]
        assert entry["balance_after"] == running
    newest_capture = next(entry for entry in seen if entry["kind"] == "capture")
    assert newest_capture == {
        "id": newest_capture["id"],
        "created_at": "2026-01-14T15:01:00Z",
        "kind": "capture",
        "amount": 0,
        "credits": 14,
        "balance_after": newest_capture["balance_after"],
        "generation_id": f"gen_{user.id[-6:]}_141500",
        "model": "kling-video-v2.1",
        "memo": None,
    }


def test_ledger_filtered_by_kind_and_time(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "ada@example.com", credits=100)
    make_history(platform, clock, user)
    other = make_user(platform, "bob@example.com", credits=100)
    generate(platform, clock, other, at(20, 9), "flux-schnell", 4, 4, 4)

    def walk(**params: Any) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {"limit": 2, **params} | ({"cursor": cursor} if cursor else {})
            page = client.get("/v1/ledger", params=query, headers=user.auth).json()
            entries.extend(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return entries

    grants = walk(kind="grant")
    # Three grants, two of them at the same instant: the id breaks the tie.
    assert [(g["amount"], g["created_at"]) for g in grants] == [
        (40, "2026-01-01T00:00:00Z"),
        (500, "2026-01-01T00:00:00Z"),
        (100, "2026-01-01T00:00:00Z"),
    ]
    captures = walk(kind="capture")
    assert len(captures) == 9 + 13  # Flux failed on days 3, 6, 9 and 12
    assert all(c["kind"] == "capture" for c in captures)
    assert [c["created_at"] for c in captures] == sorted(
        (c["created_at"] for c in captures), reverse=True
    )
    window = walk(kind="capture", since="2026-01-05", until="2026-01-06T12:00:00Z")
    assert [(c["created_at"], c["credits"]) for c in window] == [
        ("2026-01-05T15:01:00Z", 14),
        ("2026-01-05T09:01:00Z", 4),
    ]


# -- usage ----------------------------------------------------------------------


@pytest.fixture
def usage_user(platform: Platform, clock: ManualClock) -> accounts.TestUser:
    """Three days of generations, and another user's that must not count."""
    user = make_user(platform, "ada@example.com", credits=2000)
    other = make_user(platform, "bob@example.com", credits=2000)
    generate(platform, clock, user, at(1, 10), "flux-schnell", 4, 4, 4)
    generate(platform, clock, user, at(1, 18), "kling-video-v2.1", 280, 280, 1)
    generate(platform, clock, user, at(2, 9), "flux-schnell", 4, 2, 2)  # 2 of 4 delivered
    generate(platform, clock, other, at(2, 12), "flux-schnell", 4, 4, 4)
    generate(platform, clock, user, at(2, 15), "flux-schnell", 4, 0, 0)  # failed
    generate(platform, clock, user, at(3, 6), "kling-video-v2.1", 280, 280, 1)
    generate(platform, clock, user, at(3, 20), "flux-schnell", 4, 4, 4)
    return user


def usage_of(
    client: TestClient, user: accounts.TestUser, **params: str
) -> dict[str, tuple[int, ...]]:
    answer = client.get("/v1/usage", params=params, headers=user.auth)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["data"]
    assert [row["key"] for row in rows] == sorted(row["key"] for row in rows)
    return {row["key"]: (row["generations"], row["outputs"], row["credits"]) for row in rows}


def test_usage_over_whole_days(client: TestClient, usage_user: accounts.TestUser) -> None:
    whole = {"since": "2026-01-01", "until": "2026-01-04"}
    assert usage_of(client, usage_user, **whole, group_by="model") == {
        "flux-schnell": (3, 10, 10),
        "kling-video-v2.1": (2, 2, 560),
    }
    assert usage_of(client, usage_user, **whole, group_by="day") == {
        "2026-01-01": (2, 5, 284),
        "2026-01-02": (1, 2, 2),
        "2026-01-03": (2, 5, 284),
    }
    # One day, its midnight to the next.
    assert usage_of(client, usage_user, since="2026-01-02", until="2026-01-03") == {
        "flux-schnell": (1, 2, 2)
    }
    assert usage_of(client, usage_user, since="2026-01-04", until="2026-02-01") == {}


def test_usage_by_default_covers_the_last_30_utc_days(
    client: TestClient, platform: Platform, clock: ManualClock, usage_user: accounts.TestUser
) -> None:
    # The last capture was a moment ago: it counts.
    assert clock.now() == at(3, 20, 1)
    assert usage_of(client, usage_user) == {
        "flux-schnell": (3, 10, 10),
        "kling-video-v2.1": (2, 2, 560),
    }
    # On Feb 1, the 30 days are Jan 3 to Feb 1, whole days.
    clock.set(datetime(2026, 2, 1, 12, tzinfo=UTC))
    assert usage_of(client, usage_user, group_by="day") == {"2026-01-03": (2, 5, 284)}
    answer = client.get("/v1/usage.csv", headers=usage_user.auth)
    assert answer.headers["content-disposition"] == (
        'attachment; filename="plasmaart-usage-2026-01-03-2026-02-02.csv"'
    )
    assert [row[0] for row in read_csv(answer)[1:]] == [
        "2026-01-03T20:00:00Z",
        "2026-01-03T06:00:00Z",
    ]
    # Only since: up to the end of today; only until: the 30 days before it.
    assert usage_of(client, usage_user, since="2026-01-02T12:00:00Z") == {
        "flux-schnell": (1, 4, 4),
        "kling-video-v2.1": (1, 1, 280),
    }
    assert usage_of(client, usage_user, until="2026-01-31T10:05:00Z", group_by="day") == {
        "2026-01-01": (1, 1, 280),
        "2026-01-02": (1, 2, 2),
        "2026-01-03": (2, 5, 284),
    }


def test_usage_over_partial_days(client: TestClient, usage_user: accounts.TestUser) -> None:
    # Noon to noon: Jan 1 from 12:00, all of Jan 2, Jan 3 until 12:00.
    partial = {"since": "2026-01-01T12:00:00Z", "until": "2026-01-03T12:00:00Z"}
    assert usage_of(client, usage_user, **partial, group_by="model") == {
        "flux-schnell": (1, 2, 2),
        "kling-video-v2.1": (2, 2, 560),
    }
    assert usage_of(client, usage_user, **partial, group_by="day") == {
        "2026-01-01": (1, 1, 280),
        "2026-01-02": (1, 2, 2),
        "2026-01-03": (1, 1, 280),
    }
    # The same instants as a naive time (UTC) and with another offset.
    for since in ("2026-01-01T12:00:00", "2026-01-01T13:00:00+01:00"):
        assert usage_of(client, usage_user, since=since, until="2026-01-03T12:00") == {
            "flux-schnell": (1, 2, 2),
            "kling-video-v2.1": (2, 2, 560),
        }
    # Within one day; and across one midnight without a whole day inside.
    assert (
        usage_of(client, usage_user, since="2026-01-02T09:00:00Z", until="2026-01-02T09:01:00Z")
        == {}
    )
    assert usage_of(
        client, usage_user, since="2026-01-02T09:01:00Z", until="2026-01-02T09:01:00.000001Z"
    ) == {"flux-schnell": (1, 2, 2)}
    assert usage_of(
        client,
        usage_user,
        since="2026-01-01T18:01:00Z",
        until="2026-01-02T10:00:00Z",
        group_by="day",
    ) == {"2026-01-01": (1, 1, 280), "2026-01-02": (1, 2, 2)}
    # A capture exactly at ``until`` is outside; exactly at ``since`` inside.
    assert usage_of(
        client, usage_user, since="2026-01-01T10:01:00Z", until="2026-01-01T18:01:00Z"
    ) == {"flux-schnell": (1, 4, 4)}


def test_usage_reads_whole_days_from_the_roll_up(
    client: TestClient, platform: Platform, usage_user: accounts.TestUser
) -> None:
    """The journal is read only for partial days: a roll-up row that disagrees
    with the journal shows for whole days and not for partial ones."""
    with platform.db.write() as conn:
        conn.execute(
            update(usage_daily)
            .where(
                usage_daily.c.wallet_id == usage_user.wallet_id,
                usage_daily.c.day == datetime(2026, 1, 2, tzinfo=UTC).date(),
            )
            .values(credits=usage_daily.c.credits + 1000)
        )
    assert usage_of(client, usage_user, since="2026-01-02", until="2026-01-03") == {
        "flux-schnell": (1, 2, 1002)
    }
    assert usage_of(
        client, usage_user, since="2026-01-02T00:00:01Z", until="2026-01-03T00:00:00Z"
    ) == {"flux-schnell": (1, 2, 2)}


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (
            at(1, 0),
            at(4, 0),
            UsageSpans(days=(at(1, 0).date(), at(4, 0).date()), windows=[]),
        ),
        (
            at(1, 12),
            at(3, 12),
            UsageSpans(
                days=(at(2, 0).date(), at(3, 0).date()),
                windows=[(at(1, 12), at(2, 0)), (at(3, 0), at(3, 12))],
            ),
        ),
        (at(1, 12), at(2, 0), UsageSpans(days=None, windows=[(at(1, 12), at(2, 0))])),
        (
            at(1, 12),
            at(2, 12),
            UsageSpans(days=None, windows=[(at(1, 12), at(2, 0)), (at(2, 0), at(2, 12))]),
        ),
        (at(2, 0), at(2, 12), UsageSpans(days=None, windows=[(at(2, 0), at(2, 12))])),
        (
            at(1, 23),
            at(3, 0),
            UsageSpans(days=(at(2, 0).date(), at(3, 0).date()), windows=[(at(1, 23), at(2, 0))]),
        ),
    ],
)
def test_usage_spans_cut_a_range_into_whole_days_and_partial_windows(
    since: datetime, until: datetime, expected: UsageSpans
) -> None:
    assert usage_spans(since, until) == expected


def test_usage_spans_refuse_an_empty_range() -> None:
    with pytest.raises(ValueError, match="after since"):
        usage_spans(at(2, 0), at(2, 0))


# -- usage.csv ------------------------------------------------------------------


def read_csv(answer: Any) -> list[list[str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    return list(csv.reader(io.StringIO(answer.text)))


def test_usage_csv_lists_generations_newest_first(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "ada@example.com", credits=1000)
    generate(platform, clock, user, at(1, 10), "flux-schnell", 4, 4, 4)  # 996 after
    generate(platform, clock, user, at(2, 9), "flux-schnell", 4, 2, 2)  # 994 after the release
    generate(platform, clock, user, at(2, 15), "kling-video-v2.1", 280, 0, 0)  # failed: 994
    # Two generations held together and settled together: each row must find
    # its own capture or release among the entries of that instant.
    clock.set(at(2, 20))
    delivered = hold(platform, user, 4, "flux-schnell", "gen_pair_ok")  # 990
    canceled = hold(platform, user, 8, "flux-dev", "gen_pair_canceled")  # 982
    clock.advance(timedelta(minutes=1))
    capture(platform, delivered, 4, 4)  # 982
    release(platform, canceled)  # 990
    clock.set(at(3, 8))
    running = hold(platform, user, 280, "kling-video-v2.1", "gen_running")  # 710 while running
    assert running

    answer = client.get(
        "/v1/usage.csv", params={"since": "2026-01-01", "until": "2026-01-04"}, headers=user.auth
    )
    rows = read_csv(answer)
    assert answer.headers["content-disposition"] == (
        'attachment; filename="plasmaart-usage-2026-01-01-2026-01-04.csv"'
    )
    prefix = f"gen_{user.id[-6:]}"
    assert rows == [
        [
            "time",
            "generation_id",
            "model",
            "outputs",
            "credits_consumed",
            "remaining_balance",
            "status",
        ],
        ["2026-01-03T08:00:00Z", "gen_running", "kling-video-v2.1", "0", "0", "710", "running"],
        [
            "2026-01-02T20:00:00Z",
            "gen_pair_canceled",
            "flux-dev",
            "0",
            "0",
            "990",
            "released",
        ],
        ["2026-01-02T20:00:00Z", "gen_pair_ok", "flux-schnell", "4", "4", "982", "succeeded"],
        [
            "2026-01-02T15:00:00Z",
            f"{prefix}_021500",
            "kling-video-v2.1",
            "0",
            "0",
            "994",
            "released",
        ],
        ["2026-01-02T09:00:00Z", f"{prefix}_020900", "flux-schnell", "2", "2", "994", "succeeded"],
        ["2026-01-01T10:00:00Z", f"{prefix}_011000", "flux-schnell", "4", "4", "996", "succeeded"],
    ]
    # A range of datetimes; the hold's time decides, until is exclusive.
    answer = client.get(
        "/v1/usage.csv",
        params={"since": "2026-01-01T10:00:00Z", "until": "2026-01-02T15:00:00Z"},
        headers=user.auth,
    )
    assert [row[1] for row in read_csv(answer)[1:]] == [f"{prefix}_020900", f"{prefix}_011000"]
    assert answer.headers["content-disposition"] == (
        'attachment; filename="plasmaart-usage-2026-01-01T100000Z-2026-01-02T150000Z.csv"'
    )
    # Nobody else's generations; by default the last 30 days.
    other = make_user(platform, "bob@example.com")
    assert read_csv(client.get("/v1/usage.csv", headers=other.auth)) == [list(credits.CSV_HEADER)]
    assert len(read_csv(client.get("/v1/usage.csv", headers=user.auth))) == 7


def test_usage_csv_streams_in_batches_without_losing_a_row(
    client: TestClient, platform: Platform, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credits, "HISTORY_BATCH", 2)
    user = make_user(platform, "ada@example.com", credits=1000)
    # Five generations at the same instant and two later ones: batches must cut
    # between equal times without repeating or skipping one.
    clock.set(at(2, 9))
    same_instant = [hold(platform, user, 1, "flux-schnell", f"gen_same_{n}") for n in range(5)]
    assert len(same_instant) == 5
    generate(platform, clock, user, at(2, 10), "flux-schnell", 1, 1, 1)
    generate(platform, clock, user, at(2, 11), "flux-schnell", 1, 1, 1)

    rows = read_csv(client.get("/v1/usage.csv", params={"since": "2026-01-02"}, headers=user.auth))

    assert [row[1] for row in rows[1:]] == [
        f"gen_{user.id[-6:]}_021100",
        f"gen_{user.id[-6:]}_021000",
        *(f"gen_same_{n}" for n in reversed(range(5))),
    ]


def test_usage_csv_keeps_failed_and_canceled_apart(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "ada@example.com", credits=1000)
    with platform.db.read() as conn:
        account = platform.accounts.get(conn, user.id)

    def submit(prompt: str, **sandbox: Any) -> str:
        clock.advance(timedelta(minutes=1))
        request = GenerationRequest(
            "flux-schnell", prompt, params={"sandbox": {"delay_s": 0, **sandbox}}
        )
        with platform.db.write() as conn:
            return platform.generations.submit(conn, account, request).id

    clock.set(at(2, 9))
    delivered = submit("a heron")
    broken = submit("a heron that fails", fail=True)
    withdrawn = submit("a heron nobody wants")
    with platform.db.write() as conn:
        platform.generations.cancel(conn, account, withdrawn)
    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() == 2
    waiting = submit("a heron still queued")

    day = {"since": "2026-01-02", "until": "2026-01-03"}
    rows = read_csv(client.get("/v1/usage.csv", params=day, headers=user.auth))
    assert [(row[1], row[4], row[6]) for row in rows[1:]] == [
        (waiting, "0", "queued"),
        (withdrawn, "0", "canceled"),
        (broken, "0", "failed"),
        (delivered, "1", "succeeded"),
    ]
    # The dashboard's history is the same rows.
    page = client.get("/usage", params={"since": "2026-01-02"}, headers=user.auth).text
    for status in ("queued", "canceled", "failed", "succeeded"):
        assert f'class="status status-{status}">{status}<' in page, status


def test_usage_csv_defuses_spreadsheet_formulas(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    user = make_user(platform, "ada@example.com", credits=100)
    clock.set(at(2, 9))
    for n, (model, generation_id) in enumerate(
        [
            ('=HYPERLINK("http://evil.example","x")', "@SUM(A1)"),
            ("+cmd|' /C calc'!A0", "-2+3"),
            ("\tflux", "plain"),
        ]
    ):
        clock.set(at(2, 9, n))
        hold(platform, user, 1, model, generation_id)

    rows = read_csv(client.get("/v1/usage.csv", headers=user.auth))

    assert [(row[1], row[2]) for row in rows[1:]] == [
        ("plain", "'\tflux"),
        ("'-2+3", "'+cmd|' /C calc'!A0"),
        ("'@SUM(A1)", '\'=HYPERLINK("http://evil.example","x")'),
    ]


# -- refusals -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/balance", "/v1/ledger", "/v1/usage", "/v1/usage.csv"])
def test_every_credits_endpoint_needs_authentication(client: TestClient, path: str) -> None:
    assert_problem(client.get(path), 401, "unauthenticated")
    bad_key = {"Authorization": "Bearer pa_not_a_key"}
    assert_problem(client.get(path, headers=bad_key), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/ledger", {"cursor": "!!not base64!!"}, "cursor"),
        ("/v1/ledger", {"cursor": encode_cursor("12|yesterday")}, "cursor"),
        ("/v1/ledger", {"cursor": encode_cursor("twelve")}, "cursor"),
        # a time in no UTC year Python knows
        ("/v1/ledger", {"cursor": encode_cursor("12|9999-12-31T23:00-05:00")}, "cursor"),
        ("/v1/ledger", {"kind": "grant", "until": "9999-12-31T23:00-05:00"}, "until"),
        ("/v1/ledger", {"limit": "0"}, "limit"),
        ("/v1/ledger", {"limit": "201"}, "limit"),
        ("/v1/ledger", {"kind": "gift"}, "kind"),
        ("/v1/ledger", {"since": "2026-01-01"}, "kind"),
        ("/v1/ledger", {"kind": "grant", "until": "soon"}, "until"),
        ("/v1/usage", {"group_by": "week"}, "group_by"),
        ("/v1/usage", {"since": "last tuesday"}, "since"),
        ("/v1/usage", {"since": "2026-01-02", "until": "2026-01-02"}, "until"),
        ("/v1/usage", {"since": "2026-01-03", "until": "2026-01-02T23:00:00Z"}, "until"),
        ("/v1/usage.csv", {"until": "2026-13-01"}, "until"),
        ("/v1/usage", {"until": "0001-01-02"}, "until"),
        ("/v1/usage", {"since": "9999-12-31T12:00:00Z"}, "since"),
        ("/v1/usage.csv", {"since": "2026-01-03", "until": "2026-01-02"}, "until"),
    ],
)
def test_bad_parameters_are_invalid_input(
    client: TestClient, platform: Platform, path: str, params: dict[str, str], field: str
) -> None:
    user = make_user(platform, "ada@example.com", credits=10)
    body = assert_problem(client.get(path, params=params, headers=user.auth), 422, "invalid_input")
    assert [error["field"] for error in body["errors"]] == [field]


def test_the_entry_kinds_offered_are_the_journals() -> None:
    from typing import get_args

    assert set(get_args(credits.EntryKind)) == set(ENTRY_KINDS)
    assert set(queries.HISTORY_STATUS) == {"pending", "captured", "released"}


def test_an_empty_wallet(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "new@example.com")
    assert client.get("/v1/ledger", headers=user.auth).json() == {"data": [], "next_cursor": None}
    assert client.get("/v1/usage", headers=user.auth).json() == {"data": []}
    with platform.db.read() as conn:
        count = conn.execute(select(func.count()).select_from(journal_entries)).scalar_one()
    assert count == 0

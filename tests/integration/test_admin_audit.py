"""``GET /v1/admin/audit``: the audit log for admins, newest first, filtered by
actor, subject, action and time, in cursor pages; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from plasmaart.accounts import audit
from plasmaart.platform import Platform
from plasmaart.web.pagination import encode_cursor
from tests.support.accounts import make_user

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACTORS = ("usr_alice", "usr_bob", "cli")
SUBJECTS = ("usr_carol", "team_x", "model:flux-dev", "usr_dan")
ACTIONS = ("user.suspend", "credits.adjust", "catalog.change.schedule")
MANY = 137  # entries in the big log: pages of 10 end with a short one


def write_log(platform: Platform, n: int = MANY) -> list[dict[str, Any]]:
    """``n`` entries, three per instant (ties broken by id), and written out
    of time order: the second half is older than the first."""
    written = []
    with platform.db.write() as conn:
        for i in range(n):
            half = 0 if i < n // 2 else -10_000
            at = T0 + timedelta(minutes=half + i // 3)
            entry = {
                "actor": ACTORS[i % 3],
                "action": ACTIONS[i % 3 if i % 2 else (i + 1) % 3],
                "target": SUBJECTS[i % 4],
                "reason": f"reason {i}",
                "now": at,
                "data": {"n": i},
            }
            audit.record(conn, **entry)
            written.append(entry)
    return written


def newest_first(entries: list[dict[str, Any]]) -> list[int]:
    """The ``n`` of each entry in the order the log must list them (the id
    follows the order written, so it breaks ties the same way)."""
    ordered = sorted(enumerate(entries), key=lambda pair: (pair[1]["now"], pair[0]), reverse=True)
    return [entry["data"]["n"] for _, entry in ordered]


def walk(
    client: TestClient, headers: dict[str, str], query: dict[str, Any], *, pages: int = 50
) -> list[list[dict[str, Any]]]:
    """Every page of the answer, following ``next_cursor`` (at most ``pages``)."""
    served: list[list[dict[str, Any]]] = []
    cursor = None
    for _ in range(pages):
        answer = client.get(
            "/v1/admin/audit",
            params={**query, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        served.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return served
    raise AssertionError(f"still paging after {pages} pages")


@pytest.fixture
def admin_headers(platform: Platform) -> dict[str, str]:
    return make_user(platform, "admin@example.com", admin=True).auth


def test_pages_run_newest_first_without_gaps_or_duplicates(
    client: TestClient, platform: Platform, admin_headers: dict[str, str]
) -> None:
    written = write_log(platform)
    pages = walk(client, admin_headers, {"limit": 10})
    assert [len(page) for page in pages] == [10] * 13 + [7]
    served = [entry["data"]["n"] for page in pages for entry in page]
    assert served == newest_first(written)
    times = [entry["created_at"] for page in pages for entry in page]
    assert times == sorted(times, reverse=True)
    # The first entry in full.
    first = pages[0][0]
    latest = written[served[0]]
    assert first == {
        "id": first["id"],
        "created_at": latest["now"].isoformat().replace("+00:00", "Z"),
        "actor": latest["actor"],
        "action": latest["action"],
        "subject": latest["target"],
        "reason": latest["reason"],
        "data": {"n": served[0]},
    }
    # One page of everything agrees with the pages.
    assert [e["data"]["n"] for e in walk(client, admin_headers, {"limit": 200})[0]] == served


def test_entries_written_while_paging_do_not_shift_the_pages(
    client: TestClient, platform: Platform, admin_headers: dict[str, str]
) -> None:
    written = write_log(platform, 30)
    first = client.get("/v1/admin/audit", params={"limit": 7}, headers=admin_headers).json()
    # A newer entry, and one at the very instant of the page's last entry.
    last = first["data"][-1]
    with platform.db.write() as conn:
        for at in (T0 + timedelta(days=1), datetime.fromisoformat(last["created_at"])):
            audit.record(
                conn, actor="cli", action="user.create", target="usr_x", reason=None, now=at
            )
    rest = walk(client, admin_headers, {"limit": 7, "cursor": first["next_cursor"]})
    served = [e["data"].get("n") for e in first["data"]] + [
        e["data"].get("n") for page in rest for e in page
    ]
    # The entry written at the same instant has a higher id: it sorts before
    # the page's last entry, so it is not served on a later page either.
    assert served == newest_first(written)


def test_filters_by_actor_subject_action_and_time(
    client: TestClient, platform: Platform, admin_headers: dict[str, str]
) -> None:
    written = write_log(platform)
    order = newest_first(written)

    def expect(keep: Any) -> list[int]:
        return [n for n in order if keep(written[n])]

    def served(**query: Any) -> list[int]:
        pages = walk(client, admin_headers, {"limit": 9, **query})
        return [entry["data"]["n"] for page in pages for entry in page]

    since, until = T0 + timedelta(minutes=5), T0 + timedelta(minutes=11)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"actor": "usr_alice"}, lambda e: e["actor"] == "usr_alice"),
        ({"subject": "team_x"}, lambda e: e["target"] == "team_x"),
        ({"action": "credits.adjust"}, lambda e: e["action"] == "credits.adjust"),
        # since inclusive, until exclusive; a time without offset is UTC
        ({"since": since.isoformat()}, lambda e: e["now"] >= since),
        ({"until": "2026-03-01T12:11:00"}, lambda e: e["now"] < until),
        (
            {"since": "2026-03-01T13:05:00+01:00", "until": until.isoformat()},
            lambda e: since <= e["now"] < until,
        ),
        (
            {"actor": "cli", "subject": "usr_carol", "action": "user.suspend"},
            lambda e: (
                (e["actor"], e["target"], e["action"]) == ("cli", "usr_carol", "user.suspend")
            ),
        ),
        (
            {"actor": "usr_bob", "since": since.isoformat()},
            lambda e: e["actor"] == "usr_bob" and e["now"] >= since,
        ),
        # empty values (as a form sends them) filter nothing
        ({"actor": "", "action": ""}, lambda _e: True),
        ({"actor": "usr_nobody"}, lambda _e: False),
    ]
    for query, keep in cases:
        wanted = expect(keep)
        assert served(**query) == wanted, query
    # The cases are not vacuous: each real filter keeps some and drops some.
    for query, keep in cases[:-2]:
        assert 0 < len(expect(keep)) < MANY, query


def test_actions_of_the_api_are_in_the_log(
    client: TestClient, platform: Platform, admin_headers: dict[str, str]
) -> None:
    user = make_user(platform, "carol@example.com")
    admin_id = client.get("/v1/me", headers=admin_headers).json()["id"]
    suspended = client.post(
        f"/v1/admin/users/{user.id}/suspend", json={"reason": "spam"}, headers=admin_headers
    )
    assert suspended.status_code == 200
    answer = client.get("/v1/admin/audit", params={"subject": user.id}, headers=admin_headers)
    [entry] = answer.json()["data"]
    assert (entry["actor"], entry["action"], entry["subject"], entry["reason"]) == (
        admin_id,
        "user.suspend",
        user.id,
        "spam",
    )
    assert entry["data"] == {"email": "carol@example.com"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"until": "9999-12-31T23:00:00-05:00"}, "until"),  # past year 9999 in UTC
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "until"),
        ({"since": "2026-03-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "until"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),  # base64, but of "not a cursor"
        ({"cursor": encode_cursor("7|9999-12-31T23:00:00-05:00")}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"actor": "x" * 341}, "actor"),
        ({"subject": "x" * 341}, "subject"),
        ({"action": "x" * 65}, "action"),
    ],
)
def test_invalid_filters_are_refused_by_field(
    client: TestClient,
    platform: Platform,
    admin_headers: dict[str, str],
    query: dict[str, str],
    field: str,
) -> None:
    answer = client.get("/v1/admin/audit", params=query, headers=admin_headers)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert body["code"] == "invalid_input"
    assert [error["field"] for error in body["errors"]] == [field]


def test_only_admins_see_the_log(client: TestClient, platform: Platform) -> None:
    write_log(platform, 3)
    user = make_user(platform, "user@example.com")
    hidden = client.get("/v1/admin/audit", headers=user.auth)
    assert (hidden.status_code, hidden.json()["code"]) == (404, "not_found")
    # The same answer as a path that does not exist.
    assert hidden.json() == client.get("/v1/admin/nothing-here", headers=user.auth).json()
    anonymous = client.get("/v1/admin/audit")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")

"""``GET /v1/me/export`` on SQLite and PostgreSQL: the zip's files parse and
say what the database says, only the caller's own data is in it (never
another user's, never a secret), files are inline or linked, suspended
accounts may export, and exports are rate-limited."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.db.tables import generations, journal_entries, payments
from plasmaart.platform import Platform
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.leaving import make_busy

SECTIONS = (
    "ledger",
    "generations",
    "outputs",
    "uploads",
    "payments",
    "teams",
    "api_keys",
    "sessions",
    "notifications",
)


def export(client: TestClient, who: TestUser) -> zipfile.ZipFile:
    response = client.get("/v1/me/export", headers=who.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith(f'attachment; filename="plasmaart-export-{who.id}-')
    assert disposition.endswith('.zip"')
    return zipfile.ZipFile(io.BytesIO(response.content))


def read_json(zipped: zipfile.ZipFile, name: str) -> Any:
    return json.loads(zipped.read(name))


def read_csv(zipped: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(zipped.read(name).decode())))


def everything(zipped: zipfile.ZipFile) -> bytes:
    return b"\n".join(zipped.read(name) for name in zipped.namelist())


def test_the_zip_says_what_the_database_says(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com", plan="pro", credits=300)
    bob = make_user(platform, "bob@example.com", plan="studio", credits=90)
    mine, theirs = make_busy(platform, client, (alice, "alice"), (bob, "bob"))
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, bob.id), "Bob's Crew")
        invited = platform.teams.invite(conn, team.id, bob.id, alice.email)
        platform.teams.accept_invitation(conn, invited.token, platform.accounts.get(conn, alice.id))

    zipped = export(client, alice)
    names = set(zipped.namelist())
    assert {"profile.json", "README.txt", "files.csv"} <= names
    assert {f"{s}.{ext}" for s in SECTIONS for ext in ("json", "csv")} <= names

    profile = read_json(zipped, "profile.json")
    assert (profile["id"], profile["email"], profile["plan"]) == (alice.id, alice.email, "pro")
    with platform.db.read() as conn:
        balance = platform.ledger.balance(conn, alice.wallet_id)
        journal = conn.execute(
            select(journal_entries.c.id, journal_entries.c.kind, journal_entries.c.balance_after)
            .where(journal_entries.c.wallet_id == alice.wallet_id)
            .order_by(journal_entries.c.id)
        ).all()
        jobs = conn.execute(
            select(generations.c.id, generations.c.prompt, generations.c.credits_charged)
            .where(generations.c.user_id == alice.id)
            .order_by(generations.c.id)
        ).all()
        paid = conn.execute(
            select(payments.c.id, payments.c.amount_cents).where(payments.c.user_id == alice.id)
        ).all()
    assert profile["balance"] == {"available": balance.available, "held": balance.held}

    # The ledger: every entry of alice's wallet, in JSON and CSV alike.
    ledger = read_json(zipped, "ledger.json")
    assert [(e["id"], e["kind"], e["balance_after"]) for e in ledger] == [
        (row.id, row.kind, row.balance_after) for row in journal
    ]
    assert [(int(r["id"]), r["kind"]) for r in read_csv(zipped, "ledger.csv")] == [
        (row.id, row.kind) for row in journal
    ]
    assert len(ledger) >= 5  # grants, holds, captures, the queued job's hold

    # Generations with their prompts and credits; outputs inline.
    exported = read_json(zipped, "generations.json")
    assert [(g["id"], g["prompt"], g["credits_charged"]) for g in exported] == [
        (row.id, row.prompt, row.credits_charged) for row in jobs
    ]
    assert {g["id"] for g in exported} == {*mine.finished, mine.queued}
    assert [r["id"] for r in read_csv(zipped, "generations.csv")] == [row.id for row in jobs]
    outputs = read_json(zipped, "outputs.json")
    assert {o["generation_id"] for o in outputs} == set(mine.finished)
    listed = read_csv(zipped, "files.csv")
    assert len(listed) == len(mine.storage_keys) == 3  # two outputs, one upload
    for output in outputs:
        inside = f"outputs/{output['generation_id']}/{output['position']}.png"
        assert zipped.read(inside) == platform.storage.get(output["storage_key"])
    upload = read_json(zipped, "uploads.json")[0]
    assert upload["id"] == mine.upload_id
    assert zipped.read(f"uploads/{mine.upload_id}.png") == platform.storage.get(
        upload["storage_key"]
    )

    # Payments, teams, keys (never the secret), sessions, notifications.
    assert sorted(
        (p["id"], p["amount_cents"]) for p in read_json(zipped, "payments.json")
    ) == sorted((row.id, row.amount_cents) for row in paid)
    assert len(paid) == 1
    assert [(t["team_id"], t["name"], t["role"]) for t in read_json(zipped, "teams.json")] == [
        (team.id, "Bob's Crew", "member")
    ]
    keys = read_json(zipped, "api_keys.json")
    assert [k["name"] for k in keys] == ["tests"]
    assert alice.api_key.encode() not in everything(zipped)
    assert len(read_json(zipped, "sessions.json")) == 1
    assert [n["title"] for n in read_json(zipped, "notifications.json")] == ["alice news"]
    readme = zipped.read("README.txt").decode()
    assert "ledger.json" in readme
    assert platform.settings.support_email in readme

    # Nothing of bob's: not his address, his prompts, his generations or files.
    blob = everything(zipped)
    assert b"bob@example.com" not in blob
    assert b"bob: " not in blob
    for their_id in (*theirs.finished, theirs.queued, theirs.upload_id, bob.id, bob.wallet_id):
        assert their_id.encode() not in blob


def test_files_are_linked_past_the_bound(platform: Platform, client: TestClient) -> None:
    """Past the bound (or on S3) the zip links each file with a signed URL
    that works without credentials."""
    alice = make_user(platform, "alice@example.com", credits=50)
    [mine] = make_busy(platform, client, (alice, "alice"))
    platform.account_export.inline_limit = 0
    zipped = export(client, alice)
    assert not [name for name in zipped.namelist() if name.startswith(("outputs/", "uploads/"))]
    listed = read_csv(zipped, "files.csv")
    assert len(listed) == len(mine.storage_keys) == 3
    assert "download link" in zipped.read("README.txt").decode()
    for row in listed:
        assert row["file"] == ""
        assert row["url"].startswith(platform.settings.public_base_url + "/v1/")
        path = row["url"][len(platform.settings.public_base_url) :]
        fetched = client.get(path)  # no credentials: the signature is enough
        assert fetched.status_code == 200, fetched.text
        assert int(row["size"]) == len(fetched.content)


def test_exports_are_rate_limited_and_allowed_when_suspended(
    platform: Platform, client: TestClient
) -> None:
    alice = make_user(platform, "alice@example.com")
    admin = make_user(platform, "admin@example.com", admin=True)
    with platform.db.write() as conn:
        platform.suspensions.suspend(conn, alice.id, actor=admin.id, reason="review")
    for _ in range(5):
        export(client, alice)  # suspended: read-only, and export is a read
    refused = client.get("/v1/me/export", headers=alice.auth)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    # Another user's count is their own.
    export(client, admin)


def test_only_the_caller_and_only_when_signed_in(platform: Platform, client: TestClient) -> None:
    alice = make_user(platform, "alice@example.com")
    anonymous = client.get("/v1/me/export")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")
    # With the session cookie (a GET: no CSRF token needed), the caller's own.
    logged_in = client.post("/v1/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert logged_in.status_code == 200
    response = client.get("/v1/me/export")
    assert response.status_code == 200
    profile = json.loads(zipfile.ZipFile(io.BytesIO(response.content)).read("profile.json"))
    assert profile["id"] == alice.id
    assert json.loads(zipfile.ZipFile(io.BytesIO(response.content)).read("sessions.json"))

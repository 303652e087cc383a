"""Leaving's SQL: the pages of an account's data that its export reads, and
the statements that erase or anonymize an account when it is deleted.

The export reads each section a page at a time, by primary key, so that an
account with a long history never sits in memory whole. Rows come back as
``ExportRow`` (the section's columns, in ``COLUMNS`` order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, delete, func, or_, select, update

from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import (
    account_tokens,
    api_keys,
    audit_log,
    auth_throttle,
    generation_outputs,
    generations,
    invitations,
    journal_entries,
    login_failures,
    notification_outbox,
    notifications,
    payments,
    recovery_codes,
    sandbox_cards,
    sessions,
    team_members,
    teams,
    uploads,
    users,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
    webhook_secrets,
)

Value = str | int | float | bool | None


@dataclass(frozen=True)
class ExportRow:
    """One row of a section: its key (the page cursor) and its values."""

    key: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class _Section:
    table: Table
    key: Column[Any]
    columns: tuple[Column[Any], ...]
    # Which rows are the account's: the column compared with the user id,
    # or with the wallet id (the journal of the user's own wallet).
    owner: Column[Any]
    by_wallet: bool = False
    join: Any = None


_SECTIONS: Mapping[str, _Section] = {
    "ledger": _Section(
        journal_entries,
        journal_entries.c.id,
        tuple(
            journal_entries.c[name]
            for name in (
                "id",
                "created_at",
                "kind",
                "from_account",
                "to_account",
                "credits",
                "amount",
                "balance_after",
                "held_after",
                "lot_id",
                "hold_id",
                "generation_id",
                "model",
                "outputs",
                "memo",
            )
        ),
        journal_entries.c.wallet_id,
        by_wallet=True,
    ),
    "generations": _Section(
        generations,
        generations.c.id,
        tuple(
            generations.c[name]
            for name in (
                "id",
                "created_at",
                "model",
                "kind",
                "prompt",
                "num_outputs",
                "params",
                "image_url",
                "upload_id",
                "status",
                "credits_per_output",
                "credits_held",
                "credits_charged",
                "balance_after",
                "team_id",
                "license",
                "watermark",
                "error_code",
                "error_message",
                "started_at",
                "finished_at",
            )
        ),
        generations.c.user_id,
    ),
    "outputs": _Section(
        generation_outputs,
        generation_outputs.c.id,
        tuple(
            generation_outputs.c[name]
            for name in (
                "id",
                "generation_id",
                "position",
                "storage_key",
                "content_type",
                "width",
                "height",
                "duration_s",
                "size",
                "watermarked",
                "license",
                "created_at",
            )
        ),
        generations.c.user_id,
        join=generation_outputs.join(
            generations, generations.c.id == generation_outputs.c.generation_id
        ),
    ),
    "uploads": _Section(
        uploads,
        uploads.c.id,
        tuple(
            uploads.c[name]
            for name in (
                "id",
                "created_at",
                "storage_key",
                "content_type",
                "width",
                "height",
                "size",
                "sha256",
            )
        ),
        uploads.c.user_id,
    ),
    "payments": _Section(
        payments,
        payments.c.id,
        tuple(
            payments.c[name]
            for name in (
                "id",
                "created_at",
                "kind",
                "status",
                "plan_id",
                "pack_id",
                "amount_cents",
                "currency",
                "credits",
                "period_start",
                "period_end",
                "backend",
                "external_id",
                "receipt_number",
                "hosted_invoice_url",
                "failure_reason",
            )
        ),
        payments.c.user_id,
    ),
    "teams": _Section(
        team_members,
        team_members.c.team_id,
        (
            team_members.c.team_id,
            teams.c.name,
            team_members.c.role,
            team_members.c.monthly_credit_cap,
            team_members.c.joined_at,
        ),
        team_members.c.user_id,
        join=team_members.join(teams, teams.c.id == team_members.c.team_id),
    ),
    "api_keys": _Section(
        api_keys,
        api_keys.c.id,
        tuple(
            api_keys.c[name]
            for name in ("id", "name", "prefix", "created_at", "last_used_at", "revoked_at")
        ),
        api_keys.c.user_id,
    ),
    "webhook_endpoints": _Section(
        webhook_endpoints,
        webhook_endpoints.c.id,
        tuple(
            webhook_endpoints.c[name]
            for name in (
                "id",
                "created_at",
                "url",
                "events",
                "description",
                "enabled",
                "disabled_at",
                "disabled_reason",
            )
        ),
        webhook_endpoints.c.user_id,
    ),
    "sessions": _Section(
        sessions,
        sessions.c.id,
        tuple(
            sessions.c[name]
            for name in ("id", "created_at", "last_seen_at", "expires_at", "user_agent", "address")
        ),
        sessions.c.user_id,
    ),
    "notifications": _Section(
        notifications,
        notifications.c.id,
        tuple(
            notifications.c[name]
            for name in ("id", "created_at", "kind", "title", "body", "data", "read_at")
        ),
        notifications.c.user_id,
    ),
}

SECTIONS = tuple(_SECTIONS)


def columns_of(section: str) -> tuple[str, ...]:
    """The names of a section's columns (``team_id, name, ...``)."""
    return tuple(column.name for column in _SECTIONS[section].columns)


def _value(value: Any) -> Value:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def export_page(
    conn: Connection,
    section: str,
    *,
    user_id: str,
    wallet_id: str,
    after: str | None,
    limit: int,
) -> list[ExportRow]:
    """Up to ``limit`` rows of ``section`` that are the account's, by key, after ``after``."""
    spec = _SECTIONS[section]
    query = select(*spec.columns, spec.key.label("page_key"))
    if spec.join is not None:
        query = query.select_from(spec.join)
    query = query.where(spec.owner == (wallet_id if spec.by_wallet else user_id))
    if after is not None:
        query = query.where(spec.key > (int(after) if spec.by_wallet else after))
    query = query.order_by(spec.key).limit(limit)
    return [
        ExportRow(str(row.page_key), tuple(_value(value) for value in tuple(row)[:-1]))
        for row in conn.execute(query)
    ]


# -- deletion ------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """A file of a deleted account still in storage: an output of one of its
    generations, or an upload. Its row goes once the file is gone."""

    kind: str  # "output" or "upload"
    id: str
    key: str


@dataclass(frozen=True)
class Job:
    """A generation not yet ended: the deletion ends it."""

    id: str
    status: str
    num_outputs: int


def files_of_deleted(conn: Connection, *, user_id: str | None, limit: int) -> list[StoredFile]:
    """Up to ``limit`` files of deleted accounts (of ``user_id`` alone when
    given) whose rows are still there: outputs first, then uploads."""
    deleted = select(users.c.id).where(users.c.deleted_at.is_not(None))
    if user_id is not None:
        deleted = deleted.where(users.c.id == user_id)
    outputs = conn.execute(
        select(generation_outputs.c.id, generation_outputs.c.storage_key)
        .join(generations, generations.c.id == generation_outputs.c.generation_id)
        .where(generations.c.user_id.in_(deleted))
        .order_by(generation_outputs.c.id)
        .limit(limit)
    ).all()
    found = [StoredFile("output", row.id, row.storage_key) for row in outputs]
    if len(found) < limit:
        rest = conn.execute(
            select(uploads.c.id, uploads.c.storage_key)
            .where(uploads.c.user_id.in_(deleted))
            .order_by(uploads.c.id)
            .limit(limit - len(found))
        ).all()
        found += [StoredFile("upload", row.id, row.storage_key) for row in rest]
    return found


def count_files(conn: Connection, user_id: str) -> int:
    """How many output and upload files the user has."""
    outputs = (
        select(func.count())
        .select_from(generation_outputs)
        .join(generations, generations.c.id == generation_outputs.c.generation_id)
        .where(generations.c.user_id == user_id)
    )
    uploaded = select(func.count()).select_from(uploads).where(uploads.c.user_id == user_id)
    return int(conn.execute(outputs).scalar_one()) + int(conn.execute(uploaded).scalar_one())


def forget_files(conn: Connection, files: list[StoredFile]) -> None:
    """The rows of files removed from storage."""
    outputs = [f.id for f in files if f.kind == "output"]
    uploaded = [f.id for f in files if f.kind == "upload"]
    if outputs:
        conn.execute(delete(generation_outputs).where(generation_outputs.c.id.in_(outputs)))
    if uploaded:
        conn.execute(delete(uploads).where(uploads.c.id.in_(uploaded)))


def unfinished_jobs(conn: Connection, *, user_id: str, wallet_id: str) -> list[Job]:
    """Queued and running generations the user submitted, or that spend
    the user's wallet (the members of a team the user owns)."""
    rows = conn.execute(
        select(generations.c.id, generations.c.status, generations.c.num_outputs)
        .where(
            or_(generations.c.user_id == user_id, generations.c.wallet_id == wallet_id),
            generations.c.status.in_(("queued", "running")),
        )
        .order_by(generations.c.id)
    )
    return [Job(row.id, row.status, int(row.num_outputs)) for row in rows]


def erase_user(
    conn: Connection, user_id: str, *, email: str, password_hash: str, now: datetime
) -> None:
    """The user row stays (the journal's wallet keeps an owner), anonymized."""
    conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(
            email=email,
            password_hash=password_hash,
            status="active",
            status_reason=None,
            remove_watermark=False,
            email_verified_at=None,
            totp_secret=None,
            totp_pending_secret=None,
            totp_last_step=None,
            deleted_at=now,
        )
    )
    invalidate(conn, f"user:{user_id}")


def revoke_api_keys(conn: Connection, user_id: str, now: datetime) -> int:
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    invalidate(conn, f"user:{user_id}")
    return int(result.rowcount or 0)


def delete_secrets(conn: Connection, user_id: str) -> None:
    """Single-use links and recovery codes (the TOTP secret is on the user row)."""
    conn.execute(delete(account_tokens).where(account_tokens.c.user_id == user_id))
    conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))


def delete_webhooks(conn: Connection, user_id: str) -> None:
    """The account's webhooks: its events with their deliveries and attempts,
    its endpoints (and any delivery left to them) and its own secret."""
    events = select(webhook_events.c.id).where(webhook_events.c.user_id == user_id)
    endpoints = select(webhook_endpoints.c.id).where(webhook_endpoints.c.user_id == user_id)
    mine = or_(
        webhook_deliveries.c.event_id.in_(events), webhook_deliveries.c.endpoint_id.in_(endpoints)
    )
    deliveries = select(webhook_deliveries.c.id).where(mine)
    conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries)))
    conn.execute(delete(webhook_deliveries).where(mine))
    conn.execute(delete(webhook_events).where(webhook_events.c.user_id == user_id))
    conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.user_id == user_id))
    conn.execute(delete(webhook_secrets).where(webhook_secrets.c.user_id == user_id))


def delete_address_traces(conn: Connection, *, user_id: str, email: str) -> None:
    """Failed logins and throttled requests counted for the address or the user."""
    conn.execute(delete(login_failures).where(login_failures.c.email == email))
    conn.execute(delete(auth_throttle).where(auth_throttle.c.subject.in_((email, user_id))))
    conn.execute(delete(sandbox_cards).where(sandbox_cards.c.user_id == user_id))


def erase_generations(conn: Connection, user_id: str) -> int:
    """Prompts, parameters and input links of the user's generations erased.
    The rows stay (the journal's holds and captures name them), and so do
    their outputs' rows until the files are gone (``forget_files``)."""
    result = conn.execute(
        update(generations)
        .where(generations.c.user_id == user_id)
        .values(prompt="", params="{}", sandbox="{}", image_url=None, upload_id=None)
    )
    return int(result.rowcount or 0)


def delete_notifications(conn: Connection, user_id: str) -> None:
    """In-app notifications, and every message of the outbox for the user
    (mail not yet sent is never sent; copies of mail sent are not kept)."""
    conn.execute(delete(notifications).where(notifications.c.user_id == user_id))
    conn.execute(delete(notification_outbox).where(notification_outbox.c.user_id == user_id))


def anonymize_audit_log(conn: Connection, *, email: str, replacement: str) -> int:
    """The address replaced wherever the audit log names it."""
    changed = 0
    for column in (audit_log.c.data, audit_log.c.target, audit_log.c.actor, audit_log.c.reason):
        result = conn.execute(
            update(audit_log)
            .where(column.contains(email, autoescape=True))
            .values({column.name: func.replace(column, email, replacement)})
        )
        changed += int(result.rowcount or 0)
    return changed


def owned_team(conn: Connection, user_id: str) -> tuple[str, str] | None:
    """(id, name) of the team the user owns, if any."""
    row = conn.execute(
        select(teams.c.id, teams.c.name).where(teams.c.owner_id == user_id)
    ).one_or_none()
    return None if row is None else (str(row.id), str(row.name))


def team_member_ids(conn: Connection, team_id: str) -> list[str]:
    return list(
        conn.execute(
            select(team_members.c.user_id)
            .where(team_members.c.team_id == team_id)
            .order_by(team_members.c.user_id)
        ).scalars()
    )


def dissolve_team(conn: Connection, team_id: str, now: datetime) -> None:
    """Everyone leaves, pending invitations are withdrawn. The team's row
    stays, empty, for the generations and the audit entries that name it."""
    for user_id in team_member_ids(conn, team_id):
        invalidate(conn, f"user:{user_id}")
    conn.execute(delete(team_members).where(team_members.c.team_id == team_id))
    conn.execute(
        update(invitations)
        .where(
            invitations.c.team_id == team_id,
            invitations.c.accepted_at.is_(None),
            invitations.c.revoked_at.is_(None),
            invitations.c.declined_at.is_(None),
        )
        .values(revoked_at=now)
    )


def leave_teams(conn: Connection, user_id: str) -> list[str]:
    """The user leaves every team they are a member of; the teams' ids."""
    left = list(
        conn.execute(select(team_members.c.team_id).where(team_members.c.user_id == user_id))
        .scalars()
        .all()
    )
    conn.execute(delete(team_members).where(team_members.c.user_id == user_id))
    invalidate(conn, f"user:{user_id}")
    return left


def is_deleted(conn: Connection, user_id: str) -> bool:
    deleted_at = conn.execute(
        select(users.c.deleted_at).where(users.c.id == user_id)
    ).scalar_one_or_none()
    return deleted_at is not None

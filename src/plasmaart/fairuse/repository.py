"""All SQL of fair use: abuse signals, flags, and the reads scoring needs.

Every read returns a frozen dataclass or a typed tuple: evidence decoded from
its JSON, times in UTC whatever the database hands back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast

from sqlalchemy import Connection, exists, func, insert, or_, select, update

from plasmaart.clock import as_utc
from plasmaart.db.tables import (
    abuse_flags,
    abuse_signals,
    audit_log,
    lots,
    payments,
    stripe_clawbacks,
    team_members,
    teams,
    users,
)
from plasmaart.fairuse.rules import Signal, SignalKind

FlagStatus = Literal["open", "suspended", "resolved"]
UNRESOLVED: tuple[FlagStatus, ...] = ("open", "suspended")


@dataclass(frozen=True)
class UnresolvedFlag:
    """The account's open or suspended flag (at most one)."""

    id: str
    status: FlagStatus
    created_at: datetime


@dataclass(frozen=True)
class AbuseFlag:
    """A flag as admins review it (``GET /v1/admin/abuse``, the dashboard):
    the score and the evidence behind it, with the account's e-mail and
    status."""

    id: str
    user_id: str
    email: str
    user_status: Literal["active", "suspended"]
    status: FlagStatus
    score: int
    evidence: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None


class PlanPaymentRow(NamedTuple):
    """A succeeded payment that put a wallet on a plan."""

    kind: str
    plan_id: str
    created_at: datetime


def _json(evidence: dict[str, Any]) -> str:
    return json.dumps(evidence, sort_keys=True, default=str)


def signal_exists(conn: Connection, user_id: str, kind: str, subject: str) -> bool:
    found = conn.execute(
        select(abuse_signals.c.id).where(
            abuse_signals.c.user_id == user_id,
            abuse_signals.c.kind == kind,
            abuse_signals.c.subject == subject,
        )
    ).first()
    return found is not None


def insert_signal(
    conn: Connection,
    *,
    user_id: str,
    kind: str,
    subject: str | None,
    evidence: dict[str, Any],
    now: datetime,
) -> None:
    conn.execute(
        insert(abuse_signals).values(
            user_id=user_id, kind=kind, subject=subject, evidence=_json(evidence), created_at=now
        )
    )


def signals_since(
    conn: Connection, user_id: str, since: datetime, *, with_evidence: int
) -> list[Signal]:
    """The user's signals after ``since``, newest first; the newest
    ``with_evidence`` of them carry their evidence (what a flag keeps),
    the others only what scoring reads."""
    rows = conn.execute(
        select(abuse_signals.c.kind, abuse_signals.c.evidence, abuse_signals.c.created_at)
        .where(abuse_signals.c.user_id == user_id, abuse_signals.c.created_at > since)
        .order_by(abuse_signals.c.created_at.desc(), abuse_signals.c.id.desc())
    ).all()
    return [
        Signal(
            cast(SignalKind, kind),
            as_utc(created_at),
            json.loads(evidence) if n < with_evidence else {},
        )
        for n, (kind, evidence, created_at) in enumerate(rows)
    ]


def last_reinstated_at(conn: Connection, user_id: str) -> datetime | None:
    """When an admin last reinstated the user (the audit log knows, whichever
    door they used: the API or the command line)."""
    value: datetime | None = conn.execute(
        select(func.max(audit_log.c.created_at)).where(
            audit_log.c.target == user_id, audit_log.c.action == "user.reinstate"
        )
    ).scalar_one_or_none()
    return None if value is None else as_utc(value)


def unresolved_flag(conn: Connection, user_id: str) -> UnresolvedFlag | None:
    row = conn.execute(
        select(abuse_flags.c.id, abuse_flags.c.status, abuse_flags.c.created_at)
        .where(abuse_flags.c.user_id == user_id, abuse_flags.c.status.in_(UNRESOLVED))
        .order_by(abuse_flags.c.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    return UnresolvedFlag(row.id, row.status, as_utc(row.created_at))


def insert_flag(
    conn: Connection,
    *,
    flag_id: str,
    user_id: str,
    status: str,
    score: int,
    evidence: dict[str, Any],
    now: datetime,
) -> None:
    values = {"status": status, "score": score, "evidence": _json(evidence), "updated_at": now}
    conn.execute(insert(abuse_flags).values(id=flag_id, user_id=user_id, created_at=now, **values))


def update_flag(
    conn: Connection,
    flag_id: str,
    *,
    status: str,
    score: int,
    evidence: dict[str, Any],
    now: datetime,
) -> None:
    conn.execute(
        update(abuse_flags)
        .where(abuse_flags.c.id == flag_id)
        .values(status=status, score=score, evidence=_json(evidence), updated_at=now)
    )


def resolve_flags(conn: Connection, user_id: str, *, actor: str, now: datetime) -> list[str]:
    """Resolve the user's unresolved flags; their ids."""
    ids = list(
        conn.execute(
            select(abuse_flags.c.id).where(
                abuse_flags.c.user_id == user_id, abuse_flags.c.status.in_(UNRESOLVED)
            )
        ).scalars()
    )
    if ids:
        conn.execute(
            update(abuse_flags)
            .where(abuse_flags.c.id.in_(ids))
            .values(status="resolved", resolved_at=now, resolved_by=actor, updated_at=now)
        )
    return ids


def list_flags(
    conn: Connection, *, statuses: tuple[FlagStatus, ...], limit: int, before: str | None
) -> list[AbuseFlag]:
    """Flags with their user's e-mail and status, newest first."""
    query = (
        select(abuse_flags, users.c.email, users.c.status.label("user_status"))
        .select_from(abuse_flags.join(users, users.c.id == abuse_flags.c.user_id))
        .where(abuse_flags.c.status.in_(statuses))
        .order_by(abuse_flags.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(abuse_flags.c.id < before)
    return [
        AbuseFlag(
            id=row.id,
            user_id=row.user_id,
            email=row.email,
            user_status="suspended" if row.user_status == "suspended" else "active",
            status=row.status,
            score=int(row.score),
            evidence=json.loads(row.evidence),
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            resolved_at=None if row.resolved_at is None else as_utc(row.resolved_at),
            resolved_by=row.resolved_by,
        )
        for row in conn.execute(query)
    ]


def has_paid(conn: Connection, user_id: str) -> bool:
    """Whether money reached us for the user: a succeeded payment of theirs
    (a subscription now or before, a renewal, an upgrade, a credit pack), or
    of a team they belong to (its plan counts for its members), that was not
    refunded or disputed since."""
    their_teams = (
        select(teams.c.wallet_id)
        .select_from(teams.join(team_members, team_members.c.team_id == teams.c.id))
        .where(team_members.c.user_id == user_id)
    )
    # Taken back: by Stripe's record of the refund or dispute, or by the
    # purchase's lot, closed by a clawback whatever asked for it.
    taken_back = exists().where(stripe_clawbacks.c.payment_id == payments.c.id)
    lot_taken_back = exists().where(
        lots.c.id == payments.c.lot_id, lots.c.closed_reason == "clawed_back"
    )
    found = conn.execute(
        select(payments.c.id)
        .where(
            payments.c.status == "succeeded",
            payments.c.amount_cents > 0,
            or_(payments.c.user_id == user_id, payments.c.wallet_id.in_(their_teams)),
            ~taken_back,
            ~lot_taken_back,
        )
        .limit(1)
    ).first()
    return found is not None


def plan_payments(conn: Connection, wallet_id: str, since: datetime) -> list[PlanPaymentRow]:
    """The wallet's succeeded plan payments (subscription, renewal, upgrade)
    after ``since``, oldest first."""
    rows = conn.execute(
        select(payments.c.kind, payments.c.plan_id, payments.c.created_at)
        .where(
            payments.c.wallet_id == wallet_id,
            payments.c.status == "succeeded",
            payments.c.kind.in_(("subscription", "renewal", "upgrade")),
            payments.c.created_at > since,
        )
        .order_by(payments.c.created_at, payments.c.id)
    ).all()
    return [PlanPaymentRow(row.kind, row.plan_id or "", as_utc(row.created_at)) for row in rows]

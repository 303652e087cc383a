"""Abuse flags and fair use's audit entries: raising a flag, resolving an
account's flags, and the one way fair use writes to the audit log.

A flag holds the score and the evidence of an account over the flag
threshold, for an admin to review (at most one unresolved per account).
``FairUseService`` raises and updates it as signals come in; reinstating the
account (``SuspensionService.reinstate``) resolves it, and so does the next
signal after a reinstatement made some other way (``FairUseService``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.fairuse import repository as repo
from plasmaart.fairuse.repository import FlagStatus
from plasmaart.ids import new_id

# Who fair use's own decisions are by, in the audit log.
SYSTEM_ACTOR = "system:fairuse"


def record_decision(
    conn: Connection,
    action: str,
    user_id: str,
    *,
    reason: str | None,
    now: datetime,
    data: dict[str, Any],
    actor: str = SYSTEM_ACTOR,
) -> None:
    """An ``abuse.*`` entry of the audit log about ``user_id``."""
    audit.record(
        conn, actor=actor, action=action, target=user_id, reason=reason, now=now, data=data
    )


def raise_flag(
    conn: Connection,
    user_id: str,
    *,
    status: FlagStatus,
    score: int,
    evidence: dict[str, Any],
    reason: str,
    now: datetime,
) -> str:
    """Open a flag on the account (audited as ``abuse.flag``); its id."""
    flag_id = new_id("abf")
    repo.insert_flag(
        conn,
        flag_id=flag_id,
        user_id=user_id,
        status=status,
        score=score,
        evidence=evidence,
        now=now,
    )
    data = {"flag_id": flag_id, "score": score, "by_kind": evidence["by_kind"]}
    record_decision(conn, "abuse.flag", user_id, reason=reason, now=now, data=data)
    return flag_id


def resolve_flags(conn: Connection, user_id: str, *, actor: str, now: datetime) -> list[str]:
    """Resolve the account's unresolved flags, each audited as
    ``abuse.resolve``; their ids."""
    resolved = repo.resolve_flags(conn, user_id, actor=actor, now=now)
    for flag_id in resolved:
        data = {"flag_id": flag_id}
        record_decision(
            conn, "abuse.resolve", user_id, reason=None, now=now, data=data, actor=actor
        )
    return resolved

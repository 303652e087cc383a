"""``GET /v1/admin/abuse``: flagged and suspended accounts with their evidence.

Admins only (others get 404, like every admin endpoint). Reinstating an
account (``POST /v1/admin/users/{id}/reinstate``) resolves its flags.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from plasmaart.web.auth import AdminPrincipal
from plasmaart.web.deps import CursorQuery, LimitQuery, PlatformDep
from plasmaart.web.pagination import DEFAULT_LIMIT, decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/admin", tags=["admin"])

FlagStatus = Literal["open", "suspended", "resolved"]


class AbuseFlagOut(BaseModel):
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


class AbuseFlagPage(BaseModel):
    data: list[AbuseFlagOut]
    next_cursor: str | None


@router.get("/abuse", response_model=AbuseFlagPage)
def abuse_flags(
    _admin: AdminPrincipal,
    platform: PlatformDep,
    status: FlagStatus | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> AbuseFlagPage:
    """Flagged accounts (``open``: for review; ``suspended``: suspended
    automatically), newest first, with the score and the signals behind it.
    Without ``status``: both; ``status=resolved`` lists past reviews."""
    statuses: tuple[FlagStatus, ...] = ("open", "suspended") if status is None else (status,)
    before = decode_cursor(cursor) if cursor else None
    with platform.db.read() as conn:
        flags = platform.fairuse.flags(conn, statuses=statuses, limit=limit + 1, before=before)
    more = len(flags) > limit
    flags = flags[:limit]
    return AbuseFlagPage(
        data=[
            AbuseFlagOut(
                id=flag.id,
                user_id=flag.user_id,
                email=flag.email,
                user_status="suspended" if flag.user_status == "suspended" else "active",
                status=flag.status,
                score=flag.score,
                evidence=flag.evidence,
                created_at=flag.created_at,
                updated_at=flag.updated_at,
                resolved_at=flag.resolved_at,
                resolved_by=flag.resolved_by,
            )
            for flag in flags
        ],
        next_cursor=encode_cursor(flags[-1].id) if more else None,
    )

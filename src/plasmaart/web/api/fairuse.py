"""``GET /v1/admin/abuse``: flagged and suspended accounts with their evidence.

Admins only (others get 404, like every admin endpoint). Reinstating an
account (``POST /v1/admin/users/{id}/reinstate``) resolves its flags.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from plasmaart.fairuse.service import AbuseFlag, FlagStatus
from plasmaart.web.auth import AdminPrincipal
from plasmaart.web.deps import CursorQuery, LimitQuery, PlatformDep
from plasmaart.web.pagination import DEFAULT_LIMIT, decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class AbuseFlagPage(BaseModel):
    # Each flag as fair use keeps it (fairuse/repository.py).
    data: list[AbuseFlag]
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
    return AbuseFlagPage(data=flags, next_cursor=encode_cursor(flags[-1].id) if more else None)

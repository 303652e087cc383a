"""Admin endpoints over users: search, suspend, reinstate, grant or adjust
credits; the platform's statistics; and the audit log.

Every action is written to the audit log (who, what, when, why), which
``GET /v1/admin/audit`` reads. Admin endpoints answer 404 to anyone who is not
an admin.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AliasChoices, BaseModel, Field

from plasmaart.accounts import audit
from plasmaart.accounts.repository import UserSearch
from plasmaart.accounts.service import adjustment_key
from plasmaart.clock import as_utc
from plasmaart.errors import InvalidInput
from plasmaart.platform import Platform
from plasmaart.stats import platform_stats
from plasmaart.web.auth import AdminPrincipal
from plasmaart.web.deps import CursorQuery, LimitQuery, PlatformDep
from plasmaart.web.pagination import (
    DEFAULT_LIMIT,
    Page,
    audit_cursor,
    audit_position,
    decode_cursor,
    encode_cursor,
)
from plasmaart.web.schemas import StrictBody, shape

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class AdminUserOut(BaseModel):
    id: str
    email: str
    role: Literal["user", "admin"]
    status: Literal["active", "suspended"]
    status_reason: str | None
    plan: str
    available: int
    held: int
    created_at: datetime
    deleted_at: datetime | None = Field(
        default=None, description="When the account was deleted (its address is anonymized)"
    )


class AdminUserPage(BaseModel):
    data: list[AdminUserOut]
    next_cursor: str | None


class SuspendIn(StrictBody):
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class CreditsIn(StrictBody):
    amount: int = Field(description="> 0 grants, < 0 adjusts down (never below zero)")
    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    expires_at: datetime | None = None


class CreditsOut(BaseModel):
    user_id: str
    amount: int
    available: int
    lot_id: str | None


def _one_user(platform: Platform, user_id: str) -> AdminUserOut:
    with platform.db.read() as conn:
        (found,) = platform.billing.plans.users_on_plans(conn, UserSearch(1, user_id=user_id))
    return shape(AdminUserOut, found)


@router.get("/users", response_model=AdminUserPage)
def search_users(
    _admin: AdminPrincipal,
    platform: PlatformDep,
    q: Annotated[
        str | None, Query(max_length=320, description="Part of an e-mail, or an id")
    ] = None,
    status: Literal["active", "suspended"] | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> AdminUserPage:
    """Users, newest first, optionally matching ``q`` in the e-mail or id."""
    before = decode_cursor(cursor) if cursor else None
    search = UserSearch(limit + 1, q=q, status=status, before=before)
    with platform.db.read() as conn:
        found = platform.billing.plans.users_on_plans(conn, search)
    more = len(found) > limit
    found = found[:limit]
    return AdminUserPage(
        data=[shape(AdminUserOut, user) for user in found],
        next_cursor=encode_cursor(found[-1].id) if more else None,
    )


@router.post("/users/{user_id}/suspend", response_model=AdminUserOut)
def suspend_user(
    user_id: str, body: SuspendIn, admin: AdminPrincipal, platform: PlatformDep
) -> AdminUserOut:
    """Suspend: the account is read-only from now on (its writes get
    ``account_suspended``), its queued generations are canceled and released,
    and its subscription ends at the period end instead of renewing."""
    with platform.db.write() as conn:
        platform.suspensions.suspend(conn, user_id, actor=admin.user.id, reason=body.reason)
    return _one_user(platform, user_id)


@router.post("/users/{user_id}/reinstate", response_model=AdminUserOut)
def reinstate_user(user_id: str, admin: AdminPrincipal, platform: PlatformDep) -> AdminUserOut:
    """Reinstate: the account writes again, its subscription renews as
    before, and its abuse flags are resolved (the review is over)."""
    with platform.db.write() as conn:
        platform.suspensions.reinstate(conn, user_id, actor=admin.user.id)
    return _one_user(platform, user_id)


@router.post("/users/{user_id}/credits", response_model=CreditsOut)
def adjust_credits(
    user_id: str, body: CreditsIn, request: Request, admin: AdminPrincipal, platform: PlatformDep
) -> CreditsOut:
    """Grant (amount > 0) or adjust down (amount < 0, never below zero)."""
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    with platform.db.write() as conn:
        result = platform.accounts.adjust_credits(
            conn,
            user_id,
            body.amount,
            reason=body.reason,
            expires_at=expires_at,
            idempotency_key=adjustment_key(
                admin.user.id, getattr(request.state, "idempotency_key", None)
            ),
            actor=admin.user.id,
        )
    return CreditsOut(
        user_id=user_id, amount=body.amount, available=result.balance_after, lot_id=result.lot_id
    )


class AdminStatsOut(BaseModel):
    queue_depth: int = Field(description="Generations waiting for a worker")
    jobs_by_state: dict[str, int]
    credits_granted: int = Field(description="Granted or rolled over into wallets, all time")
    credits_consumed: int = Field(description="Captured by generations, all time")
    credits_expired: int = Field(description="Expired unspent, all time")


@router.get("/stats", response_model=AdminStatsOut)
def stats(_admin: AdminPrincipal, platform: PlatformDep) -> AdminStatsOut:
    """Queue depth, jobs by state, and credits granted, consumed and expired."""
    with platform.db.read() as conn:
        found = platform_stats(conn)
    return AdminStatsOut.model_validate(found, from_attributes=True)


class AuditEntryOut(BaseModel):
    id: int
    created_at: datetime
    actor: str = Field(
        description="Who acted: a user id, or `cli`, `stripe`, `system:…` for the platform"
    )
    action: str = Field(description="What was done, e.g. `user.suspend`, `credits.adjust`")
    # The log's ``target`` (accounts/audit.py), named ``subject`` in the API.
    subject: str = Field(
        validation_alias=AliasChoices("subject", "target"),
        description="What it was done to: a user or team id, `model:…`, `plan:…`, `test_clock`",
    )
    reason: str | None
    data: dict[str, Any] = Field(description="The action's details")


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return as_utc(value)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in no UTC year Python knows
        raise InvalidInput(f"{value.isoformat()} is out of range", field=field) from None


def _audit_filter(
    actor: str | None,
    subject: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
) -> audit.AuditFilter:
    """The filter of a query; empty values filter nothing (as a form sends them)."""
    start = _utc(since, "since")
    end = _utc(until, "until")
    if start is not None and end is not None and end <= start:
        raise InvalidInput("until must come after since", field="until")
    return audit.AuditFilter(
        actor=actor or None,
        target=subject or None,
        action=action or None,
        since=start,
        until=end,
    )


@router.get("/audit", response_model=Page[AuditEntryOut])
def audit_log(
    _admin: AdminPrincipal,
    platform: PlatformDep,
    actor: Annotated[
        str | None, Query(max_length=340, description="Only entries by this actor (a user id…)")
    ] = None,
    subject: Annotated[
        str | None,
        Query(max_length=340, description="Only entries about this user, team or other subject"),
    ] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="Only entries of this action")
    ] = None,
    since: Annotated[
        datetime | None,
        Query(description="RFC 3339 time; entries at or after it (a time without offset is UTC)"),
    ] = None,
    until: Annotated[datetime | None, Query(description="RFC 3339 time; entries before it")] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[AuditEntryOut]:
    """The audit log, newest first: who did what to whom, when and why."""
    wanted = _audit_filter(actor, subject, action, since, until)
    before = None if cursor is None else audit_position(cursor)
    with platform.db.read() as conn:
        found = audit.page(conn, wanted, limit=limit, before=before)
    return Page[AuditEntryOut](
        data=[AuditEntryOut.model_validate(entry, from_attributes=True) for entry in found.entries],
        next_cursor=audit_cursor(found.entries[-1].position) if found.more else None,
    )

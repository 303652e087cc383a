"""Announced catalog changes: admins schedule and withdraw them
(``/v1/admin/catalog/changes``); anybody may read the upcoming ones
(``/v1/catalog/changes``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from plasmaart.web.auth import AdminPrincipal
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.pagination import Page, page_of
from plasmaart.web.schemas import StrictBody, shape

router = APIRouter(prefix="/v1", tags=["catalog changes"])


class ChangeIn(StrictBody):
    target: Annotated[str, Field(description='"model" or "plan"', max_length=16)]
    id: Annotated[
        str, Field(description="the model's id or alias, or the plan's id", max_length=64)
    ]
    field: Annotated[str, Field(max_length=40)]
    value: Any = Field(description="the new value, of the field's type")
    effective_at: datetime = Field(description="with a time zone; at least notice_days ahead")


class ChangeOut(BaseModel):
    id: str
    target: Literal["model", "plan"]
    target_id: str
    field: str
    value: Any
    previous: Any
    effective_at: datetime


class AdminChangeOut(ChangeOut):
    status: Literal["scheduled", "in_force", "canceled"]
    created_at: datetime
    created_by: str
    canceled_at: datetime | None


@router.get("/catalog/changes", response_model=Page[ChangeOut])
def upcoming_changes(platform: PlatformDep, paging: PageQuery) -> Page[ChangeOut]:
    """Changes announced and not in force yet, soonest first."""
    with platform.db.read() as conn:
        views = platform.catalog_changes.upcoming(conn)
    return page_of([shape(ChangeOut, view) for view in views], paging)


@router.post("/admin/catalog/changes", status_code=201, response_model=AdminChangeOut)
def schedule_change(body: ChangeIn, admin: AdminPrincipal, platform: PlatformDep) -> AdminChangeOut:
    """Schedule a change; its affected users are notified by the worker."""
    with platform.db.write() as conn:
        view = platform.catalog_changes.schedule(
            conn,
            admin_id=admin.user.id,
            target=body.target,
            target_id=body.id,
            field=body.field,
            value=body.value,
            effective_at=body.effective_at,
        )
    return shape(AdminChangeOut, view)


@router.get("/admin/catalog/changes", response_model=Page[AdminChangeOut])
def list_changes(
    _admin_principal: AdminPrincipal,
    platform: PlatformDep,
    paging: PageQuery,
) -> Page[AdminChangeOut]:
    """Every change, in force and withdrawn ones too, soonest effect first."""
    with platform.db.read() as conn:
        views = platform.catalog_changes.every(conn)
    return page_of([shape(AdminChangeOut, view) for view in views], paging)


@router.delete("/admin/catalog/changes/{change_id}", response_model=AdminChangeOut)
def cancel_change(change_id: str, admin: AdminPrincipal, platform: PlatformDep) -> AdminChangeOut:
    """Withdraw a change before it takes effect (409 ``change_in_force`` after)."""
    with platform.db.write() as conn:
        view = platform.catalog_changes.cancel(conn, change_id, actor=admin.user.id)
    return shape(AdminChangeOut, view)

"""``/v1/balance-alerts``: the wallet owner's own low-balance alerts and the
expiry notice's window (docs/credits.md, "Balance alerts").

Without ``?team_id=`` the caller's own wallet; with it, the team's wallet,
for the team's owner only (a member: 403 ``forbidden``; anyone else: 404).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, StrictInt

from plasmaart.controls.alerts import AlertSettings, AlertSpec, ExpiryNotice
from plasmaart.web.auth import CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["credits"])

_TEAM_OWNER_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "With team_id: a member who is not the team's owner"},
    404: {"description": "With team_id: no such team, or you are not a member"},
}

TeamQuery = Annotated[
    str | None,
    Query(
        max_length=40,
        description="The team whose wallet (its owner's) to use; the team's owner only",
    ),
]


class AlertIn(StrictBody):
    credits: StrictInt | None = Field(
        default=None, description="Fire when the available balance falls below this many credits"
    )
    percent: StrictInt | None = Field(
        default=None,
        description="Fire below this percent (1..100) of the wallet's monthly credits",
    )


class BalanceAlertsIn(StrictBody):
    alerts: list[AlertIn] = Field(description="Up to 5; replaces the wallet's alerts")
    expiry_notice_days: StrictInt | None = Field(
        default=None,
        description="Days before credits expire to tell the owner (0: never, 1..30; "
        "null: the operator's default). Left out: unchanged",
    )


class AlertOut(BaseModel):
    id: str
    credits: int | None
    percent: int | None
    threshold: int | None = Field(
        description="The threshold in credits now (a percent resolved against the plan's "
        "monthly credits); null for a percent while the wallet has no monthly credits"
    )
    armed: bool = Field(description="Fires when the balance next falls below the threshold")
    fired_at: datetime | None = Field(description="When it last fired")
    crossings: int = Field(description="How many times it fired")
    created_at: datetime


class BalanceAlertsOut(BaseModel):
    wallet_id: str
    team_id: str | None
    available: int
    monthly_credits: int = Field(description="The plan's monthly credits percents are of")
    alerts: list[AlertOut]
    expiry_notice_days: int | None = Field(description="As set; null: the operator's default")
    default_expiry_notice_days: int
    expiry_notice_days_in_force: int = Field(description="0: no expiry notice")


def _out(settings: AlertSettings, team_id: str | None) -> BalanceAlertsOut:
    return BalanceAlertsOut(
        wallet_id=settings.wallet_id,
        team_id=team_id,
        available=settings.available,
        monthly_credits=settings.monthly_credits,
        alerts=[
            AlertOut(
                id=a.id,
                credits=a.credits,
                percent=a.percent,
                threshold=a.threshold,
                armed=a.armed,
                fired_at=a.fired_at,
                crossings=a.crossings,
                created_at=a.created_at,
            )
            for a in settings.alerts
        ],
        expiry_notice_days=settings.expiry_notice_days,
        default_expiry_notice_days=settings.default_expiry_notice_days,
        expiry_notice_days_in_force=settings.expiry_notice_days_in_force,
    )


@router.get("/balance-alerts", response_model=BalanceAlertsOut, responses=_TEAM_OWNER_ONLY)
def get_balance_alerts(
    principal: CurrentPrincipal, platform: PlatformDep, team_id: TeamQuery = None
) -> BalanceAlertsOut:
    """The wallet's balance alerts, each with its threshold in credits and
    whether it is armed, and its expiry notice window."""
    with platform.db.read() as conn:
        wallet_id = platform.teams.controlled_wallet(
            conn, principal.user.id, team_id, "its balance alerts"
        )
        settings = platform.balance_alerts.read(conn, wallet_id)
    return _out(settings, team_id)


@router.put("/balance-alerts", response_model=BalanceAlertsOut, responses=_TEAM_OWNER_ONLY)
def put_balance_alerts(
    body: BalanceAlertsIn,
    principal: CurrentPrincipal,
    platform: PlatformDep,
    team_id: TeamQuery = None,
) -> BalanceAlertsOut:
    """Replace the wallet's balance alerts (up to 5, each ``{credits}`` or
    ``{percent}``) and, if given, its expiry notice window. An alert kept
    from before keeps its armed or fired state; a new one set above the
    balance starts disarmed. Nothing fires on saving."""
    expiry = (
        ExpiryNotice(body.expiry_notice_days)
        if "expiry_notice_days" in body.model_fields_set
        else None
    )
    specs = [AlertSpec(credits=a.credits, percent=a.percent) for a in body.alerts]
    with platform.db.write() as conn:
        wallet_id = platform.teams.controlled_wallet(
            conn, principal.user.id, team_id, "its balance alerts"
        )
        settings = platform.balance_alerts.replace(conn, wallet_id, specs, expiry)
    return _out(settings, team_id)

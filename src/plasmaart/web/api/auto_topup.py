"""``/v1/auto-topup``: the wallet's auto top-up (docs/credits.md, Auto top-up).

Without ``team_id``, the caller's own wallet; with it, the team's wallet,
for the team's owner only (a member: 403 ``forbidden``; anyone else: 404).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from plasmaart.controls.topup import TopupView
from plasmaart.controls.topup_repository import TopupRun
from plasmaart.web.auth import CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["credits"])

TeamQuery = Annotated[
    str | None,
    Query(description="a team's id: its wallet's auto top-up (the team's owner only)"),
]


class AutoTopupIn(StrictBody):
    enabled: bool
    threshold: int = Field(ge=0, le=10**12, description="buy when available drops below")
    pack: str = Field(min_length=1, max_length=64, description="a credit pack's id")
    monthly_cap_cents: int = Field(
        ge=0, le=10**12, description="the most auto top-ups may spend in a calendar month"
    )


class TopupRunOut(BaseModel):
    id: str
    status: Literal["pending", "succeeded", "failed", "action_required"]
    created_at: datetime
    finished_at: datetime | None
    pack: str
    credits: int
    amount_cents: int
    currency: str
    payment_id: str | None
    failure_reason: str | None
    action_url: str | None


class AutoTopupOut(BaseModel):
    wallet_id: str
    enabled: bool
    threshold: int
    pack: str | None
    monthly_cap_cents: int
    currency: str
    spent_this_month_cents: int
    failures: int
    disabled_reason: str | None
    in_flight: bool
    last_run: TopupRunOut | None


def _run_out(run: TopupRun | None) -> TopupRunOut | None:
    if run is None:
        return None
    return TopupRunOut(
        id=run.id,
        status=run.status,
        created_at=run.created_at,
        finished_at=run.finished_at,
        pack=run.pack_id,
        credits=run.credits,
        amount_cents=run.amount_cents,
        currency=run.currency,
        payment_id=run.payment_id,
        failure_reason=run.failure_reason,
        action_url=run.action_url,
    )


def _out(view: TopupView) -> AutoTopupOut:
    return AutoTopupOut(
        wallet_id=view.wallet_id,
        enabled=view.enabled,
        threshold=view.threshold,
        pack=view.pack,
        monthly_cap_cents=view.monthly_cap_cents,
        currency=view.currency,
        spent_this_month_cents=view.spent_this_month_cents,
        failures=view.failures,
        disabled_reason=view.disabled_reason,
        in_flight=view.in_flight,
        last_run=_run_out(view.last_run),
    )


@router.get("/auto-topup", response_model=AutoTopupOut)
def get_auto_topup(
    principal: CurrentPrincipal, platform: PlatformDep, team_id: TeamQuery = None
) -> AutoTopupOut:
    """The wallet's auto top-up: its settings, what it spent this month, its
    failures in a row and its last run."""
    with platform.db.read() as conn:
        wallet_id = platform.teams.controlled_wallet(
            conn, principal.user.id, team_id, "the team wallet's auto top-up"
        )
        return _out(platform.auto_topups.view(conn, wallet_id))


@router.put("/auto-topup", response_model=AutoTopupOut)
def put_auto_topup(
    body: AutoTopupIn,
    principal: CurrentPrincipal,
    platform: PlatformDep,
    team_id: TeamQuery = None,
) -> AutoTopupOut:
    """Set the wallet's auto top-up. Enabling needs a payment method on file
    (422 ``payment_method_required``) and a cap of at least the pack's price."""
    with platform.db.write() as conn:
        wallet_id = platform.teams.controlled_wallet(
            conn, principal.user.id, team_id, "the team wallet's auto top-up"
        )
        view = platform.auto_topups.configure(
            conn,
            wallet_id=wallet_id,
            user_id=principal.user.id,
            enabled=body.enabled,
            threshold=body.threshold,
            pack_id=body.pack,
            monthly_cap_cents=body.monthly_cap_cents,
        )
        return _out(view)

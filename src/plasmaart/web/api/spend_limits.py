"""``/v1/spend-limit``: a wallet's own monthly spend limit (docs/credits.md,
"Spend limits"). Without ``team_id``, the caller's wallet; with it, the
team's, for its owner only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, StrictInt

from plasmaart.controls.limits import MAX_MONTHLY_LIMIT, WalletLimit
from plasmaart.web.auth import CurrentPrincipal
from plasmaart.web.deps import PlatformDep
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["credits"])

TeamQuery = Annotated[
    str | None,
    Query(max_length=40, description="A team's wallet (its owner only); else your own"),
]


class SpendLimitIn(StrictBody):
    monthly_credits: Annotated[
        StrictInt | None,
        Field(
            ge=1,
            le=MAX_MONTHLY_LIMIT,
            description="Credits the wallet may spend per calendar month (UTC); null: no limit",
        ),
    ]


class SpendLimitOut(BaseModel):
    monthly_credits: int | None
    spent: int = Field(description="Credits charged or still held this month")
    resets_at: datetime = Field(description="When the month ends (UTC)")


def _out(limit: WalletLimit) -> SpendLimitOut:
    return SpendLimitOut(
        monthly_credits=limit.monthly_credits, spent=limit.spent, resets_at=limit.resets_at
    )


@router.get("/spend-limit", response_model=SpendLimitOut)
def get_spend_limit(
    principal: CurrentPrincipal, platform: PlatformDep, team_id: TeamQuery = None
) -> SpendLimitOut:
    """The wallet's monthly spend limit, what it spent this month, and when that resets."""
    with platform.db.read() as conn:
        wallet_id = platform.teams.controlled_wallet(
            conn, principal.user.id, team_id, "the limits of its wallet"
        )
        return _out(platform.spend_limits.wallet_limit(conn, wallet_id))


@router.put("/spend-limit", response_model=SpendLimitOut)
def put_spend_limit(
    body: SpendLimitIn,
    principal: CurrentPrincipal,
    platform: PlatformDep,
    team_id: TeamQuery = None,
) -> SpendLimitOut:
    """Set the wallet's monthly spend limit, or remove it with null. Submissions
    that would take the month's spending past it answer 402 ``spend_limit_reached``."""
    with platform.db.write() as conn:
        wallet_id = platform.teams.controlled_wallet(
            conn, principal.user.id, team_id, "the limits of its wallet"
        )
        limit = platform.spend_limits.set_wallet_limit(
            conn, wallet_id, body.monthly_credits, actor_id=principal.user.id
        )
        return _out(limit)

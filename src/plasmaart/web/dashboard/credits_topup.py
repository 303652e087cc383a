"""The Credits page's auto top-up section (``credits_topup.html``): the
settings, what top-ups spent this month, the failures in a row, and the last
run with its state (and the way to pay when the bank asked to confirm it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from plasmaart.controls.topup import FAILURE_LIMIT
from plasmaart.controls.topup_repository import TopupRun
from plasmaart.platform import Platform
from plasmaart.web.dashboard.views import Frame

# A run's status as the page says it, and the colour of its pill.
RUN_STATES = {
    "pending": ("Charging", "queued"),
    "succeeded": ("Bought", "succeeded"),
    "failed": ("Failed", "failed"),
    "action_required": ("Needs confirming", "queued"),
}
# A run the bank asked to confirm, once the wait ended (the customer bought
# a pack, or saved the settings): nothing more is asked of them.
ASKED_THEN_SETTLED = ("Not charged", "canceled")
# What the form proposes before anything is saved.
DEFAULT_THRESHOLD = 100


def _state(run: TopupRun | None, waiting: bool) -> tuple[str, str] | None:
    """The last run's label and pill colour."""
    if run is None:
        return None
    if run.status == "action_required" and not waiting:
        return ASKED_THEN_SETTLED
    return RUN_STATES[run.status]


def topup(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    view = platform.auto_topups.view(conn, page.wallet_id)
    packs = list(page.catalog.credit_packs)
    pack = next((p for p in packs if p.id == view.pack), packs[0] if packs else None)
    run = view.last_run
    waiting = run is not None and run.status == "action_required" and view.in_flight
    return {
        "topup": view,
        "topup_packs": packs,
        "topup_pack": pack,
        "topup_threshold": view.threshold if view.pack else DEFAULT_THRESHOLD,
        # Never saved: a cap of three packs is proposed.
        "topup_cap": view.monthly_cap_cents if view.pack else (3 * pack.price_cents if pack else 0),
        "topup_limit": FAILURE_LIMIT,
        "topup_run": run,
        "topup_run_state": _state(run, waiting),
        "topup_waiting": waiting,
    }

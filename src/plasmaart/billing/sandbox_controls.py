"""The sandbox's admin controls (``/v1/admin/clock/advance`` and
``/v1/admin/users/{id}/billing/sandbox-card``), one use case each, each
written to the audit log. Both are ``not_found`` unless billing is the
sandbox: a real payment provider has no clock to move and no card to fake."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts.service import AccountService
from plasmaart.billing import repository as repo
from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.billing.service import BillingService
from plasmaart.billing.tasks import ClockReport, run_billing_clock
from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.errors import NotFound
from plasmaart.ledger.service import ExpiryResult, LedgerService
from plasmaart.ledger.tasks import expire_due_lots


def _audit(
    conn: Connection, actor: str, action: str, target: str, now: datetime, **data: Any
) -> None:
    audit.record(conn, actor=actor, action=action, target=target, reason=None, now=now, data=data)


@dataclass(frozen=True)
class ClockAdvanced:
    now: datetime  # the sandbox's time once moved
    offset: timedelta  # the test clock's whole offset from real time
    billing: ClockReport  # renewals, failed payments, downgrades… run at once
    expired: ExpiryResult  # lots that ran out on the way


def advance_test_clock(
    db: Database,
    billing: BillingService,
    ledger: LedgerService,
    clock: Clock,
    *,
    days: int,
    actor: str,
) -> ClockAdvanced:
    """Move the test clock ``days`` forward for every process, then run
    what fell due, as the worker would: the billing clock, then expiries.
    Each step is its own transaction (the worker's), so this owns them."""
    test_clock = billing.test_clock
    if test_clock is None:
        raise NotFound("Not Found")
    with db.write() as conn:
        offset = test_clock.advance(conn, timedelta(days=days))
        seconds = int(offset.total_seconds())
        _audit(
            conn,
            actor,
            "billing.clock_advance",
            "test_clock",
            clock.now(),
            days=days,
            offset_seconds=seconds,
        )
    report = run_billing_clock(db, billing)
    expired = expire_due_lots(db, ledger)
    return ClockAdvanced(now=clock.now(), offset=offset, billing=report, expired=expired)


def set_sandbox_card(
    conn: Connection,
    billing: BillingService,
    accounts: AccountService,
    user_id: str,
    *,
    declines: bool,
    actor: str,
    now: datetime,
    requires_action: bool | None = None,
) -> bool:
    """Make the user's sandbox card decline every charge, or succeed again;
    ``requires_action``: its off-session charges (auto top-ups) ask for
    authentication (None: left as it is). Whether it requires action now."""
    sandbox = billing.backend
    if not isinstance(sandbox, SandboxBackend):
        raise NotFound("Not Found")
    user = accounts.get(conn, user_id)
    sandbox.set_card(conn, user.id, declines=declines, requires_action=requires_action)
    data: dict[str, Any] = {"declines": declines}
    if requires_action is not None:
        data["requires_action"] = requires_action
    _audit(conn, actor, "billing.sandbox_card", user.id, now, **data)
    return repo.card_requires_action(conn, user.id)

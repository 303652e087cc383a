"""Billing's clock work, run by every worker (before the ledger's expiry
sweep) and by the sandbox's ``/v1/admin/clock/advance``: renewals, failed
payments, scheduled downgrades and cancellations at the period end, and grace
periods that ran out.

Each step of each subscription is its own short write transaction that locks
the subscription's row and looks at its state again, so several workers
running this at once do every step exactly once; a worker that was down
catches up period by period.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from plasmaart.billing.service import BillingService
from plasmaart.billing.subscriptions import ClockStep
from plasmaart.db.engine import Database

BATCH = 100


@dataclass
class ClockReport:
    steps: Counter[ClockStep] = field(default_factory=Counter)

    def __getitem__(self, step: ClockStep) -> int:
        return self.steps[step]

    @property
    def total(self) -> int:
        return sum(self.steps.values())


def run_billing_clock(db: Database, billing: BillingService) -> ClockReport:
    """Run everything that fell due for clock-driven subscriptions."""
    report = ClockReport()
    after = ""
    while True:
        with db.read() as conn:
            due = billing.subscriptions.due_subscriptions(conn, after=after, limit=BATCH)
        for subscription_id in due:
            while True:
                with db.write() as conn:
                    step = billing.subscriptions.advance_subscription(conn, subscription_id)
                if step is None:
                    break
                report.steps[step] += 1
        if len(due) < BATCH:
            return report
        after = due[-1]

"""Scheduling, withdrawing and announcing changes to the catalog.

An admin schedules a change at least ``notice_days`` ahead; the change row is
the durable cause of its notices. The worker (``queue_change_notices``) then
queues, through the notification outbox, one notice per affected user when
the change is scheduled and a reminder a day before it takes effect; each
stage is marked on the change row in the transaction that queues its
notices, and every notice has its own cause key, so two workers, or one run
twice, notify each user once per stage.

Who is affected: for a model, everyone whose plan (their own, or that of a
team they generate for) includes the model's tier; for a plan, its
subscribers, including those moving to it at their period end (Free: every
user without a paid plan).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.billing.plans import PlanService
from plasmaart.catalog import repository as repo
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.catalog.changes import (
    REMINDER_BEFORE,
    CatalogChange,
    ChangeTarget,
    change_problems,
    current_value,
)
from plasmaart.catalog.schema import Catalog, ModelSpec, PlanSpec
from plasmaart.changes.notices import CatalogChangeNotice, Stage
from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.errors import Conflict, DomainError, InvalidInput, NotFound
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService
from plasmaart.outbox import Outbox
from plasmaart.teams.service import TeamService

ChangeStatus = Literal["scheduled", "in_force", "canceled"]
# Users looked at per query while working out who a change affects.
USER_BATCH = 500
# Changes one worker pass announces, per stage.
CHANGE_BATCH = 20


class NoticePeriod(DomainError):
    code = "notice_period"
    status = 422
    title = "Too little notice"


class ChangeNotFound(NotFound):
    pass


class ChangeInForce(Conflict):
    code = "change_in_force"
    title = "Change already in force"


@dataclass(frozen=True)
class ChangeView:
    """A change as the API shows it: what changes from what to what, and when."""

    id: str
    target: ChangeTarget
    target_id: str
    field: str
    value: Any
    previous: Any
    effective_at: datetime
    status: ChangeStatus
    created_at: datetime
    created_by: str
    canceled_at: datetime | None


@dataclass(frozen=True)
class NoticeResult:
    changes: int = 0
    notices: int = 0


class CatalogChangeService:
    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        ledger: LedgerService,
        plans: PlanService,
        teams: TeamService,
        outbox: Outbox,
        *,
        notice_days: int,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.ledger = ledger
        self.plans = plans
        self.teams = teams
        self.outbox = outbox
        self.notice = timedelta(days=notice_days)

    # -- what admins do ----------------------------------------------------

    def schedule(
        self,
        conn: Connection,
        *,
        admin_id: str,
        target: str,
        target_id: str,
        field: str,
        value: Any,
        effective_at: datetime,
    ) -> ChangeView:
        """Schedule a change; refused (writing nothing) with ``invalid_input``
        for a bad target, field or value or a past date, and with
        ``notice_period`` when it would take effect too soon."""
        now = self.clock.now()
        if effective_at.tzinfo is None:
            raise InvalidInput("must include a time zone (e.g. Z)", field="effective_at")
        if target not in ("model", "plan"):
            raise InvalidInput('must be "model" or "plan"', field="target")
        if target == "model":
            # Models answer to their aliases too; the change names the id.
            try:
                target_id = self.catalogs.base.model(target_id).id
            except KeyError:
                raise InvalidInput(f"no model {target_id!r}", field="id") from None
        if effective_at <= now:
            raise InvalidInput(
                f"{effective_at.isoformat()} is in the past; a change takes effect in the future",
                field="effective_at",
            )
        change = CatalogChange(
            id=new_id("chg"),
            target="model" if target == "model" else "plan",
            target_id=target_id,
            field=field,
            value=value,
            effective_at=effective_at,
        )
        problems = change_problems(self.catalogs.base, repo.active_changes(conn), change)
        if problems:
            errors = [{"field": name, "message": message} for name, message in problems]
            raise InvalidInput(problems[0][1], errors=errors)
        earliest = now + self.notice
        if effective_at < earliest:
            days = self.notice.days
            raise NoticePeriod(
                f"changes are announced at least {days} days ahead: "
                f"the earliest effective date now is {earliest.isoformat()}",
                notice_days=days,
                earliest_effective_at=earliest.isoformat(),
            )
        repo.insert_change(conn, change, created_by=admin_id, now=now)
        audit.record(
            conn,
            actor=admin_id,
            action="catalog.change.schedule",
            target=f"{change.target}:{change.target_id}",
            reason=None,
            now=now,
            data={
                "change_id": change.id,
                "field": change.field,
                "value": change.value,
                "effective_at": change.effective_at.isoformat(),
            },
        )
        return self.get(conn, change.id)

    def cancel(self, conn: Connection, change_id: str, *, actor: str) -> ChangeView:
        """Withdraw a change that has not taken effect (again: no change)."""
        record = repo.record_by_id(conn, change_id, lock=True)
        if record is None:
            raise ChangeNotFound(f"no catalog change {change_id!r}")
        if record.canceled_at is None:
            if record.change.effective_at <= self.clock.now():
                raise ChangeInForce(
                    f"change {change_id} took effect at "
                    f"{record.change.effective_at.isoformat()}; schedule a new one to undo it"
                )
            repo.cancel(conn, change_id, self.clock.now())
            self._queue_withdrawal_notices(conn, record.change)
            audit.record(
                conn,
                actor=actor,
                action="catalog.change.cancel",
                target=f"{record.change.target}:{record.change.target_id}",
                reason=None,
                now=self.clock.now(),
                data={"change_id": change_id},
            )
        return self.get(conn, change_id)

    # -- reads -------------------------------------------------------------

    def get(self, conn: Connection, change_id: str) -> ChangeView:
        record = repo.record_by_id(conn, change_id)
        if record is None:
            raise ChangeNotFound(f"no catalog change {change_id!r}")
        return self._view(record, repo.active_changes(conn))

    def every(self, conn: Connection) -> list[ChangeView]:
        """Every change, withdrawn and in force ones too, soonest effect first."""
        active = repo.active_changes(conn)
        return [self._view(record, active) for record in repo.all_records(conn)]

    def upcoming(self, conn: Connection) -> list[ChangeView]:
        """Changes not in force yet and not withdrawn, soonest first."""
        now = self.clock.now()
        active = repo.active_changes(conn)
        return [
            self._view(record, active)
            for record in repo.all_records(conn, after=now)
            if record.canceled_at is None
        ]

    # -- notices (the worker) ------------------------------------------------

    def queue_change_notices(self, db: Database) -> NoticeResult:
        """Queue the notices that fell due: for changes scheduled since the
        last pass, and reminders for those taking effect within a day.

        Users are worked through ``USER_BATCH`` at a time, each batch in its
        own transaction that locks the change row and records how far the
        stage got, so the write lock is never held long and a worker that
        dies resumes where the last commit left off."""
        now = self.clock.now()
        with db.read() as conn:
            stages: list[tuple[str, Stage]] = [
                (r.change.id, "announced") for r in repo.unannounced(conn, limit=CHANGE_BATCH)
            ]
            stages += [
                (r.change.id, "reminder")
                for r in repo.due_reminders(
                    conn, remind_from=now + REMINDER_BEFORE, limit=CHANGE_BATCH
                )
            ]
        changes = notices = 0
        for change_id, stage in stages:
            done = False
            for _ in range(1_000_000):  # bounded: USER_BATCH users a round
                with db.write() as conn:
                    queued, done = self._notice_batch(conn, change_id, stage, now)
                notices += queued
                if done:
                    break
            changes += done
        return NoticeResult(changes, notices)

    def affected(self, conn: Connection, change: CatalogChange, user_ids: list[str]) -> list[str]:
        """Those of ``user_ids`` that ``change`` affects, as their plans stand now."""
        catalog = self.catalogs.now(conn)
        model = catalog.model(change.target_id) if change.target == "model" else None
        found = []
        for user_id in user_ids:
            plans = self._plans_of(conn, catalog, user_id)
            if model is not None:
                hit = any(_includes(plan, model) for plan in plans)
            else:
                hit = any(plan.id == change.target_id for plan in plans)
            if hit:
                found.append(user_id)
        return found

    # -- internals -----------------------------------------------------------

    def _plans_of(self, conn: Connection, catalog: Catalog, user_id: str) -> list[PlanSpec]:
        """The plans the user generates under, and any they move to at their
        period end: their own, and those of the teams they belong to."""
        wallets = [self.ledger.wallet_of(conn, "user", user_id)]
        wallets += [membership.team.wallet_id for membership in self.teams.teams_of(conn, user_id)]
        plans: list[PlanSpec] = []
        for wallet in dict.fromkeys(wallets):
            plans.append(self.plans.plan_of(conn, wallet))
            subscription = self.plans.subscription(conn, wallet)
            if subscription is not None and subscription.pending_plan:
                with suppress(KeyError):  # a plan since removed from the catalog
                    plans.append(catalog.plan(subscription.pending_plan))
        return plans

    def _queue_withdrawal_notices(self, conn: Connection, change: CatalogChange) -> None:
        """Tell everyone the change was announced to that it will not happen."""
        notice = self._notice(conn, change, "withdrawn")
        for user_id in repo.announced_users(conn, change.id):
            self.outbox.enqueue(
                conn,
                cause_key=f"catalog_change:{change.id}:withdrawn:{user_id}",
                user_id=user_id,
                fact=notice,
            )

    def _notice(self, conn: Connection, change: CatalogChange, stage: Stage) -> CatalogChangeNotice:
        """What users hear of ``change`` at ``stage``: named, and compared with
        what it replaces, by the catalog in force just before it."""
        catalog = self.catalogs.at(conn, change.effective_at - timedelta(microseconds=1))
        subject = (
            catalog.model(change.target_id)
            if change.target == "model"
            else catalog.plan(change.target_id)
        )
        return CatalogChangeNotice(
            change,
            stage,
            name=subject.name,
            previous=current_value(catalog, change.target, change.target_id, change.field),
            currency=catalog.currency,
        )

    def _notice_batch(
        self, conn: Connection, change_id: str, stage: Stage, now: datetime
    ) -> tuple[int, bool]:
        """Queue one batch of a stage's notices: (how many, whether the stage is done)."""
        # Locked: a second worker on the same change waits, then sees the
        # progress this one committed (and the cause keys stop any double).
        record = repo.record_by_id(conn, change_id, lock=True)
        column = "announced_at" if stage == "announced" else "reminded_at"
        if record is None or record.canceled_at is not None:
            return 0, True
        if getattr(record, column) is not None:
            return 0, True
        change = record.change
        if stage == "reminder" and change.effective_at <= now:
            # A worker down past the effective time does not remind late.
            repo.advance_notices(conn, change_id, cursor=None, done=column, now=now)
            return 0, True
        user_ids = repo.user_ids_after(conn, record.notice_cursor, USER_BATCH)
        notice = self._notice(conn, change, stage)
        queued = 0
        for user_id in self.affected(conn, change, user_ids):
            queued += self.outbox.enqueue(
                conn,
                cause_key=f"catalog_change:{change.id}:{stage}:{user_id}",
                user_id=user_id,
                fact=notice,
            )
        done = len(user_ids) < USER_BATCH
        repo.advance_notices(
            conn,
            change_id,
            cursor=user_ids[-1] if user_ids else None,
            done=column if done else None,
            now=now,
        )
        return queued, done

    def _view(self, record: repo.ChangeRecord, active: list[CatalogChange]) -> ChangeView:
        change = record.change
        earlier = [c for c in active if (c.effective_at, c.id) < (change.effective_at, change.id)]
        before = self.catalogs.applying(earlier)
        status: ChangeStatus = "scheduled"
        if record.canceled_at is not None:
            status = "canceled"
        elif change.effective_at <= self.clock.now():
            status = "in_force"
        return ChangeView(
            id=change.id,
            target=change.target,
            target_id=change.target_id,
            field=change.field,
            value=change.value,
            previous=current_value(before, change.target, change.target_id, change.field),
            effective_at=change.effective_at,
            status=status,
            created_at=record.created_at,
            created_by=record.created_by,
            canceled_at=record.canceled_at,
        )


def _includes(plan: PlanSpec, model: ModelSpec) -> bool:
    # Availability aside (a change may be what makes the model available).
    return model.tier in plan.model_tiers and (plan.early_access or not model.early_access)

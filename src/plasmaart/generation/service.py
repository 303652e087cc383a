"""Submitting, quoting, cancelling and reading generations.

A submission is validated against the model (kind, inputs, prompt, params,
outputs), the paying wallet's plan (tier, early access) and fair use (queued
jobs), quoted at the price in force, and then held and queued in ONE
transaction: either the credits are held and the job exists, or neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import Connection

from plasmaart.accounts.credentials import KeyLimits
from plasmaart.accounts.service import User
from plasmaart.billing.plans import PlanService
from plasmaart.catalog import (
    Catalog,
    ModelSpec,
    PlanSpec,
    param_errors,
    plan_allows_model,
    queue_boost_seconds,
    quote_credits,
    required_plan,
)
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock, as_utc
from plasmaart.controls.limits import MemberCap, Spender, SpendLimits
from plasmaart.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    SpendLimitReached,
    needs_credits,
)
from plasmaart.generation import repository as repo
from plasmaart.generation.errors import ConcurrencyLimit, GenerationNotFound, ModelNotInPlan
from plasmaart.generation.providers.sandbox import sandbox_errors
from plasmaart.generation.repository import GenerationRow, OutputRow
from plasmaart.generation.scheduling import virtual_start
from plasmaart.generation.webhook_events import TERMINAL_EVENTS, GenerationWebhooks
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService, SettleResult
from plasmaart.teams.service import TeamService

QUEUE_FULL_RETRY_AFTER_S = 10
# Who may cancel a team's generation besides its submitter: the roles that
# run the team. Teams have one such role, their owner's.
TEAM_CANCEL_ROLES = frozenset({"owner"})


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    num_outputs: int = 1
    image_url: str | None = None
    upload_id: str | None = None
    team_id: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    # Where this job's terminal event is POSTed (docs/webhooks.md).
    webhook_url: str | None = None
    # The API key the request came with (its id is recorded on the job, its
    # spend limits checked: controls/limits.py); None from a session.
    api_key: KeyLimits | None = None


@dataclass(frozen=True)
class Output:
    id: str
    position: int
    content_type: str
    width: int | None
    height: int | None
    duration_s: float | None
    watermarked: bool
    license: str


@dataclass(frozen=True)
class Generation:
    id: str
    user_id: str
    team_id: str | None
    status: str
    model: str
    kind: str
    prompt: str
    num_outputs: int
    credits_per_output: int
    credits_held: int
    credits_charged: int
    balance_after: int
    params: dict[str, Any]
    outputs: tuple[Output, ...]
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None
    license: str
    watermark: bool
    cancel_requested: bool = False


# Told of a generation's new state inside the transaction that wrote it; it
# leaves whatever must wait for the commit to ``after_commit``.
GenerationListener = Callable[[Connection, Generation], None]


class ListFilters(TypedDict, total=False):
    """Which generations a list shows (``GenerationService.list``)."""

    before: str | None  # ids before this one (the next page)
    status: str | None
    model: str | None
    team_id: str | None  # one team's; None: one's own and one's teams'


@dataclass(frozen=True)
class Seen:
    """A generation as one caller reads it."""

    generation: Generation
    # Whether the caller is one who may cancel it (its submitter, or the
    # owner of its team); whether it can still be canceled is its status.
    caller_may_cancel: bool


@dataclass(frozen=True)
class OutputFile:
    """A stored output, and whether the caller may read it without a signed link."""

    output: OutputRow
    readable: bool


@dataclass(frozen=True)
class Ended:
    """How a job ended (``GenerationService.end``)."""

    job: GenerationRow  # as it is now: succeeded, failed or canceled
    settled: SettleResult  # the capture, or the release, of its hold
    charged: int
    finished_at: datetime


@dataclass(frozen=True)
class Quote:
    credits: int
    available: int
    available_after: int
    allowed: bool
    reason: str | None


@dataclass(frozen=True)
class _Checked:
    model: ModelSpec
    plan: PlanSpec
    wallet_id: str
    credits: int
    params: dict[str, Any]
    sandbox: dict[str, Any]
    # Who spends (the wallet, the request's API key, the member's monthly
    # cap in the team paying): the spend limits are checked in the read
    # step, and again in the write step under the wallet's lock.
    spender: Spender


@dataclass(frozen=True)
class Submission:
    """A submission the read step accepted: what its write step writes."""

    user_id: str
    request: GenerationRequest
    checked: _Checked
    generation_id: str
    # The moment it is priced at (the catalog in force) and enqueued at.
    now: datetime
    virtual_start: datetime
    watermark: bool
    idempotency_key: str | None
    # Its place in the queue as the read step saw it (a moment's snapshot,
    # as any queue position is).
    queue_position: int


class GenerationService:
    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        ledger: LedgerService,
        plans: PlanService,
        teams: TeamService,
        provider_name: str,
        *,
        limits: SpendLimits,
        listeners: Iterable[GenerationListener] = (),
        webhooks: GenerationWebhooks | None = None,
    ) -> None:
        self.clock = clock
        self.limits = limits
        self.catalogs = catalogs
        self.ledger = ledger
        self.plans = plans
        self.teams = teams
        self.provider_name = provider_name
        # Called after commit with the generation whenever it changes.
        self.listeners: tuple[GenerationListener, ...] = tuple(listeners)
        # A job's ``webhook_url`` checked, and the events of its end emitted.
        self.webhooks = webhooks

    # -- submission ------------------------------------------------------
    #
    # A submission is a read step and a write step (docs/generations.md,
    # "The transaction of a submission"). ``prepare`` does every read that
    # decides whether and how the job is accepted (the idempotency lookup,
    # validation, the catalog and plan in force, the upload, the team and its
    # cap, the queue) in a read transaction; ``write_submission`` does only
    # the statements whose result decides the write, in the write transaction.

    def submit(
        self,
        conn: Connection,
        user: User,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
    ) -> Generation:
        """Hold the credits and queue the job, both steps in the caller's
        write transaction (the API runs them apart: ``SubmissionService``)."""
        prepared = self.prepare(conn, user, request, idempotency_key=idempotency_key)
        if isinstance(prepared, Generation):
            return prepared
        return self.write_submission(conn, prepared)

    def prepare(
        self,
        conn: Connection,
        user: User,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
    ) -> Generation | Submission:
        """The read step: the job already submitted under ``idempotency_key``,
        or the checked submission ready for ``write_submission``. Raises the
        refusal (invalid input, model not in plan, a spend limit, full queue)."""
        if idempotency_key:
            existing = repo.by_idempotency_key(conn, user.id, idempotency_key)
            if existing is not None:
                return self._load(conn, existing)
        now = self.clock.now()
        checked = self._check(conn, user, request, now)
        queued, wallet_limit = repo.queued_and_limit(conn, checked.wallet_id)
        if queued >= checked.plan.max_queued_jobs:
            raise _queue_full(queued, checked.plan)
        # Early and without locks; the write step's guard is what guarantees.
        self.limits.check(conn, checked.spender, checked.credits, now, wallet_limit=wallet_limit)
        generation_id = new_id("gen")
        # The queue's terms are the catalog file's (announced changes leave them be).
        start = virtual_start(now, queue_boost_seconds(self.catalogs.base, checked.plan))
        return Submission(
            user_id=user.id,
            request=request,
            checked=checked,
            generation_id=generation_id,
            now=now,
            virtual_start=start,
            watermark=not (checked.plan.watermark_removable and user.remove_watermark),
            idempotency_key=idempotency_key,
            queue_position=repo.position_at(conn, start, generation_id),
        )

    def write_submission(self, conn: Connection, submission: Submission) -> Generation:
        """The write step, in the caller's write transaction (it never
        commits, and leaves its events to ``after_commit``): the hold, whose
        spend guard checks the spend limits under the wallet's lock, and the
        job inserted only while the wallet's queue has room. Returns the job
        as written."""
        checked, request = submission.checked, submission.request
        plan, model = checked.plan, checked.model
        generation_id = submission.generation_id
        hold = self.ledger.hold(
            conn,
            checked.wallet_id,
            checked.credits,
            idempotency_key=f"generation:{generation_id}:hold",
            generation_id=generation_id,
            model=model.id,
            memo=f"{model.name} x{request.num_outputs}",
            # Under the wallet's lock: the wallet's other submissions are all
            # counted now, or wait for this one (and the key's, on any wallet).
            spend_guard=self.limits.guard(checked.spender, checked.credits, submission.now),
        )
        now = submission.now
        params = json.dumps(checked.params, sort_keys=True)
        license_ = "commercial" if plan.commercial_license else "personal"
        written = repo.insert_queued_within(
            conn,
            {
                "id": generation_id,
                "user_id": submission.user_id,
                "wallet_id": checked.wallet_id,
                "team_id": request.team_id,
                "model": model.id,
                "kind": model.kind,
                "prompt": request.prompt,
                "num_outputs": request.num_outputs,
                "params": params,
                "sandbox": json.dumps(checked.sandbox, sort_keys=True),
                "upload_id": request.upload_id,
                "image_url": request.image_url,
                "credits_per_output": model.credits,
                "credits_held": checked.credits,
                "credits_charged": 0,
                "hold_id": hold.hold_id,
                "balance_after": hold.balance_after,
                "status": "queued",
                "queue_class": plan.queue_class,
                "video": model.kind != "text-to-image",
                "license": license_,
                "watermark": submission.watermark,
                "enqueued_at": now,
                "virtual_start": submission.virtual_start,
                "provider": self.provider_name,
                "idempotency_key": submission.idempotency_key,
                "created_at": now,
                "webhook_url": request.webhook_url,
                "api_key_id": None if request.api_key is None else request.api_key.key_id,
            },
            plan.max_queued_jobs,
        )
        if not written:
            # Others filled the queue since the read step (the exception
            # rolls the hold back with the rest of the transaction).
            raise _queue_full(plan.max_queued_jobs, plan)
        generation = Generation(
            id=generation_id,
            user_id=submission.user_id,
            team_id=request.team_id,
            status="queued",
            model=model.id,
            kind=model.kind,
            prompt=request.prompt,
            num_outputs=request.num_outputs,
            credits_per_output=model.credits,
            credits_held=checked.credits,
            credits_charged=0,
            balance_after=hold.balance_after,
            params=json.loads(params),
            outputs=(),
            error_code=None,
            error_message=None,
            created_at=as_utc(now),
            started_at=None,
            finished_at=None,
            queue_position=submission.queue_position,
            license=license_,
            watermark=submission.watermark,
        )
        self._announce(conn, generation)
        return generation

    def by_idempotency_key(self, conn: Connection, user: User, key: str) -> Generation | None:
        """The job ``user`` submitted under ``key``, if any."""
        existing = repo.by_idempotency_key(conn, user.id, key)
        return None if existing is None else self._load(conn, existing)

    def quote(self, conn: Connection, user: User, request: GenerationRequest) -> Quote:
        """What the request would cost and whether it would be accepted; holds
        nothing. The same reads as a submission's read step."""
        now = self.clock.now()
        try:
            checked = self._check(conn, user, request, now)
        except ModelNotInPlan as refused:
            model = self._model(self.catalogs.at(conn, now), request)
            credits = model.credits * max(request.num_outputs, 1)
            wallet = self._wallet(conn, user, request)
            available = self.ledger.balance(conn, wallet).available
            return Quote(credits, available, available - credits, False, refused.detail)
        available = self.ledger.balance(conn, checked.wallet_id).available
        allowed, reason = available >= checked.credits, None
        if not allowed:
            reason = needs_credits(checked.credits, available)
        queued, wallet_limit = repo.queued_and_limit(conn, checked.wallet_id)
        if queued >= checked.plan.max_queued_jobs:
            allowed = False
            reason = _queue_full(queued, checked.plan).detail
        try:
            self.limits.check(
                conn, checked.spender, checked.credits, now, wallet_limit=wallet_limit
            )
        except SpendLimitReached as refused:
            allowed, reason = False, refused.detail
        return Quote(checked.credits, available, available - checked.credits, allowed, reason)

    # -- cancel and reads --------------------------------------------------

    def cancel(self, conn: Connection, user: User, generation_id: str) -> Generation:
        """Queued: canceled and released at once. Running: the worker asks the
        provider to stop, and the job ends canceled, or succeeded (and charged)
        if the provider had already delivered. Finished: unchanged."""
        row = repo.lock_generation(conn, generation_id)
        if row is None or not self._visible(conn, user, row):
            raise GenerationNotFound(f"no generation {generation_id!r}")
        if not may_cancel(user.id, row.user_id, row.team_id, self._managed_team(conn, user, row)):
            # Every member reads the team's generations; stopping another
            # member's job is for its submitter and the team's owner.
            raise Forbidden(
                "only its submitter and the team's owner can cancel another member's generation"
            )
        if row.status == "queued":
            self.end(
                conn,
                row,
                outputs=(),
                otherwise="canceled",
                code="canceled",
                message="canceled before it started",
            )
        elif row.status == "running":
            repo.request_cancel(conn, generation_id)
        generation = self._load(conn, generation_id)
        if row.status == "running":
            self._announce(conn, generation)
        return generation

    def cancel_queued_of(self, conn: Connection, user_id: str, reason: str) -> int:
        """Cancel and refund every queued generation a user submitted (an
        account suspension); running ones finish. How many were canceled."""
        canceled = 0
        for generation_id in repo.queued_of_user(conn, user_id):
            row = repo.lock_generation(conn, generation_id)
            if row is None or row.status != "queued":
                continue
            self.end(
                conn,
                row,
                outputs=(),
                otherwise="canceled",
                code="account_suspended",
                message=reason,
            )
            canceled += 1
        return canceled

    def end_for_deletion(self, conn: Connection, generation_id: str, reason: str) -> bool:
        """End a queued or running job at once, canceled and its hold
        released: its submitter's account, or the account whose wallet it
        spends, is being deleted. A worker running it loses its lease (its
        next check-in finds the job ended) and stores nothing more. False
        if the job had ended already. No webhook event: the account is
        going, and its webhooks with it."""
        row = repo.lock_generation(conn, generation_id)
        if row is None or row.status not in ("queued", "running"):
            return False
        ended = self.end(
            conn,
            row,
            outputs=(),
            otherwise="canceled",
            code="account_deleted",
            message=reason,
            webhook=False,
        )
        return ended is not None

    def get(self, conn: Connection, user: User, generation_id: str) -> Generation:
        row = repo.get_generation(conn, generation_id)
        if row is None or not self._visible(conn, user, row):
            raise GenerationNotFound(f"no generation {generation_id!r}")
        return self._load(conn, generation_id)

    def read(self, conn: Connection, user: User, generation_id: str) -> Seen:
        """``get``, and whether ``user`` may cancel it (``GET /v1/generations/{id}``)."""
        return self._seen(conn, user, [self.get(conn, user, generation_id)])[0]

    def browse(
        self, conn: Connection, user: User, *, limit: int, **filters: Unpack[ListFilters]
    ) -> Sequence[Seen]:
        """``list``, and whether ``user`` may cancel each (``GET /v1/generations``)."""
        return self._seen(conn, user, self.list(conn, user, limit=limit, **filters))

    def output_file(self, conn: Connection, user: User | None, output_id: str) -> OutputFile:
        """A stored output, readable without a signed link by whoever reads
        its generation (``get``) and by admins."""
        output = repo.get_output(conn, output_id)
        if output is None:
            raise NotFound(f"no output {output_id!r}")
        readable = False
        if user is not None:
            if user.role == "admin":
                readable = True
            else:
                job = repo.get_generation(conn, output.generation_id)
                readable = job is not None and self._visible(conn, user, job)
        return OutputFile(output, readable)

    def list(
        self,
        conn: Connection,
        user: User,
        *,
        limit: int,
        before: str | None = None,
        status: str | None = None,
        model: str | None = None,
        team_id: str | None = None,
    ) -> list[Generation]:
        """The user's own generations and their teams', newest first."""
        team_ids = [membership.team.id for membership in self.teams.teams_of(conn, user.id)]
        if team_id is not None:
            if team_id not in team_ids:
                raise GenerationNotFound(f"no team {team_id!r}")
            team_ids = [team_id]
        ids = repo.list_ids(
            conn,
            user.id,
            team_ids,
            limit=limit,
            before=before,
            status=status,
            model=model,
            personal=team_id is None,
        )
        return [self._load(conn, generation_id) for generation_id in ids]

    def _seen(self, conn: Connection, user: User, found: Sequence[Generation]) -> Sequence[Seen]:
        """Who may cancel: the teams ``user`` runs are read only when one of
        ``found`` is another member's."""
        others = any(g.team_id is not None and g.user_id != user.id for g in found)
        managed = self.teams_managed_by(conn, user) if others else frozenset()
        return [Seen(g, may_cancel(user.id, g.user_id, g.team_id, managed)) for g in found]

    def teams_managed_by(self, conn: Connection, user: User) -> frozenset[str]:
        """The teams whose every generation ``user`` may cancel (as their owner)."""
        return frozenset(
            membership.team.id
            for membership in self.teams.teams_of(conn, user.id)
            if membership.role in TEAM_CANCEL_ROLES
        )

    def announce(self, conn: Connection, generation_id: str) -> None:
        """Tell the listeners about the generation's new state, after commit."""
        self._announce(conn, self._load(conn, generation_id))

    def announce_row(
        self, conn: Connection, row: GenerationRow, outputs: Iterable[OutputRow]
    ) -> None:
        """``announce`` from the job's row (running or ended, as the worker's
        last write returned it) and its outputs: nothing is read."""
        made = tuple(_output(o) for o in sorted(outputs, key=lambda o: int(o.position)))
        self._announce(conn, _generation(row, made, None))

    # -- the end of a job ------------------------------------------------------

    def end(
        self,
        conn: Connection,
        job: GenerationRow,
        *,
        outputs: Sequence[OutputRow],
        otherwise: str,
        code: str | None,
        message: str | None,
        provider_request_id: str | None = None,
        webhook: bool = True,
    ) -> Ended | None:
        """The one way a job ends, however it ends (canceled while queued, an
        account suspended, or run by a worker to its end), in the caller's
        transaction, on the job's locked row: charged for the ``outputs``
        stored (all of them, recorded already), the rest of its hold released
        (all of it with none); succeeded if any output was stored, else
        ``otherwise`` (failed or canceled), with the error ``code`` and
        ``message``. Announced once committed, and told to the job's webhooks
        (``webhook_events.py``: its ``webhook_url``, its submitter's
        endpoints subscribed to the event) in this transaction unless
        ``webhook`` is False. None if the job had ended already (the caller
        rolls back: the hold was settled then)."""
        delivered = len(outputs)
        charged = delivered * int(job.credits_per_output)
        if charged:
            settled = self.ledger.capture(
                conn,
                job.hold_id,
                charged,
                outputs=delivered,
                idempotency_key=f"generation:{job.id}:capture",
            )
        else:
            settled = self.ledger.release(
                conn, job.hold_id, idempotency_key=f"generation:{job.id}:release"
            )
        finished_at = self.clock.now()
        status = "succeeded" if delivered else otherwise
        listened = webhook and self.webhooks is not None
        finished = repo.finish(
            conn,
            job.id,
            status=status,
            charged=charged,
            balance_after=settled.balance_after,
            now=finished_at,
            error_code=code,
            error_message=None if message is None else message[:1000],
            provider_request_id=provider_request_id,
            # Asked only when no webhook_url already makes the event due.
            webhook_event=(job.user_id, TERMINAL_EVENTS[status])
            if listened and job.webhook_url is None
            else None,
        )
        if finished is None:
            return None
        ended = finished.row
        told = ended.webhook_url is not None or finished.webhook_wanted
        if self.webhooks is not None and listened and told:
            self.webhooks.emit_end(conn, ended, outputs)
        self.announce_row(conn, ended, outputs)
        return Ended(ended, settled, charged, finished_at)

    # -- internals -----------------------------------------------------------

    def _model(self, catalog: Catalog, request: GenerationRequest) -> ModelSpec:
        try:
            return catalog.model(request.model)
        except KeyError:
            raise InvalidInput(f"no model {request.model!r}", field="model") from None

    def _wallet(self, conn: Connection, user: User, request: GenerationRequest) -> str:
        if request.team_id is None:
            return self.ledger.wallet_of(conn, "user", user.id)
        if self.teams.membership(conn, request.team_id, user.id) is None:
            raise InvalidInput(f"you are not a member of team {request.team_id!r}", field="team_id")
        return self.teams.team_wallet(conn, request.team_id)

    def _check(
        self, conn: Connection, user: User, request: GenerationRequest, now: datetime
    ) -> _Checked:
        catalog = self.catalogs.at(conn, now)
        model = self._model(catalog, request)
        errors: list[dict[str, str]] = []
        prompt = request.prompt.strip()
        if not prompt:
            errors.append({"field": "prompt", "message": "a prompt is required"})
        elif len(prompt) > model.max_prompt_chars:
            errors.append(
                {
                    "field": "prompt",
                    "message": f"at most {model.max_prompt_chars} characters for {model.id}",
                }
            )
        if not 1 <= request.num_outputs <= model.max_outputs:
            errors.append(
                {
                    "field": "num_outputs",
                    "message": f"{model.id} makes 1 to {model.max_outputs} outputs per request",
                }
            )
        has_image = request.upload_id is not None or request.image_url is not None
        if request.upload_id is not None and request.image_url is not None:
            errors.append(
                {"field": "image_url", "message": "send image_url or upload_id, not both"}
            )
        if model.inputs.image == "required" and not has_image:
            errors.append(
                {
                    "field": "upload_id",
                    "message": f"{model.id} needs an input image (upload_id or image_url)",
                }
            )
        if model.inputs.image == "none" and has_image:
            errors.append({"field": "upload_id", "message": f"{model.id} takes no input image"})
        if request.image_url is not None and not request.image_url.startswith("https://"):
            errors.append({"field": "image_url", "message": "must be an https:// URL"})
        if request.upload_id is not None and not repo.upload_of(conn, user.id, request.upload_id):
            errors.append({"field": "upload_id", "message": "no such upload of yours"})
        params = dict(request.params)
        sandbox = params.pop("sandbox", {})
        if not isinstance(sandbox, dict):
            errors.append({"field": "params.sandbox", "message": "must be an object"})
            sandbox = {}
        # Checked at submission whichever provider runs, so that a job the
        # sandbox would refuse is refused before anything is held.
        errors += [
            {"field": f, "message": m} for f, m in sandbox_errors(sandbox, request.num_outputs)
        ]
        errors += [{"field": f, "message": m} for f, m in param_errors(model, params)]
        if request.webhook_url is not None:
            if self.webhooks is None:
                errors.append({"field": "webhook_url", "message": "webhooks are not available"})
            else:
                errors += self.webhooks.check_url(request.webhook_url)
        if errors:
            raise InvalidInput(errors[0]["message"], errors=errors)
        wallet = self._wallet(conn, user, request)
        plan = self.plans.plan_of(conn, wallet)
        if not plan_allows_model(plan, model):
            cheapest = required_plan(catalog, model)
            raise ModelNotInPlan(
                model.name,
                plan.name,
                cheapest.id if cheapest else None,
                cheapest.name if cheapest else None,
            )
        credits = quote_credits(model, request.num_outputs)
        capped = None
        if request.team_id is not None:
            member = self.teams.membership(conn, request.team_id, user.id)
            if member is not None and member.monthly_credit_cap is not None:
                capped = MemberCap(request.team_id, user.id, member.monthly_credit_cap)
        spender = Spender(wallet, request.api_key, capped)
        return _Checked(model, plan, wallet, credits, params, dict(sandbox), spender)

    def _managed_team(self, conn: Connection, user: User, row: GenerationRow) -> frozenset[str]:
        """``row``'s team if ``user`` runs it, else nothing: what ``may_cancel``
        needs for this one generation, in one lookup (none for one's own)."""
        if row.team_id is None or row.user_id == user.id:
            return frozenset()
        member = self.teams.membership(conn, row.team_id, user.id)
        if member is None or member.role not in TEAM_CANCEL_ROLES:
            return frozenset()
        return frozenset({row.team_id})

    def _visible(self, conn: Connection, user: User, row: GenerationRow) -> bool:
        if row.user_id == user.id:
            return True
        return row.team_id is not None and (
            self.teams.membership(conn, row.team_id, user.id) is not None
        )

    def _load(self, conn: Connection, generation_id: str) -> Generation:
        row = repo.get_generation(conn, generation_id)
        if row is None:  # pragma: no cover - callers checked
            raise GenerationNotFound(f"no generation {generation_id!r}")
        outputs = tuple(_output(o) for o in repo.outputs_of(conn, generation_id))
        position = repo.queue_position(conn, row) if row.status == "queued" else None
        return _generation(row, outputs, position)

    def _announce(self, conn: Connection, generation: Generation) -> None:
        for listener in self.listeners:
            listener(conn, generation)


def may_cancel(
    user_id: str, submitter_id: str, team_id: str | None, managed_teams: frozenset[str]
) -> bool:
    """Whether ``user_id`` may cancel a generation ``submitter_id`` made (for
    ``team_id``, if any): its submitter may, and so may whoever runs its team
    (``managed_teams``: the teams the user owns); other members may not."""
    return user_id == submitter_id or (team_id is not None and team_id in managed_teams)


def _queue_full(queued: int, plan: PlanSpec) -> ConcurrencyLimit:
    return ConcurrencyLimit(
        f"{queued} generations are already queued; the {plan.name} plan queues at most "
        f"{plan.max_queued_jobs}",
        limit=plan.max_queued_jobs,
        # Queued jobs start within seconds to minutes; try again then.
        retry_after=QUEUE_FULL_RETRY_AFTER_S,
    )


def _output(row: OutputRow) -> Output:
    return Output(
        row.id,
        int(row.position),
        row.content_type,
        row.width,
        row.height,
        row.duration_s,
        bool(row.watermarked),
        row.license,
    )


def _generation(
    row: GenerationRow, outputs: tuple[Output, ...], position: int | None
) -> Generation:
    return Generation(
        id=row.id,
        user_id=row.user_id,
        team_id=row.team_id,
        status=row.status,
        model=row.model,
        kind=row.kind,
        prompt=row.prompt,
        num_outputs=int(row.num_outputs),
        credits_per_output=int(row.credits_per_output),
        credits_held=int(row.credits_held),
        credits_charged=int(row.credits_charged),
        balance_after=int(row.balance_after),
        params=json.loads(row.params),
        outputs=outputs,
        error_code=row.error_code,
        error_message=row.error_message,
        created_at=as_utc(row.created_at),
        started_at=None if row.started_at is None else as_utc(row.started_at),
        finished_at=None if row.finished_at is None else as_utc(row.finished_at),
        queue_position=position,
        license=row.license,
        watermark=bool(row.watermark),
        cancel_requested=bool(row.cancel_requested),
    )

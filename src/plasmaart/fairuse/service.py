"""Fair use: rate limits per plan, abuse signals, flags and automatic suspension.

The web layer counts each generation request against the account's plan
(``requests_per_minute`` and ``count_request``, both off the database: the
plan's limit is cached for a second per account) and reports what it sees.
What the request path sees (a flood of one request, a quick cancel, a
rate-limit refusal, invalid input) is only queued (``enqueue_signal``): the
flusher (``fairuse.tasks``) records it at most a second later, in a
transaction of its own, so that no request writes a signal it does not need.
Every signal goes through ``record_signal``, which scores the account's
recent signals with the pure rules of ``fairuse.rules`` and acts on the
verdict, in the caller's transaction:

- flag: an abuse flag (one unresolved per account) holds the score and the
  evidence for an admin to review (``GET /v1/admin/abuse``);
- suspend (``rules.decide``: an account that paid only for exploitation
  signals — clawbacks, declined-payment bursts, plan-change cycling —; one
  that never paid for any): the account is suspended by
  ``SuspensionService.suspend`` (fairuse/suspension.py), exactly as an
  admin's suspension: its sessions end, its queued generations are canceled
  and their credits released, running ones finish (and are charged only for
  what they deliver). Admins are flagged but never suspended automatically,
  so the platform cannot lock out the people who would undo a mistake.

Every decision is written to the audit log. Reinstating an account resolves
its flags (``SuspensionService.reinstate``), and its earlier signals no
longer count.

Billing tells this service of clawbacks and payments through its hooks, and
the database of commits that change plans: it registers with both when it
is built (billing/hooks.py), as the signal flusher is built with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from plasmaart.accounts.service import AccountService, User
from plasmaart.billing.clawbacks import ClawbackOutcome
from plasmaart.billing.repository import Payment
from plasmaart.billing.service import BillingService
from plasmaart.catalog import Catalog
from plasmaart.clock import Clock
from plasmaart.config import Settings
from plasmaart.db.engine import Database, after_commit
from plasmaart.fairuse import repository as repo
from plasmaart.fairuse.counters import (
    CopyCounter,
    MemoryCopies,
    PendingSignal,
    PendingSignals,
    request_fingerprint,
)
from plasmaart.fairuse.flags import SYSTEM_ACTOR, raise_flag, record_decision, resolve_flags
from plasmaart.fairuse.repository import AbuseFlag, FlagStatus
from plasmaart.fairuse.request_limiter import RateWindow, RequestLimiter
from plasmaart.fairuse.rules import (
    DEFAULT_RULES,
    IDENTICAL_PROMPT_WINDOW,
    INVALID_INPUT_WINDOW,
    INVALID_INPUTS_FREE,
    PLAN_CYCLE_WINDOW,
    PLAN_CYCLES_ALLOWED,
    Budget,
    PlanPayment,
    Score,
    Signal,
    SignalKind,
    SignalRule,
    Verdict,
    budget_per_minute,
    decide,
    identical_prompt_flood,
    is_churn,
    longest_window,
    plan_cycles,
    prompt_fingerprint,
    score,
    verdict,
)
from plasmaart.fairuse.suspension import SuspensionService
from plasmaart.fairuse.tasks import SignalFlusher
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.teams.service import TeamService

__all__ = [
    "SYSTEM_ACTOR",
    "AbuseFlag",
    "Assessment",
    "FairUsePolicy",
    "FairUseService",
    "FlagStatus",
]

# The most recent signals a flag keeps as evidence.
EVIDENCE_SIGNALS = 50
# How long a process trusts the plan limits it read for an account: a plan
# change reaches the rate limit within this (at once in the process that
# took the payment).
PLAN_LIMIT_CACHE_S = 1.0
# Accounts whose plan limit a process keeps at most (then it starts afresh).
PLAN_LIMIT_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class FairUsePolicy:
    flag_at: int = 30
    suspend_at: int = 100
    rules: Mapping[SignalKind, SignalRule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    rate_limit_signal_interval_s: int = 10
    churn_within: timedelta = timedelta(seconds=60)
    identical_prompts_allowed: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> FairUsePolicy:
        return cls(
            flag_at=settings.fairuse_flag_score,
            suspend_at=settings.fairuse_suspend_score,
            rate_limit_signal_interval_s=settings.fairuse_rate_limit_signal_interval_s,
            churn_within=timedelta(seconds=settings.fairuse_churn_cancel_within_s),
            identical_prompts_allowed=settings.fairuse_identical_prompts_allowed,
        )


@dataclass(frozen=True)
class Assessment:
    """What recording a signal led to."""

    user_id: str
    recorded: bool  # False: this cause had been counted already
    score: Score
    verdict: Verdict
    flag_id: str | None
    suspended_now: bool
    queued_canceled: int = 0


class FairUseService:
    def __init__(
        self,
        clock: Clock,
        policy: FairUsePolicy,
        limiter: RequestLimiter,
        *,
        db: Database,
        billing: BillingService,
        teams: TeamService,
        accounts: AccountService,
        suspensions: SuspensionService,
        copies: CopyCounter | None = None,
    ) -> None:
        self.clock = clock
        self.policy = policy
        # Rate limits: each account's requests, against the best plan of its
        # wallets (read through billing and teams, then kept for a second).
        self.limiter = limiter
        self.billing = billing
        self.teams = teams
        # user id -> (monotonic expiry, the best requests a minute of its plans)
        self._plan_limits: dict[str, tuple[float, int]] = {}
        # Identical requests per account (memory, or Redis: fairuse.counters).
        self.copies: CopyCounter = copies or MemoryCopies()
        # Signals seen on the request path, and what records them off it.
        self.pending = PendingSignals()
        self.flusher = SignalFlusher(db, self.pending, self.record_pending)
        # Acting on a verdict: the account, and what a suspension does
        # whoever decides it (fairuse/suspension.py).
        self.accounts = accounts
        self.suspensions = suspensions
        # Billing's clawbacks and payments are signals; a commit that changes
        # plans, users or teams drops the plan limits kept above.
        billing.hooks.listen_to_clawbacks(self.on_clawback)
        billing.hooks.listen_to_payments(self.on_payment)
        db.invalidation_listeners.append(self.forget_plan_limits)

    # -- rate limits -------------------------------------------------------

    def requests_per_minute(self, conn: Connection, user: User, budget: Budget) -> int:
        """The account's limit in ``budget``, from the best of its own plan and
        the plans of the teams it belongs to (a Studio team's member works at
        Studio's pace).
        Counted per user, not per API key or wallet: rotating keys does not
        reset it, and one busy member does not use up a whole team's budget.
        Read through the caches, and kept for ``cached_requests_per_minute``."""
        wallets = self.teams.wallets_of(conn, user.id)  # cached, as the plans are
        plan_limit = max(
            plan.requests_per_minute for plan in self.billing.plans.plans_of(conn, wallets).values()
        )
        if len(self._plan_limits) >= PLAN_LIMIT_CACHE_SIZE:
            self._plan_limits = {}
        self._plan_limits[user.id] = (time.monotonic() + PLAN_LIMIT_CACHE_S, plan_limit)
        return budget_per_minute(plan_limit, budget)

    def forget_plan_limits(self, _scopes: frozenset[str] = frozenset()) -> None:
        """Drop the plan limits this process keeps: called after any commit
        that invalidates cached plans, users or teams (db/engine.py), so a
        plan change or a team joined applies to the next request at once."""
        self._plan_limits = {}

    def cached_requests_per_minute(self, user: User, budget: Budget) -> int | None:
        """``requests_per_minute`` as this process read it less than
        PLAN_LIMIT_CACHE_S ago; None when it must be read again."""
        cached = self._plan_limits.get(user.id)
        if cached is None or cached[0] <= time.monotonic():
            return None
        return budget_per_minute(cached[1], budget)

    def count_request(self, user: User, per_minute: int, budget: Budget) -> RateWindow | None:
        """Count one generation request; None when the counter store is down
        (the request goes on: see fairuse.ratelimits)."""
        return self.limiter.hit(user.id, per_minute, budget)

    def should_record_rate_limit_hit(self, user: User) -> bool:
        """At most one ``rate_limited`` signal per account per interval."""
        return self.limiter.once_per(
            f"rate_limited:{user.id}", self.policy.rate_limit_signal_interval_s
        )

    def should_record_invalid_input(self, user_id: str) -> bool:
        """Whether a 422 of the account is one beyond the free ones of the hour
        (counted in the rate-limit store; see rules.INVALID_INPUTS_FREE)."""
        within = self.limiter.within(
            f"invalid_input:{user_id}",
            INVALID_INPUTS_FREE,
            int(INVALID_INPUT_WINDOW.total_seconds()),
        )
        return within is False

    # -- signals -----------------------------------------------------------

    def lock_account(self, conn: Connection, user_id: str) -> None:
        """Lock the account's row first in a transaction that may record a
        signal after moving credits (a plan change, whose payment listener
        may find plan cycling): a suspension locks the account, then its
        wallets; taking them in the same order keeps PostgreSQL from finding
        the two in a deadlock. Submissions and cancels record nothing in
        their transaction (their signals are queued), so they need not."""
        self.accounts.lock(conn, user_id)

    def enqueue_signal(
        self,
        user_id: str,
        kind: SignalKind,
        evidence: Mapping[str, Any],
        *,
        subject: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Queue a signal seen on the request path: the flusher records it
        with ``record_signal``, as of ``at`` (default now), within
        FLUSH_INTERVAL_S. Writes nothing here."""
        if kind not in self.policy.rules:
            raise ValueError(f"unknown abuse signal {kind!r}")
        when = self.clock.now() if at is None else at
        signal = PendingSignal(user_id, kind, dict(evidence), subject, when)
        self.pending.put(signal)

    def record_pending(self, conn: Connection, signal: PendingSignal) -> Assessment:
        """Record a queued signal (the flusher calls this)."""
        return self.record_signal(
            conn, signal.user_id, signal.kind, signal.evidence, subject=signal.subject, at=signal.at
        )

    def flush(self) -> int:
        """Record the queued signals now (the flusher does it every second;
        tests call this to read the outcome at once); how many were recorded."""
        return self.flusher.flush()

    def record_signal(
        self,
        conn: Connection,
        user_id: str,
        kind: SignalKind,
        evidence: Mapping[str, Any],
        *,
        subject: str | None = None,
        at: datetime | None = None,
    ) -> Assessment:
        """Record a signal about the account, score it and act on the verdict,
        in the caller's transaction. ``subject`` names the cause (a
        generation, a payment): a cause already recorded is not counted again.
        ``at``: when it happened (a queued signal), else now; it is recorded
        and scored as of then."""
        if kind not in self.policy.rules:
            raise ValueError(f"unknown abuse signal {kind!r}")
        user = self.accounts.lock(conn, user_id)
        now = self.clock.now() if at is None else at
        recorded = subject is None or not repo.signal_exists(conn, user_id, kind, subject)
        if recorded:
            repo.insert_signal(
                conn, user_id=user_id, kind=kind, subject=subject, evidence=dict(evidence), now=now
            )
        return self._assess(conn, user, now, recorded=recorded)

    def after_submit(
        self,
        conn: Connection,
        user: User,
        generation: Generation,
        request: GenerationRequest | None = None,
    ) -> None:
        """A submission: one copy too many of a request is a signal. A copy
        is the whole request again (model, prompt, params with the seed,
        outputs, sandbox params, input image; ``request`` gives the last
        two): a seed sweep or a comparison of models is not. Nothing is read
        or written in ``conn``: once it commits (a submission rolled back is
        no copy), the copy is counted in memory or Redis (``self.copies``)
        and a signal, if any, queued for the flusher."""
        fingerprint = request_fingerprint(
            generation.model,
            generation.prompt,
            generation.num_outputs,
            generation.params,
            sandbox=None if request is None else request.params.get("sandbox"),
            upload_id=None if request is None else request.upload_id,
            image_url=None if request is None else request.image_url,
        )
        after_commit(conn, lambda: self._count_copy(user.id, fingerprint, generation))

    def _count_copy(self, user_id: str, fingerprint: str, generation: Generation) -> None:
        copies = self.copies.count(
            f"{user_id}:{fingerprint}",
            generation.id,
            generation.created_at,
            self.clock.now(),
            IDENTICAL_PROMPT_WINDOW,
        )
        if copies is None or not identical_prompt_flood(
            copies, self.policy.identical_prompts_allowed
        ):
            return
        self.enqueue_signal(
            user_id,
            "identical_prompt",
            {
                "generation_id": generation.id,
                "model": generation.model,
                "prompt_sha256": prompt_fingerprint(generation.prompt),
                "prompt": generation.prompt[:200],
                "num_outputs": generation.num_outputs,
                "seed": generation.params.get("seed"),
                "copies_in_window": copies,
                "window_s": int(IDENTICAL_PROMPT_WINDOW.total_seconds()),
            },
            subject=generation.id,
        )

    def after_cancel(self, conn: Connection, user: User, generation: Generation) -> None:
        """A cancel soon after the submission is churn: a signal, queued for
        the flusher once ``conn`` commits (nothing is read or written in it)."""
        canceled = generation.status == "canceled" or generation.cancel_requested
        now = self.clock.now()
        if not canceled or not is_churn(generation.created_at, now, self.policy.churn_within):
            return
        evidence = {
            "generation_id": generation.id,
            "model": generation.model,
            "seconds_after_submit": round((now - generation.created_at).total_seconds(), 3),
        }
        after_commit(
            conn,
            lambda: self.enqueue_signal(
                user.id, "submit_cancel", evidence, subject=generation.id, at=now
            ),
        )

    def record_clawback(
        self,
        conn: Connection,
        user_id: str,
        *,
        payment_id: str,
        credits_clawed_back: int,
        credits_spent: int,
        reason: str,
    ) -> Assessment:
        """A purchase refunded or disputed after its credits were spent (the
        billing side calls this inside the clawback's transaction)."""
        return self.record_signal(
            conn,
            user_id,
            "clawback",
            {
                "payment_id": payment_id,
                "credits_clawed_back": credits_clawed_back,
                "credits_spent": credits_spent,
                "reason": reason,
            },
            subject=payment_id,
        )

    def on_clawback(self, conn: Connection, outcome: ClawbackOutcome) -> None:
        """The billing's clawback listener: a purchase taken back after some
        of its credits were spent is a signal; one taken back unspent is not."""
        if outcome.needs_review:
            self.record_clawback(
                conn,
                outcome.user_id,
                payment_id=outcome.payment_id,
                credits_clawed_back=outcome.clawed_back,
                credits_spent=outcome.spent,
                reason=outcome.reason,
            )

    def record_declined_payment(
        self, conn: Connection, user_id: str, *, what: str, item: str, reason: str
    ) -> Assessment:
        """A payment the customer asked for (a credit pack, a subscription, an
        upgrade, paying a past-due renewal) was declined. Called in a
        transaction of its own after the refused request rolled back: the
        refusal itself writes nothing else. A burst of them is card testing."""
        return self.record_signal(
            conn,
            user_id,
            "payment_declined",
            {"what": what, "item": item, "reason": reason[:200]},
        )

    def on_payment(self, conn: Connection, payment: Payment) -> None:
        """The billing's payment listener: an upgrade after
        PLAN_CYCLES_ALLOWED completed upgrade-then-back-down cycles in
        PLAN_CYCLE_WINDOW is plan-change cycling (buying a period's credits at
        a better rate than the plan's; see DESIGN.md §5)."""
        if payment.status == "succeeded":
            # A new plan: this process reads the limits again at once.
            self._plan_limits = {}
        if payment.kind != "upgrade" or payment.status != "succeeded":
            return
        now = self.clock.now()
        paid = repo.plan_payments(conn, payment.wallet_id, now - PLAN_CYCLE_WINDOW)
        catalog = self.billing.plans.catalogs.now(conn)
        history = [
            PlanPayment(row.kind, price, row.created_at)
            for row in paid
            if (price := _plan_price(catalog, row.plan_id)) is not None
        ]
        cycles = plan_cycles(history)
        if cycles < PLAN_CYCLES_ALLOWED:
            return
        self.record_signal(
            conn,
            payment.user_id,
            "plan_cycling",
            {
                "payment_id": payment.id,
                "wallet_id": payment.wallet_id,
                "upgrade_to": payment.plan_id,
                "amount_cents": payment.amount_cents,
                "credits": payment.credits,
                "cycles_before": cycles,
                "window_days": PLAN_CYCLE_WINDOW.days,
            },
            subject=payment.id,
        )

    # -- flags -------------------------------------------------------------

    def flags(
        self,
        conn: Connection,
        *,
        statuses: tuple[FlagStatus, ...] = ("open", "suspended"),
        limit: int,
        before: str | None = None,
    ) -> list[AbuseFlag]:
        """Flags, newest first, with their evidence."""
        return repo.list_flags(conn, statuses=statuses, limit=limit, before=before)

    # -- internals ---------------------------------------------------------

    def _assess(self, conn: Connection, user: User, now: datetime, *, recorded: bool) -> Assessment:
        reinstated = repo.last_reinstated_at(conn, user.id)
        since = now - longest_window(self.policy.rules)
        if reinstated is not None and reinstated > since:
            since = reinstated
        signals = repo.signals_since(conn, user.id, since, with_evidence=EVIDENCE_SIGNALS)
        current = score(
            signals,
            now,
            self.policy.rules,
            since=reinstated,
        )
        found = verdict(
            current.total, flag_at=self.policy.flag_at, suspend_at=self.policy.suspend_at
        )
        # Whether the account paid matters only when the score could suspend it.
        paid = found == "suspend" and repo.has_paid(conn, user.id)
        found = decide(
            current, paid=paid, flag_at=self.policy.flag_at, suspend_at=self.policy.suspend_at
        )
        flag = repo.unresolved_flag(conn, user.id)
        if not recorded:
            # A cause counted before: nothing new to decide, nothing to write.
            return Assessment(
                user.id, recorded, current, found, None if flag is None else flag.id, False
            )
        if flag is not None and reinstated is not None and flag.created_at <= reinstated:
            # Reinstated since the flag was raised, without resolving it (an
            # account's status set some other way than SuspensionService).
            resolve_flags(conn, user.id, actor="reinstatement", now=self.clock.now())
            flag = None
        if found == "clear" and flag is None:
            return Assessment(user.id, recorded, current, found, None, suspended_now=False)

        suspend = found == "suspend" and user.status == "active" and user.role != "admin"
        status: FlagStatus = "suspended" if suspend or user.status == "suspended" else "open"
        evidence = self._evidence(current, signals, user.role, paid=paid)
        if flag is None:
            reason = f"abuse score {current.total} >= {self.policy.flag_at}: {current.summary()}"
            flag_id = raise_flag(
                conn,
                user.id,
                status=status,
                score=current.total,
                evidence=evidence,
                reason=reason,
                now=now,
            )
        else:
            flag_id = flag.id
            if flag.status == "suspended":
                status = "suspended"
            repo.update_flag(
                conn, flag_id, status=status, score=current.total, evidence=evidence, now=now
            )
        canceled = self._suspend(conn, user.id, current, flag_id, now) if suspend else 0
        return Assessment(
            user.id,
            recorded,
            current,
            found,
            flag_id,
            suspended_now=suspend,
            queued_canceled=canceled,
        )

    def _suspend(
        self, conn: Connection, user_id: str, current: Score, flag_id: str, now: datetime
    ) -> int:
        """Suspend like an admin would; how many queued generations were canceled."""
        reason = (
            f"automatic: abuse score {current.total} >= {self.policy.suspend_at} "
            f"({current.summary()})"
        )
        suspended = self.suspensions.suspend(conn, user_id, actor=SYSTEM_ACTOR, reason=reason)
        canceled = suspended.queued_canceled
        data = {"flag_id": flag_id, "score": current.total, "queued_canceled": canceled}
        record_decision(conn, "abuse.suspend", user_id, reason=reason, now=now, data=data)
        return canceled

    def _evidence(
        self, current: Score, signals: list[Signal], role: str, *, paid: bool
    ) -> dict[str, Any]:
        evidence: dict[str, Any] = {
            "score": current.total,
            "exploit_score": current.exploit,
            "flag_score": self.policy.flag_at,
            "suspend_score": self.policy.suspend_at,
            "by_kind": {
                kind: {"count": part.count, "points": part.points}
                for kind, part in sorted(current.by_kind.items())
                if part.count
            },
            "signals": [
                {
                    "kind": signal.kind,
                    "at": signal.at.isoformat(),
                    "evidence": signal.evidence,
                }
                for signal in signals[:EVIDENCE_SIGNALS]
            ],
        }
        if role == "admin":
            evidence["note"] = "admins are flagged, never suspended automatically"
        elif paid and current.exploit < self.policy.suspend_at:
            evidence["note"] = (
                "a paying account: volume signals flag it for review; only exploitation "
                "signals (clawback, payment_declined, plan_cycling) suspend it"
            )
        return evidence


def _plan_price(catalog: Catalog, plan_id: str) -> int | None:
    try:
        return catalog.plan(plan_id).price_cents
    except KeyError:
        return None

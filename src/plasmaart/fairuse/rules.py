"""Abuse scoring: plain functions over plain data, tested without a database.

An account's recent *signals* are counted per kind over that kind's sliding
window. Each kind lets a few signals through for free, because honest use
produces some of them too (a typo, a changed mind, a declined card); every
signal beyond that allowance adds the kind's weight to the score. The score
is compared with two thresholds from the settings: over the first the account
is flagged for review, over the second it is suspended.

Two families of signals, because they mean different things:

- *volume* signals (a request refused by the rate limit, a generation
  canceled right after it was submitted, one more copy of a request already
  flooding the queue, a request with invalid input) say an account uses a
  lot, fast; heavy honest use can look like that;
- *exploitation* signals (a purchase clawed back after its credits were
  spent, a burst of declined payments — card testing —, upgrade/downgrade
  cycling) say someone is after credits they did not pay for.

An account that paid (see ``decide``) is never suspended by volume alone:
volume flags it for a human to review; only exploitation suspends it.

Adding a signal never lowers the score (nor the verdict), and a signal older
than its window no longer counts: properties the tests check.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from plasmaart.db.values import AbuseSignalKind

# The kinds are the database's CHECK constraint's (db/tables.py).
SignalKind = AbuseSignalKind
SIGNAL_KINDS: tuple[SignalKind, ...] = get_args(SignalKind)
# The rate-limit budgets of an account: submissions, uploads and cancels
# share one; quotes (read-only, and asked for by the dashboard whenever the
# form or the balance changes) have their own, QUOTE_RATE_FACTOR times larger.
Budget = Literal["generation", "quote"]
QUOTE_RATE_FACTOR = 4
Verdict = Literal["clear", "flag", "suspend"]


@dataclass(frozen=True)
class SignalRule:
    """How one kind of signal counts: ``weight`` points for each signal in
    ``window`` beyond the first ``allowance``."""

    weight: int
    window: timedelta
    allowance: int = 0
    # An exploitation signal (see the module's docstring): the only kind that
    # may suspend an account that paid.
    exploit: bool = False


@dataclass(frozen=True)
class Signal:
    kind: SignalKind
    at: datetime
    # What was seen (a flag keeps it as evidence); scoring reads only the above.
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KindScore:
    count: int
    points: int


@dataclass(frozen=True)
class Score:
    total: int
    by_kind: Mapping[SignalKind, KindScore]
    # The points of exploitation signals alone (part of ``total``).
    exploit: int = 0

    def summary(self) -> str:
        """``rate_limited 12 (14 points), ...`` for reasons and audit entries."""
        parts = [
            f"{kind} x{part.count} ({part.points} points)"
            for kind, part in sorted(self.by_kind.items())
            if part.count
        ]
        return ", ".join(parts) or "no signals"


# The defaults. A rate-limit hit is recorded at most once per interval (see
# Settings.fairuse_rate_limit_signal_interval_s), so 2 points each means
# minutes of ignoring Retry-After before anything happens; a clawed-back
# purchase alone flags the account for review, as DESIGN.md §3 asks. With the
# default thresholds (flag 30, suspend 100): the 4th declined payment in an
# hour flags and the 6th suspends; the first upgrade that starts a third
# upgrade-and-downgrade-back cycle in 90 days flags, the next suspends.
DEFAULT_RULES: Mapping[SignalKind, SignalRule] = {
    "rate_limited": SignalRule(weight=2, window=timedelta(hours=1), allowance=5),
    "submit_cancel": SignalRule(weight=3, window=timedelta(hours=1), allowance=10),
    "identical_prompt": SignalRule(weight=4, window=timedelta(hours=1)),
    # Its allowance is applied before the database (INVALID_INPUTS_FREE).
    "invalid_input": SignalRule(weight=1, window=timedelta(hours=1)),
    "clawback": SignalRule(weight=40, window=timedelta(days=180), exploit=True),
    # A card that declines now and then is ordinary (an expired card, a bank's
    # fraud check, a retry or two): three an hour are free.
    "payment_declined": SignalRule(weight=34, window=timedelta(hours=1), allowance=3, exploit=True),
    # Recorded only for an upgrade that follows PLAN_CYCLES_ALLOWED completed
    # cycles (see plan_cycles), so every one counts.
    "plan_cycling": SignalRule(weight=50, window=timedelta(days=180), exploit=True),
}

# Identical requests are compared over this window (see identical_prompt_flood).
IDENTICAL_PROMPT_WINDOW = timedelta(minutes=10)
# Upgrade-then-back-down cycles are counted over this window; this many are
# ordinary (a busy month or two a season); an upgrade after more is a signal.
PLAN_CYCLE_WINDOW = timedelta(days=90)
PLAN_CYCLES_ALLOWED = 2
# Invalid input is common in honest use (a typo, a model's limits not known
# yet): the first this many an hour per account are only counted in the
# rate-limit store, so that an ordinary 422 writes nothing; each further one
# is an ``invalid_input`` signal.
INVALID_INPUTS_FREE = 20
INVALID_INPUT_WINDOW = timedelta(hours=1)


def longest_window(rules: Mapping[SignalKind, SignalRule] = DEFAULT_RULES) -> timedelta:
    """How far back signals can still count: what to load from the database."""
    return max(rule.window for rule in rules.values())


def score(
    signals: Iterable[Signal],
    now: datetime,
    rules: Mapping[SignalKind, SignalRule] = DEFAULT_RULES,
    *,
    since: datetime | None = None,
) -> Score:
    """The score of ``signals`` at ``now``. A signal counts while it is within
    its kind's window (``now - window < at <= now``) and after ``since`` (the
    account's last reinstatement: an admin's decision wipes the slate)."""
    counts: dict[SignalKind, int] = dict.fromkeys(rules, 0)
    for signal in signals:
        rule = rules.get(signal.kind)
        if rule is None or signal.at > now or signal.at <= now - rule.window:
            continue
        if since is not None and signal.at <= since:
            continue
        counts[signal.kind] += 1
    by_kind = {
        kind: KindScore(count, rules[kind].weight * max(0, count - rules[kind].allowance))
        for kind, count in counts.items()
    }
    exploit = sum(part.points for kind, part in by_kind.items() if rules[kind].exploit)
    return Score(sum(part.points for part in by_kind.values()), by_kind, exploit)


def verdict(total: int, *, flag_at: int, suspend_at: int) -> Verdict:
    """What a score means: suspend at or over ``suspend_at``, flag for review
    at or over ``flag_at``, else nothing."""
    if total >= suspend_at:
        return "suspend"
    if total >= flag_at:
        return "flag"
    return "clear"


def decide(current: Score, *, paid: bool, flag_at: int, suspend_at: int) -> Verdict:
    """The verdict on an account. One that paid (a paid plan now or before,
    a purchase, or a paid team it belongs to) is suspended only by its
    exploitation points; volume beyond the suspension threshold flags it for
    review. An account that never paid is judged on its whole score."""
    found = verdict(current.total, flag_at=flag_at, suspend_at=suspend_at)
    if found == "suspend" and paid and current.exploit < suspend_at:
        return "flag"
    return found


def is_churn(submitted_at: datetime, canceled_at: datetime, within: timedelta) -> bool:
    """A cancel this soon after the submission looks like probing the queue
    (or the hold) rather than a changed mind."""
    return timedelta(0) <= canceled_at - submitted_at <= within


def prompt_fingerprint(prompt: str) -> str:
    """What the evidence keeps of a prompt: enough to match copies, without
    copying up to 20,000 characters of it into every signal."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def identical_prompt_flood(same_request_in_window: int, allowed: int) -> bool:
    """Whether a submission is one too many copies of its request:
    ``same_request_in_window`` counts it and the earlier identical ones in
    IDENTICAL_PROMPT_WINDOW; up to ``allowed`` copies are fine. Identical
    means the whole request (model, prompt, params with the seed, outputs,
    input image): a seed sweep or a comparison of models is not a copy."""
    return same_request_in_window > allowed


@dataclass(frozen=True)
class PlanPayment:
    """A payment that put a wallet on a plan: ``kind`` subscription, renewal
    or upgrade, the plan's monthly ``price_cents``, and when."""

    kind: str
    price_cents: int
    at: datetime


def plan_cycles(payments: Iterable[PlanPayment]) -> int:
    """How many times the wallet upgraded and then went back to a cheaper
    plan (a renewal or a new subscription on a plan cheaper than the highest
    it upgraded to). Several upgrades before going back count once."""
    cycles = 0
    peak: int | None = None
    for payment in sorted(payments, key=lambda p: p.at):
        if payment.kind == "upgrade":
            peak = payment.price_cents if peak is None else max(peak, payment.price_cents)
            continue
        if peak is not None and payment.price_cents < peak:
            cycles += 1
        peak = None
    return cycles


def budget_per_minute(plan_requests_per_minute: int, budget: Budget) -> int:
    """The requests a minute ``budget`` allows under a plan's limit."""
    factor = QUOTE_RATE_FACTOR if budget == "quote" else 1
    return plan_requests_per_minute * factor


def retry_after_seconds(reset_at: float, now: float) -> int:
    """Whole seconds until a rate-limit window frees a slot; at least 1, so a
    client never retries at once."""
    return max(1, math.ceil(reset_at - now))

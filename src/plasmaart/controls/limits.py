"""Spend limits (docs/credits.md, "Spend limits"): how much a wallet, an API
key or a team member may spend in a calendar month (a key: also per UTC day).

What is counted is one rule for all of them: the credits charged, or still
held, by the jobs created in the period (``limits_repository.spent``); a job
that failed or was canceled gave its credits back and counts nothing.

A submission is checked twice. Its read step asks ``check`` without locks, to
refuse early and cheaply; its write step hands ``guard`` to the ledger's hold,
which calls it under the wallet's lock before anything is written. There the
wallet's own limit comes with the lock (``monthly_limit``), a key with limits
is locked too (its row, FOR UPDATE on PostgreSQL: a key spends from several
wallets, a personal one and its owner's teams'), and the spending is counted
with every hold committed before: concurrent submissions cannot pass a limit
together. A wallet and a key without limits, a member without a cap, cost no
statement at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts.credentials import KeyLimits
from plasmaart.clock import Clock
from plasmaart.controls import limits_repository as repo
from plasmaart.controls.limits_repository import SpendOf
from plasmaart.errors import InvalidInput, SpendLimit, SpendLimitReached
from plasmaart.ledger.service import SpendGuard

# A wallet's monthly limit: whole credits from 1 up to this.
MAX_MONTHLY_LIMIT = 10**12


def month_start(now: datetime) -> datetime:
    """The first moment of ``now``'s calendar month, UTC."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def next_month(now: datetime) -> datetime:
    """When the month of ``now`` ends (a monthly limit resets)."""
    start = month_start(now)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def day_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def within(limit: int | None, spent: int, credits: int) -> bool:
    """Whether ``credits`` more may be spent where ``spent`` were."""
    return limit is None or spent + credits <= limit


@dataclass(frozen=True)
class MemberCap:
    """A team member's monthly cap, as the team's owner set it."""

    team_id: str
    user_id: str
    cap: int


@dataclass(frozen=True)
class WalletLimit:
    """A wallet's monthly limit (None: none) and its month so far."""

    monthly_credits: int | None
    spent: int
    resets_at: datetime


@dataclass(frozen=True)
class KeySpend:
    """What an API key spent today and this month, and when each resets."""

    today: int
    this_month: int
    day_resets_at: datetime
    month_resets_at: datetime


@dataclass(frozen=True)
class Spender:
    """Who spends in a submission: the wallet, the API key it came with (if
    any), the team member (if capped)."""

    wallet_id: str
    key: KeyLimits | None = None
    member: MemberCap | None = None


class SpendLimits:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    # -- the wallet's limit ----------------------------------------------

    def wallet_limit(self, conn: Connection, wallet_id: str) -> WalletLimit:
        """The wallet's monthly limit and what it spent this month."""
        now = self.clock.now()
        (spent,) = repo.spent(conn, SpendOf(wallet_id=wallet_id), [month_start(now)])
        return WalletLimit(repo.monthly_limit(conn, wallet_id), spent, next_month(now))

    def set_wallet_limit(
        self, conn: Connection, wallet_id: str, monthly_credits: int | None, *, actor_id: str
    ) -> WalletLimit:
        """Set (or, with None, remove) the wallet's monthly limit, as
        ``actor_id`` (audited). A limit below what was spent already refuses
        every submission until the month ends."""
        if monthly_credits is not None and not 1 <= monthly_credits <= MAX_MONTHLY_LIMIT:
            raise InvalidInput(
                f"must be between 1 and {MAX_MONTHLY_LIMIT}, or null for no limit",
                field="monthly_credits",
            )
        before = repo.monthly_limit(conn, wallet_id)
        if before != monthly_credits:
            repo.set_monthly_limit(conn, wallet_id, monthly_credits)
            audit.record(
                conn,
                actor=actor_id,
                action="credits.spend_limit",
                target=wallet_id,
                reason=None,
                now=self.clock.now(),
                data={"before": before, "after": monthly_credits},
            )
        return self.wallet_limit(conn, wallet_id)

    def member_spend(self, conn: Connection, team_id: str, user_id: str) -> int:
        """What a member spent in the team this month (what the cap counts)."""
        since = month_start(self.clock.now())
        (spent,) = repo.spent(conn, SpendOf(team_id=team_id, user_id=user_id), [since])
        return spent

    # -- keys --------------------------------------------------------------

    def key_spend(self, conn: Connection, key_ids: list[str]) -> dict[str, KeySpend]:
        """What each key spent today and this month (one statement)."""
        now = self.clock.now()
        found = repo.spent_by_key(conn, key_ids, [day_start(now), month_start(now)])
        tomorrow, reset = day_start(now) + timedelta(days=1), next_month(now)
        spends: dict[str, KeySpend] = {}
        for key_id in key_ids:
            today, this_month = found.get(key_id, (0, 0))
            spends[key_id] = KeySpend(today, this_month, tomorrow, reset)
        return spends

    # -- the checks ------------------------------------------------------

    def guard(self, spender: Spender, credits: int, now: datetime) -> SpendGuard:
        """The ledger's spend guard for a hold of ``credits`` by ``spender``:
        ``check`` under the wallet's lock, the key locked too."""
        return partial(self._guarded, spender, credits, now)

    def _guarded(
        self, spender: Spender, credits: int, now: datetime, conn: Connection, limit: int | None
    ) -> None:
        self.check(conn, spender, credits, now, wallet_limit=limit, lock=True)

    def check(
        self,
        conn: Connection,
        spender: Spender,
        credits: int,
        now: datetime,
        *,
        wallet_limit: int | None,
        lock: bool = False,
    ) -> None:
        """Raise ``SpendLimitReached`` if spending ``credits`` more would pass
        the wallet's monthly limit, the key's daily or monthly one, or the
        member's cap, checked in that order. With ``lock``, the key's row is
        locked and its limits read from it (the write step); without, the
        limits the request came with are used (the read step, a quote)."""
        month, resets = month_start(now), next_month(now)
        if wallet_limit is not None:
            (spent,) = repo.spent(conn, SpendOf(wallet_id=spender.wallet_id), [month])
            if not within(wallet_limit, spent, credits):
                raise _refusal("wallet_monthly", wallet_limit, spent, credits, resets)
        key = spender.key
        if key is not None and key.limited:
            daily, monthly = key.daily, key.monthly
            if lock:
                locked = repo.lock_key(conn, key.key_id)
                if locked is not None:
                    daily, monthly = locked.daily, locked.monthly
            if daily is not None or monthly is not None:
                today = day_start(now)
                day_spent, month_spent = repo.spent(
                    conn, SpendOf(api_key_id=key.key_id), [today, month]
                )
                if daily is not None and not within(daily, day_spent, credits):
                    tomorrow = today + timedelta(days=1)
                    raise _refusal("key_daily", daily, day_spent, credits, tomorrow)
                if monthly is not None and not within(monthly, month_spent, credits):
                    raise _refusal("key_monthly", monthly, month_spent, credits, resets)
        member = spender.member
        if member is not None:
            (spent,) = repo.spent(
                conn, SpendOf(team_id=member.team_id, user_id=member.user_id), [month]
            )
            if not within(member.cap, spent, credits):
                raise _refusal("member_monthly", member.cap, spent, credits, resets)


_WHOSE: dict[SpendLimit, str] = {
    "wallet_monthly": "this wallet's spending this month",
    "key_daily": "this API key's spending today",
    "key_monthly": "this API key's spending this month",
    "member_monthly": "your spending in this team this month",
}
_WHICH: dict[SpendLimit, str] = {
    "wallet_monthly": "the wallet's monthly spend limit",
    "key_daily": "the key's daily limit",
    "key_monthly": "the key's monthly limit",
    "member_monthly": "your monthly cap, set by the team's owner,",
}


def _refusal(
    limit: SpendLimit, cap: int, spent: int, credits: int, resets_at: datetime
) -> SpendLimitReached:
    return SpendLimitReached(
        f"this would take {_WHOSE[limit]} to {spent + credits} credits; {_WHICH[limit]} is "
        f"{cap} (it resets at {resets_at:%Y-%m-%d %H:%M} UTC)",
        limit=limit,
        resets_at=resets_at,
        cap=cap,
        spent=spent,
    )

"""The ledger's service API: what billing, generation and admin call.

Every method takes the caller's ``Connection`` (the caller owns and commits
the transaction) and, for every mutation, an idempotency key: the same key with
the same arguments returns the first result and writes nothing; with other
arguments it raises ``IdempotencyConflict``. A refusal raises a ``LedgerError``
before anything is written, and the caller's rollback discards the rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import Connection

from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import after_commit
from plasmaart.db.values import LOT_SOURCES
from plasmaart.ids import new_id
from plasmaart.ledger import repository as repo
from plasmaart.ledger.errors import (
    CaptureExceedsHold,
    HoldAlreadyResolved,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    LotNotFound,
    WalletNotFound,
)
from plasmaart.ledger.rules import LotView, allocate, burn_key, rollover_credits, split_capture

R = TypeVar("R")


@dataclass(frozen=True)
class GrantResult:
    lot_id: str
    credits: int
    balance_after: int


@dataclass(frozen=True)
class HoldResult:
    hold_id: str
    credits: int
    balance_after: int
    lots: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class SettleResult:
    """The outcome of a capture or a release."""

    hold_id: str
    captured: int
    released: int
    # Released credits whose lot had expired (or was clawed back) meanwhile.
    expired: int
    balance_after: int


@dataclass(frozen=True)
class RenewResult:
    expired: int
    rolled_over: int
    granted: int
    lot_id: str | None
    balance_after: int


@dataclass(frozen=True)
class AdjustResult:
    amount: int
    lot_id: str | None
    balance_after: int


@dataclass(frozen=True)
class ClawbackResult:
    lot_id: str
    clawed_back: int
    # Of the lot's credits: already consumed, and held by running generations
    # (those will be clawed back when released, or are consumed on capture).
    spent: int
    held: int
    balance_after: int


@dataclass(frozen=True)
class ExpiryResult:
    lots: int
    credits: int


@dataclass(frozen=True)
class LotBalance:
    id: str
    source: str
    granted: int
    remaining: int
    expires_at: datetime | None


@dataclass(frozen=True)
class Balance:
    available: int
    held: int
    lots: list[LotBalance]
    next_expiry: tuple[int, datetime] | None


def _require_positive(credits: int, operation: str) -> None:
    if credits <= 0:
        raise InvalidAmount(
            f"{operation} needs a positive number of credits, not {credits}", field="credits"
        )


class _Wallet:
    """The locked wallet's running balances while one operation writes entries,
    and the driver that queues the operation's writes."""

    def __init__(
        self,
        driver: repo.Driver,
        wallet_id: str,
        available: int,
        held: int,
        now: datetime,
        open_lots: list[LotView] | None = None,
        state: repo.WalletState | None = None,
    ) -> None:
        self.driver = driver
        self.id = wallet_id
        # The locked row's spend limit and balance watch (None: none).
        self.state = state
        self.available = available
        self.held = held
        self.now = now
        # The lots that still held credits when the wallet was locked (read
        # only by the operations that spend: hold, and a negative adjustment).
        self.open_lots = open_lots or []
        self.entries: list[dict[str, Any]] = []

    def move(
        self,
        kind: str,
        from_account: str,
        to_account: str,
        credits: int,
        *,
        lot_id: str | None = None,
        hold_id: str | None = None,
        generation_id: str | None = None,
        model: str | None = None,
        outputs: int | None = None,
        memo: str | None = None,
    ) -> None:
        amount = credits if to_account == "wallet" else -credits if from_account == "wallet" else 0
        held_change = (
            credits if to_account == "holds" else -credits if from_account == "holds" else 0
        )
        self.available += amount
        self.held += held_change
        self.entries.append(
            {
                "wallet_id": self.id,
                "kind": kind,
                "from_account": from_account,
                "to_account": to_account,
                "credits": credits,
                "amount": amount,
                "balance_after": self.available,
                "held_after": self.held,
                "lot_id": lot_id,
                "hold_id": hold_id,
                "generation_id": generation_id,
                "model": model,
                "outputs": outputs,
                "memo": memo,
                "created_at": self.now,
            }
        )

    def flush(self, listeners: Iterable[BalanceListener]) -> None:
        """Queue the entries written so far and the wallet's new balances."""
        if not self.entries:
            return
        self.driver.insert_entries(self.entries)
        self.driver.store_wallet(self.id, self.available, self.held)
        self.entries = []
        for listener in listeners:
            after_commit(self.driver.conn, partial(listener, self.id, self.available, self.held))

    def watch(self, watch: BalanceWatch | None) -> None:
        """Show the new balance to ``watch`` when it left the wallet's watch
        (once the operation's writes are sent: the watcher's own statements
        run after them, in the same transaction)."""
        if watch is not None and self.state is not None and self.state.watched(self.available):
            watch(self.driver.conn, self.id, self.available)


def _request_hash(operation: str, params: dict[str, Any]) -> str:
    payload = json.dumps([operation, params], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


BalanceListener = Callable[[str, int, int], None]


class BalanceWatch(Protocol):
    """Called in the transaction of a ledger operation that left the
    wallet's ``available`` balance below its ``watch_below`` or above its
    ``watch_above`` (tables.wallets): the credit controls start an auto
    top-up or fire and re-arm balance alerts there, and set the watch anew.
    Wallets without controls have no watch, and cost nothing."""

    def __call__(self, conn: Connection, wallet_id: str, available: int) -> None: ...


class SpendGuard(Protocol):
    """Called by ``hold`` under the wallet's lock, before anything is written,
    with the wallet's own monthly spend limit (None: none): raises to refuse
    the hold. Concurrent holds of one wallet wait for the lock, so each guard
    sees every hold committed before it."""

    def __call__(self, conn: Connection, monthly_limit: int | None) -> None: ...


# Owners whose wallet id a process keeps (``LedgerService.wallet_of``).
OWNER_WALLETS_KEPT = 100_000


class LedgerService:
    def __init__(
        self,
        clock: Clock,
        *,
        balance_listeners: Iterable[BalanceListener] = (),
        watch: BalanceWatch | None = None,
    ) -> None:
        self.clock = clock
        # Shown, in the transaction, a balance that left its wallet's watch.
        self.watch = watch
        # Called with (wallet_id, available, held) after a transaction that
        # changed the wallet commits: the events stream listens here.
        self.balance_listeners: tuple[BalanceListener, ...] = tuple(balance_listeners)
        # (owner kind, owner id) -> wallet id. An owner's wallet never changes
        # nor goes away once created (with its owner: a user at sign-up), so
        # the id read once answers every later request without a statement.
        # An id read in a transaction that then rolled back names an owner
        # that does not exist either, whom no request can name.
        self._owner_wallets: dict[tuple[str, str], str] = {}

    # -- wallets ---------------------------------------------------------

    def open_wallet(self, conn: Connection, owner_kind: str, owner_id: str) -> str:
        """The owner's wallet id, created on first use."""
        existing = repo.wallet_of_owner(conn, owner_kind, owner_id)
        if existing is not None:
            return existing
        wallet_id = new_id("wal")
        repo.insert_wallet(conn, wallet_id, owner_kind, owner_id, self.clock.now())
        return wallet_id

    def wallet_of(self, conn: Connection, owner_kind: str, owner_id: str) -> str:
        key = (owner_kind, owner_id)
        wallet_id = self._owner_wallets.get(key)
        if wallet_id is not None:
            return wallet_id
        wallet_id = repo.wallet_of_owner(conn, owner_kind, owner_id)
        if wallet_id is None:
            raise WalletNotFound(f"{owner_kind}:{owner_id}")
        if len(self._owner_wallets) >= OWNER_WALLETS_KEPT:
            self._owner_wallets = {}
        self._owner_wallets[key] = wallet_id
        return wallet_id

    # -- mutations -------------------------------------------------------

    def grant(
        self,
        conn: Connection,
        wallet_id: str,
        credits: int,
        *,
        source: str,
        idempotency_key: str,
        expires_at: datetime | None = None,
        reference: str | None = None,
        memo: str | None = None,
        kind: str = "grant",
    ) -> GrantResult:
        """Add a lot of ``credits`` from ``source`` to the wallet."""
        _require_positive(credits, "a grant")
        if source not in LOT_SOURCES:
            raise InvalidAmount(f"unknown lot source {source!r}", field="source")
        now = self.clock.now()
        params = {
            "wallet": wallet_id,
            "credits": credits,
            "source": source,
            "expires_at": expires_at,
            "reference": reference,
            "kind": kind,
        }
        wallet, replay = self._begin(conn, wallet_id, "grant", idempotency_key, params, now)
        if replay is not None:
            return _load(GrantResult, replay)
        # Checked after the replay: a retry must get its first answer even
        # once time has moved past the expiry.
        if expires_at is not None and as_utc(expires_at) <= now:
            raise InvalidAmount("a grant cannot expire in the past", field="expires_at")
        lot_id = self._new_lot(conn, wallet, source, credits, expires_at, reference, kind, memo)
        result = GrantResult(lot_id=lot_id, credits=credits, balance_after=wallet.available)
        return self._finish(wallet, "grant", idempotency_key, params, result)

    def hold(
        self,
        conn: Connection,
        wallet_id: str,
        credits: int,
        *,
        idempotency_key: str,
        generation_id: str | None = None,
        model: str | None = None,
        memo: str | None = None,
        spend_guard: SpendGuard | None = None,
    ) -> HoldResult:
        """Move ``credits`` from the wallet's lots (in burn order) into a hold.
        ``spend_guard`` is asked first, under the wallet's lock (a retry of a
        hold already made replays it without asking)."""
        _require_positive(credits, "a hold")
        now = self.clock.now()
        params = {
            "wallet": wallet_id,
            "credits": credits,
            "generation": generation_id,
            "model": model,
        }
        wallet, replay = self._begin(
            conn, wallet_id, "hold", idempotency_key, params, now, with_lots=True
        )
        if replay is not None:
            return _load(HoldResult, replay)
        if spend_guard is not None:
            spend_guard(conn, None if wallet.state is None else wallet.state.spend_limit)
        spendable = self._spendable_lots(conn, wallet)
        if wallet.available < credits:
            raise InsufficientCredits(required=credits, available=wallet.available)
        taken = allocate(spendable, credits)
        hold_id = new_id("hld")
        wallet.driver.take_from_lots(taken)
        wallet.driver.insert_hold(
            hold_id=hold_id,
            wallet_id=wallet.id,
            credits=credits,
            generation_id=generation_id,
            model=model,
            memo=memo,
            now=now,
            taken=taken,
        )
        wallet.move(
            "hold",
            "wallet",
            "holds",
            credits,
            hold_id=hold_id,
            generation_id=generation_id,
            model=model,
            memo=memo,
        )
        result = HoldResult(
            hold_id=hold_id,
            credits=credits,
            balance_after=wallet.available,
            lots=[(lot_id, take) for lot_id, take in taken],
        )
        return self._finish(wallet, "hold", idempotency_key, params, result)

    def capture(
        self,
        conn: Connection,
        hold_id: str,
        credits: int,
        *,
        idempotency_key: str,
        outputs: int | None = None,
    ) -> SettleResult:
        """Charge ``credits`` of the hold (for ``outputs`` delivered outputs, when
        known); the rest goes back to its lots."""
        if credits < 0:
            raise InvalidAmount(f"cannot capture a negative amount ({credits})", field="credits")
        if outputs is not None and outputs < 0:
            raise InvalidAmount(f"cannot deliver {outputs} outputs", field="outputs")
        return self._settle(conn, hold_id, credits, idempotency_key, "capture", outputs)

    def release(self, conn: Connection, hold_id: str, *, idempotency_key: str) -> SettleResult:
        """Give every credit of the hold back to the lot it came from."""
        return self._settle(conn, hold_id, 0, idempotency_key, "release", None)

    def expire_due(self, conn: Connection, *, limit: int = 500) -> ExpiryResult:
        """Expire up to ``limit`` lots past ``expires_at``.

        Naturally idempotent (it only touches lots that still hold credits), so
        it needs no key; the worker's clock calls it until it returns 0 lots.
        """
        now = self.clock.now()
        by_wallet: dict[str, list[str]] = {}
        for row in repo.due_lots(conn, now, limit):
            by_wallet.setdefault(row.wallet_id, []).append(row.id)
        expired_lots = expired_credits = 0
        if not by_wallet:
            return ExpiryResult(lots=0, credits=0)
        driver = repo.Driver(conn)
        for wallet_id, lot_ids in by_wallet.items():
            state, _ = driver.lock_wallet(wallet_id, "")
            if state is None:  # pragma: no cover - lots always belong to a wallet
                continue
            wallet = _Wallet(driver, wallet_id, state.available, state.held, now, state=state)
            for lot_id, lot in repo.lots_by_id(conn, lot_ids).items():
                remaining = int(lot.remaining)
                # Re-checked under the lock: a hold may have emptied it meanwhile.
                if remaining and as_utc(lot.expires_at) <= now:  # pragma: no branch
                    self._expire_lot(conn, wallet, lot_id, remaining, "expire", "expired")
                    expired_lots += 1
                    expired_credits += remaining
            wallet.flush(self.balance_listeners)
            driver.flush()
            wallet.watch(self.watch)
        return ExpiryResult(lots=expired_lots, credits=expired_credits)

    def renew(
        self,
        conn: Connection,
        wallet_id: str,
        *,
        period_start: datetime,
        period_end: datetime,
        next_period_end: datetime,
        monthly_credits: int,
        rollover_cap: int,
        idempotency_key: str,
        reference: str | None = None,
    ) -> RenewResult:
        """Close a subscription period and open the next.

        The period's monthly credits (subscription and rollover lots ending at
        ``period_end``) expire, except ``min(unused, rollover_cap)`` which
        comes back as a rollover lot for the next period; then the new month's
        allocation is granted. Purchased credits are untouched.
        """
        if monthly_credits < 0 or rollover_cap < 0:
            raise InvalidAmount("monthly credits and rollover cap cannot be negative")
        if not period_start < period_end < next_period_end:
            raise InvalidAmount("periods must follow each other", field="period_end")
        now = self.clock.now()
        params = {
            "wallet": wallet_id,
            "start": period_start,
            "end": period_end,
            "next": next_period_end,
            "monthly": monthly_credits,
            "cap": rollover_cap,
        }
        wallet, replay = self._begin(conn, wallet_id, "renew", idempotency_key, params, now)
        if replay is not None:
            return _load(RenewResult, replay)
        expired_now = unused = 0
        for lot in repo.period_lots(conn, wallet.id, period_start, period_end):
            remaining = int(lot.remaining)
            if remaining:
                self._expire_lot(
                    conn,
                    wallet,
                    lot.id,
                    remaining,
                    "expire",
                    "expired",
                    memo="subscription period ended",
                )
                expired_now += remaining
            unused += int(lot.expired) + remaining
        carried = rollover_credits(unused, rollover_cap)
        if carried:
            rollover_lot = new_id("lot")
            repo.insert_lot(
                conn,
                lot_id=rollover_lot,
                wallet_id=wallet.id,
                source="rollover",
                credits=carried,
                expires_at=next_period_end,
                reference=reference,
                now=now,
            )
            wallet.move(
                "rollover",
                "expired",
                "wallet",
                carried,
                lot_id=rollover_lot,
                memo="unused monthly credits carried over",
            )
        lot_id = None
        if monthly_credits:
            lot_id = self._new_lot(
                conn,
                wallet,
                "subscription",
                monthly_credits,
                next_period_end,
                reference,
                "grant",
                "monthly credits",
            )
        result = RenewResult(
            expired=expired_now,
            rolled_over=carried,
            granted=monthly_credits,
            lot_id=lot_id,
            balance_after=wallet.available,
        )
        return self._finish(wallet, "renew", idempotency_key, params, result)

    def adjust(
        self,
        conn: Connection,
        wallet_id: str,
        amount: int,
        *,
        idempotency_key: str,
        reason: str,
        expires_at: datetime | None = None,
    ) -> AdjustResult:
        """An operator's correction: a grant (amount > 0) or a debit in burn order
        (amount < 0) that can never take the balance below zero."""
        if amount == 0:
            raise InvalidAmount("an adjustment needs a non-zero amount", field="amount")
        if not reason.strip():
            raise InvalidAmount("an adjustment needs a reason", field="reason")
        now = self.clock.now()
        params = {"wallet": wallet_id, "amount": amount, "reason": reason, "expires_at": expires_at}
        wallet, replay = self._begin(
            conn, wallet_id, "adjust", idempotency_key, params, now, with_lots=amount < 0
        )
        if replay is not None:
            return _load(AdjustResult, replay)
        if expires_at is not None and as_utc(expires_at) <= now:
            raise InvalidAmount("an adjustment cannot expire in the past", field="expires_at")
        lot_id = None
        if amount > 0:
            lot_id = self._new_lot(
                conn, wallet, "adjustment", amount, expires_at, None, "adjustment", reason
            )
        else:
            spendable = self._spendable_lots(conn, wallet)
            if wallet.available < -amount:
                raise InsufficientCredits(required=-amount, available=wallet.available)
            taken = allocate(spendable, -amount)
            wallet.driver.take_from_lots(taken)
            for taken_lot, credits in taken:
                wallet.move(
                    "adjustment", "wallet", "issuance", credits, lot_id=taken_lot, memo=reason
                )
        result = AdjustResult(amount=amount, lot_id=lot_id, balance_after=wallet.available)
        return self._finish(wallet, "adjust", idempotency_key, params, result)

    def clawback(
        self, conn: Connection, lot_id: str, *, idempotency_key: str, reason: str
    ) -> ClawbackResult:
        """Take back what remains of a lot (a refunded or disputed purchase).

        The lot is closed, so credits of it that running generations hold are
        clawed back too when they are released. ``spent > 0`` tells the caller
        that some credits of the purchase were already used: flag the account.
        """
        lot = repo.get_lot(conn, lot_id)
        if lot is None:
            raise LotNotFound(lot_id)
        now = self.clock.now()
        params = {"lot": lot_id, "reason": reason}
        wallet, replay = self._begin(conn, lot.wallet_id, "clawback", idempotency_key, params, now)
        if replay is not None:
            return _load(ClawbackResult, replay)
        lot = repo.get_lot(conn, lot_id)  # re-read under the wallet's lock
        if lot is None:  # pragma: no cover - lots are never deleted
            raise LotNotFound(lot_id)
        remaining = int(lot.remaining)
        held = repo.pending_on_lot(conn, lot_id)
        if remaining:
            wallet.move("clawback", "wallet", "issuance", remaining, lot_id=lot_id, memo=reason)
        repo.close_lot(conn, lot_id, reason="clawed_back", expired=remaining, now=now)
        spent = int(lot.granted) - remaining - int(lot.expired) - held
        result = ClawbackResult(
            lot_id=lot_id,
            clawed_back=remaining,
            spent=max(spent, 0),
            held=held,
            balance_after=wallet.available,
        )
        return self._finish(wallet, "clawback", idempotency_key, params, result)

    # -- reads -----------------------------------------------------------

    def balance(self, conn: Connection, wallet_id: str) -> Balance:
        state = repo.read_wallet(conn, wallet_id)
        if state is None:
            raise WalletNotFound(wallet_id)
        now = self.clock.now()
        views: list[tuple[LotView, int]] = []
        # Lots past expiry that the sweep has not reached yet are not spendable.
        stale = 0
        for row in repo.open_lot_rows(conn, wallet_id):
            view = LotView(
                row.id,
                row.source,
                int(row.remaining),
                None if row.expires_at is None else as_utc(row.expires_at),
                as_utc(row.created_at),
            )
            if view.expires_at is not None and view.expires_at <= now:
                stale += view.remaining
            else:
                views.append((view, int(row.granted)))
        views.sort(key=lambda pair: burn_key(pair[0]))
        lots = [
            LotBalance(view.id, view.source, granted, view.remaining, view.expires_at)
            for view, granted in views
        ]
        next_expiry = None
        expiring = [lot.expires_at for lot in lots if lot.expires_at is not None]
        if expiring:
            first = min(expiring)
            credits = sum(lot.remaining for lot in lots if lot.expires_at == first)
            next_expiry = (credits, first)
        return Balance(
            available=state[0] - stale, held=state[1], lots=lots, next_expiry=next_expiry
        )

    # -- internals -------------------------------------------------------

    def _begin(
        self,
        conn: Connection,
        wallet_id: str,
        operation: str,
        key: str,
        params: dict[str, Any],
        now: datetime,
        *,
        with_lots: bool = False,
    ) -> tuple[_Wallet, dict[str, Any] | None]:
        """Lock the wallet, then look the key up (under the lock, so that two
        racing requests with one key see each other); with ``with_lots``, read
        its open lots too, in the same round trip."""
        _require_key(key)
        driver = repo.Driver(conn)
        found, open_lots = driver.lock_wallet(wallet_id, key, with_lots=with_lots)
        if found is None:
            raise WalletNotFound(wallet_id)
        wallet = _Wallet(driver, wallet_id, found.available, found.held, now, open_lots, found)
        return wallet, _replay(found, operation, key, params)

    def _finish(
        self,
        wallet: _Wallet,
        operation: str,
        key: str,
        params: dict[str, Any],
        result: R,
    ) -> R:
        wallet.flush(self.balance_listeners)
        wallet.driver.record_operation(
            key, operation, _request_hash(operation, params), _as_dict(result), wallet.now
        )
        wallet.driver.flush()
        wallet.watch(self.watch)
        return result

    def _new_lot(
        self,
        conn: Connection,
        wallet: _Wallet,
        source: str,
        credits: int,
        expires_at: datetime | None,
        reference: str | None,
        kind: str,
        memo: str | None,
    ) -> str:
        lot_id = new_id("lot")
        repo.insert_lot(
            conn,
            lot_id=lot_id,
            wallet_id=wallet.id,
            source=source,
            credits=credits,
            expires_at=None if expires_at is None else as_utc(expires_at),
            reference=reference,
            now=wallet.now,
        )
        wallet.move(kind, "issuance", "wallet", credits, lot_id=lot_id, memo=memo)
        return lot_id

    def _spendable_lots(self, conn: Connection, wallet: _Wallet) -> list[LotView]:
        """The wallet's lots that can be spent now. Lots past their expiry that
        the sweep has not reached yet are expired first, in this transaction,
        so an expired credit is never spent."""
        spendable = []
        for lot in wallet.open_lots:
            if lot.expires_at is not None and lot.expires_at <= wallet.now:
                self._expire_lot(conn, wallet, lot.id, lot.remaining, "expire", "expired")
            else:
                spendable.append(lot)
        return spendable

    def _expire_lot(
        self,
        conn: Connection,
        wallet: _Wallet,
        lot_id: str,
        credits: int,
        kind: str,
        reason: str,
        memo: str | None = None,
        *,
        unswept: int = 0,
    ) -> None:
        """Close the lot, taking ``credits`` out of the wallet with it; with
        ``unswept``, what the lot itself still held (read under the wallet's
        lock) expires first, as its own entry."""
        to_account = "issuance" if kind == "clawback" else "expired"
        if unswept:
            wallet.move(kind, "wallet", to_account, unswept, lot_id=lot_id)
        wallet.move(kind, "wallet", to_account, credits, lot_id=lot_id, memo=memo)
        repo.close_lot(conn, lot_id, reason=reason, expired=unswept + credits, now=wallet.now)

    def _settle(
        self,
        conn: Connection,
        hold_id: str,
        credits: int,
        key: str,
        operation: str,
        outputs: int | None,
    ) -> SettleResult:
        now = self.clock.now()
        params = {"hold": hold_id, "credits": credits, "outputs": outputs}
        driver = repo.Driver(conn)
        # The hold's rows are read after the wallet's lock is taken, so its
        # status is the one the last settlement left.
        found, rows = driver.lock_hold_wallet(hold_id, key)
        if found is None:
            raise HoldNotFound(hold_id)
        _require_key(key)
        wallet = _Wallet(driver, found.wallet_id, found.available, found.held, now, state=found)
        replay = _replay(found, operation, key, params)
        if replay is not None:
            return _load(SettleResult, replay)
        hold = rows[0]
        if hold.status != "pending":
            raise HoldAlreadyResolved(hold_id, hold.status)
        amount = hold.amount
        if credits > amount:
            raise CaptureExceedsHold(hold_id, credits, amount)
        captured, released = split_capture(repo.allocations(rows), credits)
        generation_id, model = hold.generation_id, hold.model
        if credits:
            wallet.move(
                "capture",
                "holds",
                "consumed",
                credits,
                hold_id=hold_id,
                generation_id=generation_id,
                model=model,
                outputs=outputs,
            )
            driver.add_usage(
                wallet.id,
                day=now.date(),
                model=model or "",
                outputs=outputs or 0,
                credits=credits,
            )
        released_total = sum(part for _, part in released)
        expired_total = 0
        if released_total:
            wallet.move(
                "release",
                "holds",
                "wallet",
                released_total,
                hold_id=hold_id,
                generation_id=generation_id,
                model=model,
            )
            lots = {row.lot_id: row for row in rows}
            for lot_id, part in released:
                lot = lots[lot_id]
                if lot.closed_reason == "clawed_back":
                    self._expire_lot(
                        conn,
                        wallet,
                        lot_id,
                        part,
                        "clawback",
                        "clawed_back",
                        memo="purchase refunded",
                    )
                    expired_total += part
                elif lot.closed_reason is not None or (
                    lot.expires_at is not None and lot.expires_at <= now
                ):
                    # The lot expired while its credits were held: they come
                    # back and expire at once, as an explicit expiry entry.
                    # A lot past its expiry that no sweep nor renewal has
                    # closed yet still holds credits of its own: closing it
                    # empties it, so they expire here too, as the sweep would
                    # have expired them (else the lot loses them while the
                    # wallet's balance keeps them).
                    self._expire_lot(
                        conn,
                        wallet,
                        lot_id,
                        part,
                        "expire",
                        "expired",
                        memo="released after its lot expired",
                        unswept=lot.remaining,
                    )
                    expired_total += part
                else:
                    driver.give_back_to_lot(lot_id, part)
        driver.settle_hold(hold_id, captured, released, now)
        result = SettleResult(
            hold_id=hold_id,
            captured=credits,
            released=released_total,
            expired=expired_total,
            balance_after=wallet.available,
        )
        return self._finish(wallet, operation, key, params, result)


def _require_key(key: str) -> None:
    if not key:
        raise InvalidAmount(
            "every ledger mutation needs an idempotency key", field="idempotency_key"
        )


def _replay(
    found: repo.WalletState, operation: str, key: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    """The first result recorded under ``key``, or None if the key is new.
    The same key with other arguments (or for another operation) is refused."""
    if found.operation is None:
        return None
    if found.operation != operation or found.request_hash != _request_hash(operation, params):
        raise IdempotencyConflict(
            f"idempotency key {key!r} was used for another {found.operation} request"
        )
    return cast(dict[str, Any], json.loads(cast(str, found.result)))


def _as_dict(result: object) -> dict[str, Any]:
    """A result's fields, as ``asdict`` gives them for the JSON of its record
    (results are flat, and JSON writes tuples as lists) without its deep copy."""
    return {item.name: getattr(result, item.name) for item in fields(cast(Any, result))}


def _load(cls: type[R], data: dict[str, Any]) -> R:
    if cls is HoldResult:
        data = {**data, "lots": [tuple(pair) for pair in data.get("lots", [])]}
    return cls(**data)

"""Billing's SQL: subscriptions, payments, the test clock's offset and the
sandbox cards. Rows come back as the frozen records below."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Row, func, insert, or_, select, update

from plasmaart.clock import as_utc
from plasmaart.db.engine import invalidate
from plasmaart.db.tables import (
    payments,
    receipt_numbers,
    sandbox_cards,
    subscriptions,
    test_clock,
    users,
)


@dataclass(frozen=True)
class Subscription:
    id: str
    plan: str
    status: str
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    pending_plan: str | None
    user_id: str = ""
    wallet_id: str = ""
    backend: str = "sandbox"
    external_id: str | None = None
    # Periods count from here (see ``periods.period_end_after``).
    billing_anchor: datetime | None = None
    # The account is suspended: the subscription ends at its period end
    # (``cancel_at_period_end`` stays the customer's own cancellation).
    stops_for_suspension: bool = False

    @property
    def ends_at_period_end(self) -> bool:
        """Whether the subscription ends at its period end instead of renewing."""
        return self.cancel_at_period_end or self.stops_for_suspension


PaymentKind = Literal["subscription", "renewal", "upgrade", "pack"]
PaymentStatus = Literal["succeeded", "failed"]


@dataclass(frozen=True)
class Payment:
    id: str
    user_id: str
    wallet_id: str
    subscription_id: str | None
    kind: PaymentKind
    status: PaymentStatus
    plan_id: str | None
    pack_id: str | None
    amount_cents: int
    currency: str
    credits: int
    lot_id: str | None
    period_start: datetime | None
    period_end: datetime | None
    backend: str
    external_id: str | None
    failure_reason: str | None
    created_at: datetime
    # Its receipt's number (``receipts.receipt_label`` shows it), once it succeeded.
    receipt_number: int | None = None
    # Stripe: the hosted page of the invoice this payment paid.
    hosted_invoice_url: str | None = None


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _subscription(row: Row[Any]) -> Subscription:
    return Subscription(
        id=row.id,
        plan=row.plan_id,
        status=row.status,
        current_period_start=as_utc(row.current_period_start),
        current_period_end=as_utc(row.current_period_end),
        cancel_at_period_end=bool(row.cancel_at_period_end),
        pending_plan=row.pending_plan,
        user_id=row.user_id,
        wallet_id=row.wallet_id,
        backend=row.backend,
        external_id=row.external_id,
        billing_anchor=as_utc(row.billing_anchor or row.current_period_start),
        stops_for_suspension=bool(row.stops_for_suspension),
    )


def _payment(row: Row[Any]) -> Payment:
    return Payment(
        id=row.id,
        user_id=row.user_id,
        wallet_id=row.wallet_id,
        subscription_id=row.subscription_id,
        # The table's CHECK constraints allow only these.
        kind=cast(PaymentKind, row.kind),
        status=cast(PaymentStatus, row.status),
        plan_id=row.plan_id,
        pack_id=row.pack_id,
        amount_cents=int(row.amount_cents),
        currency=row.currency,
        credits=int(row.credits),
        lot_id=row.lot_id,
        period_start=_maybe_utc(row.period_start),
        period_end=_maybe_utc(row.period_end),
        backend=row.backend,
        external_id=row.external_id,
        failure_reason=row.failure_reason,
        created_at=as_utc(row.created_at),
        receipt_number=None if row.receipt_number is None else int(row.receipt_number),
        hosted_invoice_url=row.hosted_invoice_url,
    )


# -- subscriptions -------------------------------------------------------


def subscription_of_wallet(
    conn: Connection, wallet_id: str, *, lock: bool = False
) -> Subscription | None:
    query = select(subscriptions).where(subscriptions.c.wallet_id == wallet_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return None if row is None else _subscription(row)


def subscriptions_of_wallets(
    conn: Connection, wallet_ids: Iterable[str]
) -> dict[str, Subscription]:
    """The subscription of each of ``wallet_ids`` that has one, in one query."""
    wanted = list(wallet_ids)
    if not wanted:
        return {}
    rows = conn.execute(select(subscriptions).where(subscriptions.c.wallet_id.in_(wanted))).all()
    return {row.wallet_id: _subscription(row) for row in rows}


def subscription_by_id(
    conn: Connection, subscription_id: str, *, lock: bool = False
) -> Subscription | None:
    query = select(subscriptions).where(subscriptions.c.id == subscription_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return None if row is None else _subscription(row)


def insert_subscription(conn: Connection, **values: Any) -> None:
    conn.execute(insert(subscriptions).values(**values))
    invalidate(conn, f"wallet:{values['wallet_id']}")


def update_subscription(conn: Connection, subscription_id: str, **values: Any) -> None:
    conn.execute(
        update(subscriptions).where(subscriptions.c.id == subscription_id).values(**values)
    )
    invalidate(conn, f"subscription:{subscription_id}")


def due_subscription_ids(
    conn: Connection,
    *,
    now: datetime,
    past_due_before: datetime,
    backends: Iterable[str],
    after: str,
    limit: int,
) -> list[str]:
    """Subscriptions of ``backends`` with something to look at, in id order
    after ``after``: active ones whose period has ended, past-due ones whose
    period ended before ``past_due_before`` (their grace may be over)."""
    period_end = subscriptions.c.current_period_end
    status = subscriptions.c.status
    rows = conn.execute(
        select(subscriptions.c.id)
        .where(
            period_end <= now,
            or_(
                status == "active",
                (status == "past_due") & (period_end <= past_due_before),
            ),
            subscriptions.c.backend.in_(list(backends)),
            subscriptions.c.id > after,
        )
        .order_by(subscriptions.c.id)
        .limit(limit)
    )
    return [row.id for row in rows]


def user_is_suspended(conn: Connection, user_id: str) -> bool:
    status: str = conn.execute(select(users.c.status).where(users.c.id == user_id)).scalar_one()
    return status == "suspended"


def user_email(conn: Connection, user_id: str) -> str:
    email: str = conn.execute(select(users.c.email).where(users.c.id == user_id)).scalar_one()
    return email


# -- payments ------------------------------------------------------------


def insert_payment(conn: Connection, **values: Any) -> Payment:
    conn.execute(insert(payments).values(**values))
    found = payment_by_key(conn, values["idempotency_key"])
    if found is None:  # pragma: no cover - just inserted
        raise RuntimeError("payment vanished after insert")
    return found


def payment_by_key(conn: Connection, key: str) -> Payment | None:
    row = conn.execute(select(payments).where(payments.c.idempotency_key == key)).one_or_none()
    return None if row is None else _payment(row)


def payment_by_id(conn: Connection, payment_id: str) -> Payment | None:
    row = conn.execute(select(payments).where(payments.c.id == payment_id)).one_or_none()
    return None if row is None else _payment(row)


def number_receipt(conn: Connection, payment_id: str, now: datetime) -> int:
    """Give the payment the next receipt number (the highest so far plus
    one) and return it. The numbers have no gaps: PostgreSQL's own sequence
    would skip the number a rolled-back transaction took, so the table is
    locked against other numberers until this transaction ends (SQLite's
    write lock does the same). A payment numbered already keeps its number."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE receipt_numbers IN SHARE ROW EXCLUSIVE MODE")
    known = conn.execute(
        select(receipt_numbers.c.number).where(receipt_numbers.c.payment_id == payment_id)
    ).scalar_one_or_none()
    if known is not None:
        return int(known)
    following = select(func.coalesce(func.max(receipt_numbers.c.number), 0) + 1).scalar_subquery()
    number = int(
        conn.execute(
            insert(receipt_numbers)
            .values(number=following, payment_id=payment_id, created_at=now)
            .returning(receipt_numbers.c.number)
        ).scalar_one()
    )
    conn.execute(update(payments).where(payments.c.id == payment_id).values(receipt_number=number))
    return number


def set_hosted_invoice_url(conn: Connection, payment_id: str, url: str) -> bool:
    """Record the Stripe invoice page of a payment that has none yet; False
    if it had one already."""
    result = conn.execute(
        update(payments)
        .where(payments.c.id == payment_id, payments.c.hosted_invoice_url.is_(None))
        .values(hosted_invoice_url=url)
    )
    return bool(result.rowcount)


def last_upgrade_at(
    conn: Connection, subscription_id: str, period_end: datetime
) -> datetime | None:
    """When the last upgrade of the period ending at ``period_end`` was
    prorated from (its payment's ``period_start``), if there was one."""
    found = conn.execute(
        select(func.max(payments.c.period_start)).where(
            payments.c.subscription_id == subscription_id,
            payments.c.kind == "upgrade",
            payments.c.status == "succeeded",
            payments.c.period_end == period_end,
        )
    ).scalar_one_or_none()
    return _maybe_utc(found)


def payments_of_user(
    conn: Connection, user_id: str, *, before: str | None, limit: int
) -> list[Payment]:
    """The user's payments, newest first (ids are time-ordered)."""
    query = select(payments).where(payments.c.user_id == user_id)
    if before is not None:
        query = query.where(payments.c.id < before)
    rows = conn.execute(query.order_by(payments.c.id.desc()).limit(limit))
    return [_payment(row) for row in rows]


# -- the sandbox: test clock and cards ------------------------------------


def clock_offset_seconds(conn: Connection) -> int:
    """The test clock's offset in seconds (0 before it was ever moved)."""
    seconds = conn.execute(
        select(test_clock.c.offset_seconds).where(test_clock.c.id == 1)
    ).scalar_one_or_none()
    return int(seconds or 0)


def advance_test_clock(conn: Connection, seconds: int, now: datetime) -> int:
    """Add ``seconds`` to the offset in one atomic UPDATE; the new offset."""
    result = conn.execute(
        update(test_clock)
        .where(test_clock.c.id == 1)
        .values(offset_seconds=test_clock.c.offset_seconds + seconds, updated_at=now)
    )
    if result.rowcount == 0:
        # The migration inserts the row; a database restored without it gets it back.
        conn.execute(insert(test_clock).values(id=1, offset_seconds=seconds, updated_at=now))
    # Billing time jumped: whatever a cache reckoned from the old time goes.
    invalidate(conn, "*")
    return clock_offset_seconds(conn)


def card_declines(conn: Connection, user_id: str) -> bool:
    declines = conn.execute(
        select(sandbox_cards.c.declines).where(sandbox_cards.c.user_id == user_id)
    ).scalar_one_or_none()
    return bool(declines)


def card_requires_action(conn: Connection, user_id: str) -> bool:
    requires = conn.execute(
        select(sandbox_cards.c.requires_action).where(sandbox_cards.c.user_id == user_id)
    ).scalar_one_or_none()
    return bool(requires)


def set_card(
    conn: Connection,
    user_id: str,
    *,
    declines: bool,
    now: datetime,
    requires_action: bool | None = None,
) -> None:
    """``requires_action`` None: left as it is (False for a new card)."""
    values: dict[str, Any] = {"declines": declines, "updated_at": now}
    if requires_action is not None:
        values["requires_action"] = requires_action
    result = conn.execute(
        update(sandbox_cards).where(sandbox_cards.c.user_id == user_id).values(**values)
    )
    if result.rowcount == 0:
        conn.execute(insert(sandbox_cards).values(user_id=user_id, **values))

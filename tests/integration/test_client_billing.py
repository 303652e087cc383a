"""The Python client's billing calls against the real app served by uvicorn
(SQLite and PostgreSQL, sandbox billing): the subscription's lifecycle, credit
packs, payments, the monthly spend limit, auto top-up and the admin's test
clock, with both clients; and a POST whose answer is lost is sent again
with the same ``Idempotency-Key``, so a pack is paid once and a
subscription starts once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from plasmaart.client import (
    ApiError,
    AsyncClient,
    AutoTopup,
    Checkout,
    Client,
    ClockAdvance,
    CreditPurchase,
    InvalidInputError,
    NotFoundError,
    RetryPolicy,
    Subscription,
    TransportError,
)
from plasmaart.db.tables import payments
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import TestUser, make_user
from tests.support.live_server import WAIT_S, live_server

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)  # the ManualClock's start
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def server(platform: Platform) -> Iterator[str]:
    with live_server(platform) as base_url:
        yield base_url


def client_as(server: str, user: TestUser, **options: object) -> Client:
    return Client(server, user.api_key, timeout=WAIT_S, backoff=0.05, **options)  # type: ignore[arg-type]


def pack_payments(platform: Platform, user: TestUser) -> int:
    with platform.db.read() as conn:
        found = conn.execute(
            select(func.count()).where(payments.c.user_id == user.id, payments.c.kind == "pack")
        ).scalar_one()
    return int(found)


def test_a_subscription_packs_limits_top_up_and_the_test_clock(
    platform: Platform, server: str
) -> None:
    kai = make_user(platform, "kai@example.com")
    admin = make_user(platform, "root@example.com", admin=True)
    with client_as(server, kai) as client, client_as(server, admin) as root:
        none = client.subscription()
        assert (none.plan, none.status, none.current_period_end) == ("free", "none", None)
        started = client.subscribe("starter")
        assert isinstance(started, Subscription)
        assert (started.plan, started.status, started.current_period_end) == (
            "starter",
            "active",
            FEB_1,
        )
        assert client.balance().available == 2000
        # An upgrade, charged exactly what its preview showed.
        preview = client.preview_subscription("pro")
        assert (preview.change, preview.takes_effect, preview.currency) == ("upgrade", "now", "usd")
        assert preview.prorated_at is not None
        upgraded = client.change_plan("pro", prorate_at=preview.prorated_at)
        assert (upgraded.plan, upgraded.pending_plan) == ("pro", None)
        assert client.balance().available == 2000 + preview.credits_now
        # Canceled at the period end, then resumed by choosing the plan again.
        canceled = client.cancel_subscription()
        assert (canceled.cancel_at_period_end, canceled.cancel_reason) == (True, "requested")
        resumed = client.change_plan("pro")
        assert (resumed.cancel_at_period_end, resumed.cancel_reason) == (False, None)
        # A credit pack, paid at once under the sandbox.
        before = client.balance().available
        bought = client.buy_credits("pack-1000")
        assert isinstance(bought, CreditPurchase)
        assert (bought.pack, bought.credits, bought.balance) == ("pack-1000", 1000, before + 1000)
        paid = list(client.payments(page_size=1))
        assert [(p.kind, p.pack, p.status) for p in paid] == [
            ("pack", "pack-1000", "succeeded"),
            ("upgrade", None, "succeeded"),
            ("subscription", None, "succeeded"),
        ]
        assert paid[0].id == bought.payment_id
        assert paid[0].receipt_url is not None
        with pytest.raises(InvalidInputError):
            client.buy_credits("pack-7")
        # The monthly spend limit: set, read, removed; a bad one refused.
        limit = client.set_spend_limit(500)
        assert (limit.monthly_credits, limit.spent, limit.resets_at) == (500, 0, FEB_1)
        assert client.spend_limit() == limit
        with pytest.raises(InvalidInputError) as bad:
            client.set_spend_limit(0)
        assert bad.value.errors[0].field.endswith("monthly_credits")
        assert client.set_spend_limit(None).monthly_credits is None
        # Auto top-up.
        off = client.auto_topup()
        assert isinstance(off, AutoTopup)
        assert (off.enabled, off.last_run) == (False, None)
        on = client.set_auto_topup(
            enabled=True, threshold=100, pack="pack-1000", monthly_cap_cents=5000
        )
        assert (on.enabled, on.threshold, on.pack, on.monthly_cap_cents) == (
            True,
            100,
            "pack-1000",
            5000,
        )
        assert client.auto_topup() == on
        # The admin's test clock: a month on, the renewal is charged; a
        # declining card leaves the next one past due, and paying it fails.
        with pytest.raises(NotFoundError):
            client.advance_clock(1)  # admins only
        card = root.set_sandbox_card(kai.id, declines=True)
        assert (card.user_id, card.declines, card.requires_action) == (kai.id, True, False)
        moved = root.advance_clock(31)
        assert isinstance(moved, ClockAdvance)
        assert (moved.payment_failed, moved.offset_days, moved.now) == (1, 31, FEB_1)
        due = client.subscription()
        assert (due.status, due.grace_ends_at) == ("past_due", FEB_1 + timedelta(days=7))
        with pytest.raises(ApiError) as declined:
            client.pay_subscription()
        assert (declined.value.status, declined.value.code) == (402, "payment_failed")
        root.set_sandbox_card(kai.id, declines=False)
        assert client.pay_subscription().status == "active"
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


class LosesFirstAnswers(httpx.BaseTransport):
    """Sends every request to the server, but loses the answer of the first
    ``lose`` of them (the server did the work; the client hears nothing)."""

    def __init__(self, lose: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose = lose
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        response = self.inner.handle_request(request)
        if self.lose > 0:
            self.lose -= 1
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_lost_answer_is_sent_again_with_its_key_and_acts_once(
    platform: Platform, server: str
) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    lossy = LosesFirstAnswers(lose=2)
    with client_as(server, kai, transport=lossy) as client:
        bought = client.buy_credits("pack-1000")
    # Three attempts, one key: the server bought once and replayed its answer.
    assert len(lossy.keys) == 3
    assert len(set(lossy.keys)) == 1
    assert lossy.keys[0] is not None
    assert isinstance(bought, CreditPurchase)
    assert bought.balance == 2000 + 1000
    assert pack_payments(platform, kai) == 1
    # A subscription whose answer was lost: replayed, not refused as
    # ``already_subscribed`` nor charged twice.
    lee = make_user(platform, "lee@example.com")
    twice = LosesFirstAnswers(lose=1)
    with client_as(server, lee, transport=twice) as client:
        started = client.subscribe("pro", idempotency_key="lee-pro")
        assert isinstance(started, Subscription)
        assert started.plan == "pro"
        assert twice.keys == ["lee-pro", "lee-pro"]
        assert client.balance().available == 5000
        # The same key again (a later run of a script): the first answer.
        assert client.subscribe("pro", idempotency_key="lee-pro") == started
    with client_as(server, lee) as client:
        assert [p.kind for p in client.payments()] == ["subscription"]
    # A policy without retries gives up at the first lost answer (and the
    # pack it bought is not bought again by anybody).
    once = LosesFirstAnswers(lose=1)
    no_retries = RetryPolicy(max_retries=0)
    with (
        client_as(server, kai, transport=once, retry=no_retries) as client,
        pytest.raises(TransportError),
    ):
        client.buy_credits("pack-1000")
    assert len(once.keys) == 1
    assert pack_payments(platform, kai) == 2


def test_the_async_client_has_the_same_billing_calls(platform: Platform, server: str) -> None:
    kai = make_user(platform, "kai@example.com")
    admin = make_user(platform, "root@example.com", admin=True)

    async def journey() -> None:
        async with (
            AsyncClient(server, kai.api_key, timeout=WAIT_S, backoff=0.05) as client,
            AsyncClient(server, admin.api_key, timeout=WAIT_S, backoff=0.05) as root,
        ):
            assert (await client.subscription()).status == "none"
            started = await client.subscribe("starter", idempotency_key="sub-1")
            assert isinstance(started, Subscription)
            assert started.status == "active"
            # Sent again with its key: the first answer, not a second charge.
            assert await client.subscribe("starter", idempotency_key="sub-1") == started
            preview = await client.preview_subscription("pro")
            assert preview.change == "upgrade"
            assert (await client.change_plan("pro")).plan == "pro"
            assert (await client.cancel_subscription()).cancel_at_period_end is True
            bought = await client.buy_credits("pack-3000")
            assert not isinstance(bought, Checkout)
            assert bought.credits == 3000
            kinds = [payment.kind async for payment in client.payments(limit=2)]
            assert kinds == ["pack", "upgrade"]
            assert (await client.set_spend_limit(40)).monthly_credits == 40
            assert (await client.spend_limit()).monthly_credits == 40
            topup = await client.set_auto_topup(
                enabled=True, threshold=10, pack="pack-1000", monthly_cap_cents=2000
            )
            assert (await client.auto_topup()) == topup
            card = await root.set_sandbox_card(kai.id, declines=False, requires_action=True)
            assert card.requires_action is True
            moved = await root.advance_clock(31)
            assert (moved.canceled, moved.now) == (1, FEB_1)
            assert (await client.subscription()).status == "canceled"

    asyncio.run(journey())
    with platform.db.read() as conn:
        assert check_ledger(conn) == []

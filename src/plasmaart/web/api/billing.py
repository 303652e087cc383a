"""Billing endpoints: the caller's subscription, credit purchases and payments;
the sandbox's admin controls (the test clock, declining cards).

Under the sandbox backend a subscription or purchase is paid and applied in
the request; a backend with a hosted checkout answers ``{checkout_url}`` and
its webhook applies the purchase later.

Every succeeded payment has a numbered receipt, a printable page:
``GET /v1/payments/{id}/receipt`` (``billing/receipts.py``).

A declined payment (402 ``payment_failed``) writes nothing but one fair-use
signal, in a transaction of its own: a burst of declines is card testing
(docs/fair-use.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from plasmaart.billing import sandbox_controls
from plasmaart.billing.backends import Checkout
from plasmaart.billing.errors import PaymentFailed
from plasmaart.billing.receipts import receipt_label, receipt_path
from plasmaart.billing.repository import Payment, PaymentKind, PaymentStatus, Subscription
from plasmaart.catalog import Catalog
from plasmaart.errors import Unauthenticated
from plasmaart.notify.letters import receipts as receipt_words
from plasmaart.platform import Platform
from plasmaart.web.auth import AdminPrincipal, CurrentPrincipal, Principal, authenticate
from plasmaart.web.dashboard.pages import prefers_html, render
from plasmaart.web.deps import PageQuery, PlatformDep
from plasmaart.web.pagination import Page, decode_cursor, encode_cursor
from plasmaart.web.presenters import describe_payment
from plasmaart.web.schemas import StrictBody, SubscriptionOut, shape, subscription_out

router = APIRouter(prefix="/v1", tags=["billing"])

# The longest single move of the test clock: ten years of renewals.
MAX_CLOCK_DAYS = 3660


class PlanIn(StrictBody):
    plan: Annotated[str, Field(min_length=1, max_length=64, examples=["starter"])]


class PlanChangeIn(PlanIn):
    prorate_at: datetime | None = Field(
        default=None,
        description=(
            "An upgrade: the `prorated_at` of a preview at most 15 minutes old, so that "
            "the upgrade charges and grants exactly what the preview showed; now by default"
        ),
    )


class SubscriptionPreviewOut(BaseModel):
    plan: str
    change: Literal["subscribe", "upgrade", "downgrade", "resume"] = Field(
        description="`resume`: the plan you are on, withdrawing a scheduled change"
    )
    amount_cents: int = Field(description="Charged now")
    currency: str
    credits_now: int = Field(
        description="Credits granted now (an upgrade's expire at the period end)"
    )
    takes_effect: Literal["now", "period_end"]
    renews_at: datetime = Field(description="When the next renewal is charged")
    renews_amount_cents: int = Field(description="What that renewal charges")
    prorated_at: datetime | None = Field(
        description=(
            "An upgrade: the moment both amounts are prorated from (the fraction of the "
            "period left then); send it as `prorate_at` with the change to be charged "
            "exactly these amounts"
        )
    )


class PackIn(StrictBody):
    pack: Annotated[str, Field(min_length=1, max_length=64, examples=["pack-1000"])]


class SubscriptionState(SubscriptionOut):
    grace_ends_at: datetime | None = Field(
        description="While past due: when the account falls to Free unless the renewal is paid"
    )


class CheckoutOut(BaseModel):
    checkout_url: str


class CreditPurchaseOut(BaseModel):
    payment_id: str
    pack: str
    credits: int
    balance: int = Field(description="Available credits right after the purchase")
    expires_at: datetime | None


class PaymentOut(BaseModel):
    id: str
    created_at: datetime
    kind: PaymentKind
    status: PaymentStatus
    description: str
    plan: str | None
    pack: str | None
    amount_cents: int
    currency: str
    credits: int = Field(description="Credits this payment granted")
    period_start: datetime | None
    period_end: datetime | None
    failure_reason: str | None
    receipt_number: str | None = Field(
        description="A succeeded payment's receipt number (`PA-000042`); null for a failed one"
    )
    receipt_url: str | None = Field(
        description="Its receipt, a printable page (`text/html`); null for a failed payment"
    )
    hosted_invoice_url: str | None = Field(
        description="Stripe: the hosted page of the invoice this payment paid"
    )


class ClockAdvanceIn(StrictBody):
    days: Annotated[int, Field(ge=1, le=MAX_CLOCK_DAYS)]


class ClockOut(BaseModel):
    now: datetime
    offset_days: float
    renewed: int
    downgraded: int
    payment_failed: int
    canceled: int
    grace_ended: int
    expired_lots: int
    expired_credits: int


class SandboxCardIn(StrictBody):
    declines: bool
    # Off-session charges (auto top-ups) ask for authentication; absent: unchanged.
    requires_action: bool | None = None


class SandboxCardOut(BaseModel):
    user_id: str
    declines: bool
    requires_action: bool


def _state(platform: Platform, subscription: Subscription | None) -> SubscriptionState:
    plan_id = platform.catalogs.base.default_plan.id if subscription is None else subscription.plan
    base = subscription_out(plan_id, subscription)
    grace = None
    if subscription is not None and subscription.status == "past_due":
        grace = platform.billing.plans.grace_ends_at(subscription)
    return SubscriptionState(**base.model_dump(), grace_ends_at=grace)


@contextmanager
def declines_counted(
    platform: Platform, principal: Principal, *, what: str, item: str
) -> Iterator[None]:
    """Let a declined payment through as 402, after counting it for fair use
    in a transaction of its own (the request's own rolled back)."""
    try:
        yield
    except PaymentFailed as declined:
        with platform.db.write() as conn:
            platform.fairuse.record_declined_payment(
                conn, principal.user.id, what=what, item=item, reason=declined.detail
            )
        raise


def _payment_out(catalog: Catalog, payment: Payment) -> PaymentOut:
    # A failed payment has no receipt.
    number = payment.receipt_number if payment.status == "succeeded" else None
    return shape(
        PaymentOut,
        payment,
        description=describe_payment(catalog, payment),
        plan=payment.plan_id,
        pack=payment.pack_id,
        receipt_number=None if number is None else receipt_label(number),
        receipt_url=None if number is None else receipt_path(payment.id),
    )


Responses = dict[int | str, dict[str, Any]]
_NO_SUBSCRIPTION: Responses = {404: {"description": "You have no subscription (`not_found`)"}}
_PAYMENT: Responses = {402: {"description": "The payment was declined (`payment_failed`)"}}


@router.get("/subscription", response_model=SubscriptionState)
def get_subscription(principal: CurrentPrincipal, platform: PlatformDep) -> SubscriptionState:
    """Your subscription (``status: none`` without one)."""
    with platform.db.read() as conn:
        wallet = platform.ledger.wallet_of(conn, "user", principal.user.id)
        return _state(platform, platform.billing.plans.subscription(conn, wallet))


@router.post(
    "/subscription",
    status_code=201,
    response_model=SubscriptionState | CheckoutOut,
    responses={
        **_PAYMENT,
        409: {"description": "`already_subscribed`: change the plan instead"},
        200: {"description": "A hosted checkout: pay at `checkout_url`"},
    },
)
def subscribe(
    body: PlanIn, response: Response, principal: CurrentPrincipal, platform: PlatformDep
) -> SubscriptionState | CheckoutOut:
    """Subscribe to a paid plan. Sandbox: active at once, the month's credits granted."""
    declines = declines_counted(platform, principal, what="subscription", item=body.plan)
    with declines, platform.db.write() as conn:
        customer = platform.billing.customer(conn, principal.user.id)
        result = platform.billing.subscriptions.subscribe(conn, customer, body.plan)
        if isinstance(result, Checkout):
            response.status_code = 200
            return CheckoutOut(checkout_url=result.url)
        return _state(platform, result)


@router.patch(
    "/subscription",
    response_model=SubscriptionState,
    responses={
        **_NO_SUBSCRIPTION,
        **_PAYMENT,
        409: {"description": "`subscription_past_due`: pay first"},
    },
)
def change_plan(
    body: PlanChangeIn, principal: CurrentPrincipal, platform: PlatformDep
) -> SubscriptionState:
    """Upgrade at once (the differences in monthly credits and in price both
    prorated by the fraction of the period left), or downgrade at the period
    end (``pending_plan``). Your current plan withdraws a scheduled downgrade
    or cancellation. ``POST /v1/subscription/preview`` shows the amounts first."""
    declines = declines_counted(platform, principal, what="upgrade", item=body.plan)
    with declines, platform.db.write() as conn:
        # An upgrade may record a fair-use signal (plan-change cycling): the
        # account's row first, in the order a suspension takes its locks.
        platform.fairuse.lock_account(conn, principal.user.id)
        customer = platform.billing.customer(conn, principal.user.id)
        changed = platform.billing.subscriptions.change_plan(
            conn, customer, body.plan, prorate_at=body.prorate_at
        )
        return _state(platform, changed)


@router.post(
    "/subscription/preview",
    response_model=SubscriptionPreviewOut,
    responses={409: {"description": "`subscription_past_due`: pay first"}},
)
def preview_subscription(
    body: PlanIn, principal: CurrentPrincipal, platform: PlatformDep
) -> SubscriptionPreviewOut:
    """What subscribing (without a subscription) or changing to ``plan``
    would charge and grant now, and what the next renewal charges; nothing
    is charged or written. Refused as the change itself would be."""
    with platform.db.read() as conn:
        customer = platform.billing.customer(conn, principal.user.id)
        preview = platform.billing.subscriptions.preview(conn, customer, body.plan)
    return SubscriptionPreviewOut(
        plan=preview.plan,
        change=preview.change,
        amount_cents=preview.amount_cents,
        currency=platform.catalogs.base.currency,
        credits_now=preview.credits_now,
        takes_effect=preview.takes_effect,
        renews_at=preview.renews_at,
        renews_amount_cents=preview.renews_amount_cents,
        prorated_at=preview.prorated_at,
    )


@router.delete("/subscription", response_model=SubscriptionState, responses=_NO_SUBSCRIPTION)
def cancel_subscription(principal: CurrentPrincipal, platform: PlatformDep) -> SubscriptionState:
    """Cancel at the period end; then Free. Credits already granted stay until they expire."""
    with platform.db.write() as conn:
        customer = platform.billing.customer(conn, principal.user.id)
        return _state(platform, platform.billing.subscriptions.cancel(conn, customer))


@router.post(
    "/subscription/pay",
    response_model=SubscriptionState,
    responses={
        **_NO_SUBSCRIPTION,
        **_PAYMENT,
        409: {"description": "`nothing_to_pay`: the subscription is not past due"},
    },
)
def pay_subscription(principal: CurrentPrincipal, platform: PlatformDep) -> SubscriptionState:
    """Pay the failed renewal of a past-due subscription: active again, with
    the period's credits."""
    declines = declines_counted(platform, principal, what="renewal", item="past_due")
    with declines, platform.db.write() as conn:
        customer = platform.billing.customer(conn, principal.user.id)
        return _state(platform, platform.billing.subscriptions.pay(conn, customer))


@router.post(
    "/credit-purchases",
    status_code=201,
    response_model=CreditPurchaseOut | CheckoutOut,
    responses={**_PAYMENT, 200: {"description": "A hosted checkout: pay at `checkout_url`"}},
)
def buy_credits(
    body: PackIn,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    platform: PlatformDep,
) -> CreditPurchaseOut | CheckoutOut:
    """Buy a credit pack, on any plan: added to your balance once paid; never
    expires unless the operator configured a lifetime."""
    # With an Idempotency-Key the purchase itself is idempotent: a retry after
    # a lost answer never charges twice, even if the first run was cut short.
    http_key = getattr(request.state, "idempotency_key", None)
    key = hashlib.sha256(http_key.encode()).hexdigest()[:32] if http_key else None
    declines = declines_counted(platform, principal, what="pack", item=body.pack)
    with declines, platform.db.write() as conn:
        customer = platform.billing.customer(conn, principal.user.id)
        result = platform.billing.packs.buy(conn, customer, body.pack, idempotency_key=key)
    if isinstance(result, Checkout):
        response.status_code = 200
        return CheckoutOut(checkout_url=result.url)
    return shape(CreditPurchaseOut, result)


@router.get("/payments", response_model=Page[PaymentOut])
def list_payments(
    principal: CurrentPrincipal,
    platform: PlatformDep,
    paging: PageQuery,
) -> Page[PaymentOut]:
    """What you paid, when, for what, and the credits it granted; newest first."""
    limit, cursor = paging.limit, paging.cursor
    before = decode_cursor(cursor) if cursor else None
    with platform.db.read() as conn:
        found = platform.billing.payments.history(
            conn, principal.user.id, limit=limit + 1, before=before
        )
    more = len(found) > limit
    found = found[:limit]
    return Page[PaymentOut](
        data=[_payment_out(platform.catalogs.base, payment) for payment in found],
        next_cursor=encode_cursor(found[-1].id) if more else None,
    )


@router.get(
    "/payments/{payment_id}/receipt",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}, "description": "The receipt, a printable page"},
        303: {"description": "A browser without a session: to the login page, and back"},
        404: {"description": "No such payment of yours (`not_found`)"},
        409: {"description": "`no_receipt`: the payment failed, nothing was charged"},
    },
)
def payment_receipt(
    payment_id: Annotated[str, Path(max_length=64)], request: Request, platform: PlatformDep
) -> Response:
    """Your payment's numbered receipt, as a page that prints well (A4):
    the seller, you, what was bought, the amount, the date, the credits
    granted, how it was paid, and Stripe's hosted invoice when Stripe took
    it. Only the payer sees it: anybody else's payment is `not_found`."""
    principal = _receipt_viewer(request, platform)
    if principal is None:
        back = urlencode({"next": receipt_path(payment_id)})
        return RedirectResponse(f"/login?{back}", status_code=303)
    with platform.db.read() as conn:
        receipt = platform.billing.receipts.receipt(conn, principal.user.id, payment_id)
    settings = platform.settings
    payment = receipt.payment
    context = {
        "title": f"Receipt {receipt.number}",
        "receipt": receipt,
        "payment": payment,
        "seller": settings.company_name or "PlasmaArt",
        "seller_address": settings.company_address,
        "support_email": settings.support_email,
        "purchase": receipt_words.purchase(receipt),
        "period": receipt_words.period(receipt),
        "amount": receipt_words.money(payment.amount_cents, payment.currency),
        "paid_through": receipt_words.paid_through(payment.backend),
    }
    return render(request, "receipt.html", context)


def _receipt_viewer(request: Request, platform: Platform) -> Principal | None:
    """Who asks for a receipt (a session or an API key; a suspended account
    too: it is a read). None: a browser without a live session, which is
    sent to log in and back (the receipt's link comes by mail); an API
    client gets 401."""
    try:
        principal = authenticate(request, platform)
    except Unauthenticated:
        if not prefers_html(request.headers.get("accept", "")):
            raise
        return None
    if principal is None:
        if prefers_html(request.headers.get("accept", "")):
            return None
        raise Unauthenticated("log in or send 'Authorization: Bearer <api key>'")
    return principal


# -- the sandbox's admin controls (404 unless billing is the sandbox) ---------


@router.post("/admin/clock/advance", response_model=ClockOut, tags=["admin"])
def advance_clock(body: ClockAdvanceIn, admin: AdminPrincipal, platform: PlatformDep) -> ClockOut:
    """Move the sandbox test clock forward for every process, then run what
    fell due at once: renewals, failed payments, downgrades and cancellations
    at period ends, grace periods, expiries."""
    advanced = sandbox_controls.advance_test_clock(
        platform.db,
        platform.billing,
        platform.ledger,
        platform.clock,
        days=body.days,
        actor=admin.user.id,
    )
    report, expired = advanced.billing, advanced.expired
    return ClockOut(
        now=advanced.now,
        offset_days=advanced.offset / timedelta(days=1),
        renewed=report["renewed"],
        downgraded=report["downgraded"],
        payment_failed=report["payment_failed"],
        canceled=report["canceled"],
        grace_ended=report["grace_ended"],
        expired_lots=expired.lots,
        expired_credits=expired.credits,
    )


@router.post(
    "/admin/users/{user_id}/billing/sandbox-card", response_model=SandboxCardOut, tags=["admin"]
)
def set_sandbox_card(
    user_id: str, body: SandboxCardIn, admin: AdminPrincipal, platform: PlatformDep
) -> SandboxCardOut:
    """Make the user's sandbox card decline every charge (renewals go past
    due, purchases answer 402), or succeed again; ``requires_action``: its
    off-session charges (auto top-ups) ask the customer to authenticate."""
    with platform.db.write() as conn:
        requires_action = sandbox_controls.set_sandbox_card(
            conn,
            platform.billing,
            platform.accounts,
            user_id,
            declines=body.declines,
            requires_action=body.requires_action,
            actor=admin.user.id,
            now=platform.clock.now(),
        )
    return SandboxCardOut(user_id=user_id, declines=body.declines, requires_action=requires_action)

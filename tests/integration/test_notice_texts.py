"""Every notice's words, on SQLite and PostgreSQL: each cause, made through
the service that causes it, queues exactly this title, body and data.

The texts are pinned as they were before they moved into ``notify`` (issue
16), so the move changed no word a user reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.catalog.changes import CatalogChange
from plasmaart.changes.notices import CatalogChangeNotice
from plasmaart.clock import ManualClock
from plasmaart.db.tables import notification_outbox
from plasmaart.outbox import TITLE_LENGTH
from plasmaart.platform import Platform
from plasmaart.worker import Worker, run_notifications
from tests.support.accounts import TestUser, make_user

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)


def queued(platform: Platform, user: TestUser) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, title, body, data) of every notice queued for ``user``, in order
    (not the receipts of payments: tests/integration/test_receipts.py)."""
    with platform.db.read() as conn:
        rows = conn.execute(
            select(notification_outbox)
            .where(
                notification_outbox.c.user_id == user.id,
                notification_outbox.c.kind != "billing.receipt",
            )
            .order_by(notification_outbox.c.created_at, notification_outbox.c.cause_key)
        ).all()
    return [(row.kind, row.title, row.body, json.loads(row.data)) for row in rows]


def test_account_notices(platform: Platform, clock: ManualClock) -> None:
    kai = make_user(platform, "kai@example.com")
    clock.set(JAN_1 + timedelta(hours=9, minutes=5))
    with platform.db.write() as conn:
        assert platform.accounts.warn_of_signup_attempt(conn, "Kai@Example.com")
    clock.advance(timedelta(minutes=1))
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, kai.id)
        account = platform.accounts.set_status(
            conn, account, "suspended", actor="admin", reason="spam floods"
        )
    clock.advance(timedelta(minutes=1))
    with platform.db.write() as conn:
        platform.accounts.set_status(conn, account, "active", actor="admin", reason=None)
    assert queued(platform, kai) == [
        (
            "account.signup_attempt",
            "Someone tried to sign up with your address",
            "Someone tried to create a new PlasmaArt account with kai@example.com on "
            "2026-01-01 at 09:05 UTC. This address already has an account, so nothing "
            "was created and your account is unchanged. If it was you, log in with your "
            "password instead. If it was not you, you can ignore this message.",
            {"email": "kai@example.com"},
        ),
        (
            "account.suspended",
            "Your account is suspended",
            "Your account was suspended: spam floods. It is read-only: you can still log "
            "in, see your balance, payments and generations, download your outputs and "
            "cancel your subscription, but not generate or buy. Queued generations were "
            "canceled with their credits released, and your subscription will not renew "
            "while the account is suspended. Contact support if you think this is a "
            "mistake.",
            {"status": "suspended"},
        ),
        (
            "account.reinstated",
            "Your account is reinstated",
            "Your account is active again; you can generate as before. A subscription "
            "still in its period renews as usual, unless you canceled it.",
            {"status": "active"},
        ),
    ]


def test_billing_notices(platform: Platform, clock: ManualClock) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    clock.set(FEB_1)
    Worker(platform).run_once()
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, kai.id, declines=True)
    clock.set(MAR_1)
    Worker(platform).run_once()
    notices = [notice for notice in queued(platform, kai) if notice[0].startswith("billing.")]
    # The renewal's notice is its receipt too: its words, then the receipt's.
    renewal_words, receipt_words = notices[0][2].split("\n\n", 1)
    assert receipt_words.startswith("Receipt number: PA-000002\n")
    assert [
        (*notice[:2], renewal_words if n == 0 else notice[2]) for n, notice in enumerate(notices)
    ] == [
        (
            "billing.renewed",
            "Your Starter subscription renewed",
            "2000 credits were added for the period ending 2026-03-01; 19.00 USD was charged.",
        ),
        (
            "billing.payment_failed",
            "Payment for your Starter subscription failed",
            "The renewal payment was declined (the sandbox card declines (an admin set it "
            "to)). Pay within 7 days to keep your plan; no new monthly credits are granted "
            "until then.",
        ),
    ]
    renewed, failed = (notice[3] for notice in notices)
    assert set(renewed) == {"subscription_id", "plan", "payment_id", "receipt_number"}
    assert renewed["plan"] == "starter"
    assert failed == {"subscription_id": renewed["subscription_id"], "plan": "starter"}


def test_credit_notices(platform: Platform, clock: ManualClock) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")  # 2000, expiring Feb 1
    clock.set(FEB_1 - timedelta(days=3))
    run_notifications(platform, "worker-1")
    with platform.db.write() as conn:
        platform.ledger.hold(conn, kai.wallet_id, 1990, idempotency_key="spend")
    run_notifications(platform, "worker-1")
    [expiring, low] = queued(platform, kai)
    assert expiring[:3] == (
        "credits.expiring",
        "2000 credits expire on 2026-02-01",
        "2000 of your credits expire at 2026-02-01 00:00 UTC. Credits are spent "
        "soonest-expiring first, so generating before then uses them.",
    )
    assert set(expiring[3]) == {"lot_id", "credits", "expires_at"}
    assert (expiring[3]["credits"], expiring[3]["expires_at"]) == (
        2000,
        "2026-02-01T00:00:00+00:00",
    )
    assert low == (
        "credits.low_balance",
        "Your balance is low: 10 credits",
        "You have 10 credits available, below 50. Buy a credit pack or change your "
        "plan to keep generating.",
        {"available": 10, "threshold": 50},
    )


def test_catalog_change_notices(platform: Platform, clock: ManualClock) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    carol = make_user(platform, "carol@example.com", plan="pro")
    effective = JAN_1 + timedelta(days=14, hours=12)

    def schedule(target: str, target_id: str, field: str, value: Any) -> str:
        with platform.db.write() as conn:
            return platform.catalog_changes.schedule(
                conn,
                admin_id=admin.id,
                target=target,
                target_id=target_id,
                field=field,
                value=value,
                effective_at=effective,
            ).id

    price = schedule("model", "veo3", "credits", 900)
    withdrawal = schedule("model", "flux-dev", "available", False)
    pro_price = schedule("plan", "pro", "price_cents", 5900)
    tiers = schedule("plan", "pro", "model_tiers", ["image", "video-medium"])
    run_notifications(platform, "worker-1")
    with platform.db.write() as conn:
        platform.catalog_changes.cancel(conn, withdrawal, actor=admin.id)
    clock.set(effective - timedelta(hours=23))
    run_notifications(platform, "worker-1")
    when = "2026-01-15 12:00 UTC"
    texts = {(n[3]["change_id"], n[3]["stage"]): (n[1], n[2]) for n in queued(platform, carol)}
    assert {n[0] for n in queued(platform, carol)} == {"catalog.change"}
    veo3 = (
        "Veo3 will cost 900 credits per output",
        f"From {when}, Veo3 costs 900 credits per output (now 800). Generations "
        "submitted before then keep the price they were quoted.",
    )
    flux = (
        "Flux Dev will be withdrawn",
        f"From {when}, Flux Dev takes no new generations. Generations submitted before "
        "then still run, at the price they were quoted.",
    )
    terms = (
        "Subscribers keep the current terms until the end of the billing period running "
        "then; the new terms apply from their next period."
    )
    pro = (
        "The Pro plan changes: price cents",
        f"The Pro plan's price cents changes from 49.00 USD a month to 59.00 USD a month "
        f"on {when}. {terms}",
    )
    pro_tiers = (
        "The Pro plan changes: model tiers",
        "The Pro plan's model tiers changes from image, video-medium, video-premium to "
        f"image, video-medium on {when}. {terms}",
    )
    assert texts == {
        (price, "announced"): veo3,
        (price, "reminder"): ("Tomorrow: veo3 will cost 900 credits per output", veo3[1]),
        (withdrawal, "announced"): flux,
        (withdrawal, "withdrawn"): (
            "Withdrawn: flux Dev will be withdrawn",
            "The change announced for 2026-01-15 12:00 UTC will not happen; nothing changes.",
        ),
        (pro_price, "announced"): pro,
        (pro_price, "reminder"): ("Tomorrow: the Pro plan changes: price cents", pro[1]),
        (tiers, "announced"): pro_tiers,
        (tiers, "reminder"): ("Tomorrow: the Pro plan changes: model tiers", pro_tiers[1]),
    }
    data = {(n[3]["change_id"], n[3]["stage"]): n[3] for n in queued(platform, carol)}
    assert data[(withdrawal, "withdrawn")] == {"change_id": withdrawal, "stage": "withdrawn"}
    assert data[(price, "reminder")] == {
        "change_id": price,
        "target": "model",
        "id": "veo3",
        "field": "credits",
        "from": 800,
        "to": 900,
        "effective_at": "2026-01-15T12:00:00+00:00",
        "stage": "reminder",
    }


def test_a_long_title_is_shortened_to_the_column(platform: Platform) -> None:
    kai = make_user(platform, "kai@example.com")
    name = "A model with a very long name " * 10
    change = CatalogChange("chg_1", "model", "long", "credits", 2, FEB_1)
    fact = CatalogChangeNotice(change, "announced", name=name, previous=1, currency="usd")
    with platform.db.write() as conn:
        assert platform.outbox.enqueue(conn, cause_key="long", user_id=kai.id, fact=fact)
    [(_kind, title, body, _data)] = queued(platform, kai)
    assert len(title) == TITLE_LENGTH
    assert title == f"{name} will cost 2 credits per output"[: TITLE_LENGTH - 1] + "…"
    assert body.startswith(f"From 2026-02-01 00:00 UTC, {name} costs 2 credits")

"""Receipts (docs/billing.md#receipts), on SQLite and PostgreSQL: every
succeeded payment of every kind gets the next receipt number, without gaps
or repeats even when payments race; one receipt mail per payment however
often the billing clock runs; the printable receipt page, only for the
payer, never for a failed payment; and, under Stripe (the local fake, its
events signed as Stripe signs them), the hosted invoice linked from the
receipt, and the customer portal reachable from the Plan & billing page."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from plasmaart.billing.backends import Customer
from plasmaart.billing.receipts import receipt_label
from plasmaart.billing.sandbox import SandboxBackend
from plasmaart.clock import ManualClock
from plasmaart.db.tables import notification_outbox, payments, receipt_numbers
from plasmaart.notify.email import StoredMail
from plasmaart.platform import Platform
from plasmaart.web.dashboard.pages import CONTENT_SECURITY_POLICY
from plasmaart.worker import Worker, outbox_delivery
from tests.support.accounts import PASSWORD, TestUser, make_user
from tests.support.fake_stripe import FakeStripe
from tests.support.platforms import api_client, running_platform, settings_for

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
RECEIPT_SUBJECT = "Your PlasmaArt receipt"
PROBLEM_JSON = "application/problem+json"


# -- helpers -------------------------------------------------------------------


def own_payments(platform: Platform, who: TestUser) -> list[Any]:
    """The user's payments, oldest first."""
    with platform.db.read() as conn:
        return list(reversed(platform.billing.payments.history(conn, who.id, limit=200)))


def numbers_of(platform: Platform) -> list[int]:
    """Every receipt number given, in order, checked against the payments."""
    with platform.db.read() as conn:
        given = conn.execute(
            select(receipt_numbers.c.number, receipt_numbers.c.payment_id).order_by(
                receipt_numbers.c.number
            )
        ).all()
        numbered = dict(
            conn.execute(
                select(payments.c.id, payments.c.receipt_number).where(
                    payments.c.status == "succeeded"
                )
            ).all()
        )
    assert {payment_id: number for number, payment_id in given} == numbered
    return [number for number, _ in given]


def deliver(platform: Platform) -> list[StoredMail]:
    """Deliver the outbox (no SMTP: into the mail folder); every mail so far."""
    outbox_delivery(platform).run("test")
    return platform.mail_folder.messages()


def mails_to(platform: Platform, who: TestUser, subject: str) -> list[StoredMail]:
    return [m for m in deliver(platform) if m.to == who.email and subject in m.subject]


def decline_cards(platform: Platform, who: TestUser) -> None:
    sandbox = platform.billing.backend
    assert isinstance(sandbox, SandboxBackend)
    with platform.db.write() as conn:
        sandbox.set_card(conn, who.id, declines=True)


def buy(client: TestClient, who: TestUser, pack: str = "pack-1000") -> dict[str, Any]:
    response = client.post("/v1/credit-purchases", json={"pack": pack}, headers=who.auth)
    assert response.status_code == 201, response.text
    found: dict[str, Any] = response.json()
    return found


def receipt(client: TestClient, who: TestUser | None, payment_id: str, **headers: str) -> Any:
    auth = {} if who is None else who.auth
    return client.get(
        f"/v1/payments/{payment_id}/receipt",
        headers={**auth, **headers},
        follow_redirects=False,
    )


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == code


# -- numbering -------------------------------------------------------------------


def test_every_kind_of_succeeded_payment_is_numbered_in_turn(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    clock.set(JAN_1)
    kai = make_user(platform, "kai@example.com")
    subscribed = client.post("/v1/subscription", json={"plan": "starter"}, headers=kai.auth)
    assert subscribed.status_code == 201, subscribed.text
    buy(client, kai)
    clock.set(JAN_16)
    upgraded = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
    assert upgraded.status_code == 200, upgraded.text
    clock.set(FEB_1)
    Worker(platform).run_once()  # the renewal
    decline_cards(platform, kai)
    clock.set(MAR_1)
    Worker(platform).run_once()  # a declined renewal: a failed payment
    paid = own_payments(platform, kai)
    assert [(p.kind, p.status) for p in paid] == [
        ("subscription", "succeeded"),
        ("pack", "succeeded"),
        ("upgrade", "succeeded"),
        ("renewal", "succeeded"),
        ("renewal", "failed"),
    ]
    assert [p.receipt_number for p in paid] == [1, 2, 3, 4, None]
    assert numbers_of(platform) == [1, 2, 3, 4]
    # The payments list names each receipt; a failed payment has none.
    listed = client.get("/v1/payments", headers=kai.auth).json()["data"]
    assert [(p["receipt_number"], p["receipt_url"]) for p in reversed(listed)] == [
        *[
            (f"PA-00000{n}", f"/v1/payments/{p.id}/receipt")
            for n, p in zip(range(1, 5), paid[:4], strict=True)
        ],
        (None, None),
    ]


def test_receipt_label() -> None:
    assert receipt_label(42) == "PA-000042"
    assert receipt_label(1_234_567) == "PA-1234567"


def test_numbers_stay_consecutive_and_unique_when_payments_race(
    platform: Platform, clock: ManualClock
) -> None:
    clock.set(JAN_1)
    buyers = [make_user(platform, f"buyer{n}@example.com") for n in range(6)]
    make_user(platform, "subscriber@example.com", plan="starter")  # number 1
    start = threading.Barrier(len(buyers), timeout=30)

    def purchases(who: TestUser) -> int:
        start.wait()
        for round_ in range(3):
            with platform.db.write() as conn:
                customer = Customer(who.id, who.wallet_id, who.email)
                platform.billing.packs.buy(
                    conn, customer, "pack-1000", idempotency_key=f"race-{round_}"
                )
        return 3

    with ThreadPoolExecutor(max_workers=len(buyers)) as pool:
        done = [pool.submit(purchases, who) for who in buyers]
        assert sum(future.result(timeout=120) for future in done) == 18
    assert numbers_of(platform) == list(range(1, 20))
    for who in buyers:
        assert len({p.receipt_number for p in own_payments(platform, who)}) == 3


def test_a_rolled_back_payment_leaves_no_gap(platform: Platform, clock: ManualClock) -> None:
    """A number taken by a transaction that rolls back is given again."""
    clock.set(JAN_1)
    kai = make_user(platform, "kai@example.com", plan="starter")  # number 1
    customer = Customer(kai.id, kai.wallet_id, kai.email)

    def lost_purchase() -> None:
        with platform.db.write() as conn:
            platform.billing.packs.buy(conn, customer, "pack-1000", idempotency_key="lost")
            assert numbers_of_in(conn) == [1, 2]
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        lost_purchase()
    with platform.db.write() as conn:
        platform.billing.packs.buy(conn, customer, "pack-1000", idempotency_key="kept")
    assert numbers_of(platform) == [1, 2]


def numbers_of_in(conn: Any) -> list[int]:
    return [int(n) for n in conn.execute(select(receipt_numbers.c.number)).scalars()]


# -- the mail ----------------------------------------------------------------------


def test_a_pack_mails_its_receipt_once(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com")
    bought = buy(client, kai)
    [mail] = mails_to(platform, kai, RECEIPT_SUBJECT)
    [payment] = own_payments(platform, kai)
    assert payment.id == bought["payment_id"]
    assert mail.subject == "Your PlasmaArt receipt PA-000001"
    url = f"{platform.settings.public_base_url}/v1/payments/{payment.id}/receipt"
    for line in (
        "Receipt number: PA-000001",
        f"Date: {payment.created_at:%Y-%m-%d %H:%M} UTC",
        "For: Credit pack: 1,000 credits",
        "Amount paid: 12.00 USD",
        "Credits granted: 1,000",
        "Paid with: Sandbox (a test payment: no money moved)",
        url,
    ):
        assert line in mail.text, line
    assert mail.html is not None
    assert f'href="{url}"' in mail.html
    assert "Stripe" not in mail.text.replace("through Stripe", "")
    # A letter: mail only, nothing in the app; asked again, nothing more.
    assert client.get("/v1/notifications", headers=kai.auth).json()["data"] == []
    assert mails_to(platform, kai, RECEIPT_SUBJECT) == [mail]


def test_one_receipt_mail_per_payment_when_the_clock_runs_twice(
    platform: Platform, clock: ManualClock
) -> None:
    clock.set(JAN_1)
    kai = make_user(platform, "kai@example.com", plan="starter")
    clock.set(FEB_1)
    for _ in range(2):
        Worker(platform).run_once()
    # The clock running again (two workers, a retry) renews nothing more.
    with platform.db.write() as conn:
        sub = platform.billing.plans.subscription(conn, kai.wallet_id)
        assert sub is not None
        platform.billing.subscriptions.renewal_paid(conn, sub.id, period_end=FEB_1)
        assert platform.billing.subscriptions.advance_subscription(conn, sub.id) is None
    subscription, renewal = own_payments(platform, kai)
    assert (subscription.kind, renewal.kind) == ("subscription", "renewal")
    # Issued again (a retry reaching it twice): the same number, no new mail.
    with platform.db.write() as conn:
        again = platform.billing.receipts.issue(conn, subscription, plan=None)
    assert again.receipt_number == subscription.receipt_number == 1
    mails = [m for m in deliver(platform) if m.to == kai.email]
    # The subscription's receipt letter, and the renewal's notice, which is
    # its receipt: one mail each.
    assert sorted(m.subject for m in mails) == [
        "Your PlasmaArt receipt PA-000001",
        "Your Starter subscription renewed",
    ]
    renewed = next(m for m in mails if "renewed" in m.subject)
    assert "Receipt number: PA-000002" in renewed.text
    assert f"/v1/payments/{renewal.id}/receipt" in renewed.text
    assert "For: Starter plan, monthly renewal" in renewed.text
    assert "Period: 2026-02-01 to 2026-03-01" in renewed.text
    with platform.db.read() as conn:
        causes = conn.execute(
            select(notification_outbox.c.cause_key, notification_outbox.c.in_app)
        ).all()
    assert sorted(causes) == sorted(
        [(f"receipt:{subscription.id}", False), (f"receipt:{renewal.id}", True)]
    )
    # In the app: the renewal notice, carrying its receipt's number.
    with platform.db.read() as conn:
        notices = platform.notifications.list(conn, kai.id, limit=10).items
    assert [(n.kind, n.data.get("receipt_number")) for n in notices] == [
        ("billing.renewed", "PA-000002")
    ]
    # The Notifications page links it.
    with api_client(platform) as client:
        login = client.post("/v1/auth/login", json={"email": kai.email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        page = client.get("/notifications").text
    assert f'<a href="/v1/payments/{renewal.id}/receipt">View receipt PA-000002</a>' in page


# -- the page -------------------------------------------------------------------------


def test_the_receipt_page(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com")
    bought = buy(client, kai, "pack-3000")
    response = receipt(client, kai, bought["payment_id"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = response.text
    [payment] = own_payments(platform, kai)
    for shown in (
        "PA-000001",
        "Credit pack: 3,000 credits",
        "33.00 USD",
        "3,000",
        "kai@example.com",
        "PlasmaArt",
        platform.settings.support_email,
        payment.created_at.strftime("%B %d, %Y, %H:%M"),
        "Sandbox (a test payment: no money moved)",
        payment.id,
    ):
        assert shown in page, shown
    # CSP-safe and printable: its own stylesheet, with a print section; no
    # inline style or script, no navigation of the dashboard.
    assert '<link rel="stylesheet" href="/assets/receipt.css' in page
    assert not re.search(r"<style|style=|<script(?![^>]*\bsrc=)", page)
    assert "mainnav" not in page
    stylesheet = client.get("/assets/receipt.css")
    assert stylesheet.status_code == 200
    assert "@media print" in stylesheet.text
    assert "size: A4" in stylesheet.text
    assert client.get("/assets/js/receipt.js").status_code == 200


def test_the_seller_is_the_operator(database_url: str, tmp_path: Path, clock: ManualClock) -> None:
    settings = settings_for(
        database_url,
        tmp_path / "var",
        company_name="Neon Studios Ltd",
        company_address="1 Main Street, Springfield",
        support_email="billing@neon.example",
    )
    with running_platform(settings, clock) as operated, api_client(operated) as client:
        kai = make_user(operated, "kai@example.com")
        bought = buy(client, kai)
        page = receipt(client, kai, bought["payment_id"]).text
    assert "Neon Studios Ltd" in page
    assert "1 Main Street, Springfield" in page
    assert "billing@neon.example" in page


def test_only_the_payer_sees_a_receipt(platform: Platform, client: TestClient) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    member = make_user(platform, "member@example.com")
    other = make_user(platform, "other@example.com")
    with platform.db.write() as conn:
        team = platform.teams.create_team(conn, platform.accounts.get(conn, owner.id), "Crew")
        invited = platform.teams.invite(conn, team.id, owner.id, member.email)
    with platform.db.write() as conn:
        platform.teams.accept_invitation(
            conn, invited.token, platform.accounts.get(conn, member.id)
        )
    [paid] = own_payments(platform, owner)
    assert receipt(client, owner, paid.id).status_code == 200
    unknown = receipt(client, other, "pay_unknown")
    for who in (other, member):  # a team shares a wallet, not its owner's payments
        refused = receipt(client, who, paid.id)
        assert_refused(refused, 404, "not_found")
        assert owner.email not in refused.text
        assert refused.json()["title"] == unknown.json()["title"]
    assert_refused(unknown, 404, "not_found")
    # Without credentials: 401 for a client; a browser logs in, then comes back.
    assert_refused(receipt(client, None, paid.id), 401, "unauthenticated")
    browser = receipt(client, None, paid.id, accept="text/html,*/*;q=0.8")
    assert browser.status_code == 303
    assert browser.headers["location"] == (f"/login?next=%2Fv1%2Fpayments%2F{paid.id}%2Freceipt")


def test_a_failed_payment_has_no_receipt(
    platform: Platform, client: TestClient, clock: ManualClock
) -> None:
    clock.set(JAN_1)
    kai = make_user(platform, "kai@example.com", plan="starter")
    decline_cards(platform, kai)
    clock.set(FEB_1)
    Worker(platform).run_once()
    failed = own_payments(platform, kai)[-1]
    assert (failed.status, failed.receipt_number) == ("failed", None)
    refused = receipt(client, kai, failed.id)
    assert_refused(refused, 409, "no_receipt")
    assert "failed" in refused.json()["detail"]
    assert numbers_of(platform) == [1]


def test_a_suspended_account_still_reads_its_receipts(
    platform: Platform, client: TestClient
) -> None:
    kai = make_user(platform, "kai@example.com")
    bought = buy(client, kai)
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, kai.id)
        platform.accounts.set_status(conn, account, "suspended", actor="admin", reason="test")
    assert receipt(client, kai, bought["payment_id"]).status_code == 200


def test_the_billing_page_links_each_receipt(platform: Platform, client: TestClient) -> None:
    kai = make_user(platform, "kai@example.com", plan="starter")
    decline_cards(platform, kai)
    refused = client.post("/v1/credit-purchases", json={"pack": "pack-1000"}, headers=kai.auth)
    assert refused.status_code == 402
    login = client.post("/v1/auth/login", json={"email": kai.email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    page = client.get("/billing").text
    [paid] = own_payments(platform, kai)
    assert f'<a href="/v1/payments/{paid.id}/receipt" data-receipt="{paid.id}">PA-000001</a>' in (
        page
    )
    assert page.count("data-receipt=") == 1  # the declined purchase wrote no payment
    # The sandbox has no customer portal: no button for it.
    assert "Manage billing on Stripe" not in page
    # The cookie session opens the receipt too (the link's usual way in).
    assert client.get(f"/v1/payments/{paid.id}/receipt").status_code == 200


# -- Stripe ------------------------------------------------------------------------------


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeStripe]:
    with FakeStripe(clock) as server:
        yield server


@pytest.fixture
def stripe_platform(
    database_url: str, clock: ManualClock, tmp_path: Path, fake: FakeStripe
) -> Iterator[Platform]:
    settings = settings_for(database_url, tmp_path / "var", **fake.platform_settings())
    with running_platform(settings, clock) as built:
        yield built


def signed_delivery(client: TestClient, fake: FakeStripe, event: dict[str, Any]) -> str:
    payload, headers = fake.signed(event)
    response = client.post("/v1/webhooks/stripe", content=payload, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["outcome"])


def stripe_checkout(client: TestClient, path: str, body: dict[str, str], who: TestUser) -> str:
    response = client.post(path, json=body, headers=who.auth)
    assert response.status_code == 200, response.text
    return str(response.json()["checkout_url"].rsplit("/", 1)[1])


def test_stripe_receipts_link_the_hosted_invoice(
    stripe_platform: Platform, clock: ManualClock, fake: FakeStripe
) -> None:
    platform = stripe_platform
    clock.set(JAN_1)
    kai = make_user(platform, "kai@example.com")
    with api_client(platform) as client:
        # A subscription: the completion first, its invoice fetched.
        session = stripe_checkout(client, "/v1/subscription", {"plan": "starter"}, kai)
        for event in fake.pay_checkout(session):
            signed_delivery(client, fake, event)
        stripe_sub = fake.subscription_of(session)
        first_invoice = fake.sessions[session]["invoice"]
        assert fake.calls_to("GET", f"/v1/invoices/{first_invoice}")
        # A pack: Checkout asked for an invoice; its invoice.paid first this time.
        pack = stripe_checkout(client, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
        created = fake.calls_to("POST", "/v1/checkout/sessions")[-1]
        assert created.params["invoice_creation"]["enabled"] == "true"
        completed, invoice_paid = fake.pay_checkout(pack)
        assert signed_delivery(client, fake, invoice_paid) == "ignored"  # no payment yet
        fake.outage = True  # Stripe cannot be asked for the invoice now ...
        assert signed_delivery(client, fake, completed) == "applied"
        fake.outage = False
        pack_invoice = fake.sessions[pack]["invoice"]
        # ... the invoice's event, delivered again, brings its page.
        again = fake.event("invoice.paid", fake.invoices[pack_invoice])
        assert signed_delivery(client, fake, again) == "applied"
        # An upgrade (its invoice expanded in the answer) and a renewal.
        clock.set(JAN_16)
        upgraded = client.patch("/v1/subscription", json={"plan": "pro"}, headers=kai.auth)
        assert upgraded.status_code == 200, upgraded.text
        upgrade_invoice = fake.latest_invoice(stripe_sub)["id"]
        clock.set(FEB_1)
        for event in fake.renew(stripe_sub):
            signed_delivery(client, fake, event)
        renewal_invoice = fake.latest_invoice(stripe_sub)["id"]
        paid = own_payments(platform, kai)
        invoices = [first_invoice, pack_invoice, upgrade_invoice, renewal_invoice]
        assert [(p.kind, p.receipt_number) for p in paid] == [
            ("subscription", 1),
            ("pack", 2),
            ("upgrade", 3),
            ("renewal", 4),
        ]
        urls = [fake.invoices[invoice]["hosted_invoice_url"] for invoice in invoices]
        assert all(url.startswith(f"{fake.url}/invoices/in_") for url in urls)
        assert [p.hosted_invoice_url for p in paid] == urls
        # The page links it, and so does the payments list.
        for payment, url in zip(paid, urls, strict=True):
            page = receipt(client, kai, payment.id).text
            assert f'href="{url}"' in page
            assert "Card, through Stripe" in page
        listed = client.get("/v1/payments", headers=kai.auth).json()["data"]
        assert [p["hosted_invoice_url"] for p in reversed(listed)] == urls
    # The mails name it where it was known when the payment was made: all
    # but the pack's, whose invoice Stripe could not give then.
    texts = {m.subject: m.text for m in deliver(platform) if m.to == kai.email}
    assert urls[0] in texts["Your PlasmaArt receipt PA-000001"]
    assert "Stripe's invoice" not in texts["Your PlasmaArt receipt PA-000002"]
    assert urls[2] in texts["Your PlasmaArt receipt PA-000003"]
    assert urls[3] in texts["Your Pro subscription renewed"]


def test_the_customer_portal_from_the_billing_page(
    stripe_platform: Platform, fake: FakeStripe
) -> None:
    platform = stripe_platform
    kai = make_user(platform, "kai@example.com")
    with api_client(platform) as client:
        login = client.post("/v1/auth/login", json={"email": kai.email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        page = client.get("/billing").text
        assert 'data-url="/v1/billing/portal" data-success="redirect"' in page
        assert "Manage billing on Stripe" in page
        csrf = {"X-CSRF-Token": client.cookies["pa_csrf"]}
        # Never paid through Stripe: nothing to manage there yet.
        assert_refused(
            client.post("/v1/billing/portal", headers=csrf), 409, "billing_portal_unavailable"
        )
        session = stripe_checkout(client, "/v1/credit-purchases", {"pack": "pack-1000"}, kai)
        for event in fake.pay_checkout(session):
            signed_delivery(client, fake, event)
        portal = client.post("/v1/billing/portal", headers=csrf)
        assert portal.status_code == 200, portal.text
        assert portal.json()["url"].startswith(f"{fake.url}/portal/bps_")
        asked = fake.calls_to("POST", "/v1/billing_portal/sessions")[-1]
        assert asked.params["customer"] == fake.sessions[session]["customer"]

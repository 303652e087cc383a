"""The dashboard's page routes through the app (no browser): who gets which
page, where a login link may lead, that user text is escaped, the pages'
security headers, and the admin statistics."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from plasmaart.accounts import audit
from plasmaart.catalog import plan_models
from plasmaart.clock import ManualClock
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from plasmaart.stats import platform_stats
from plasmaart.web.dashboard.pages import safe_next
from plasmaart.web.dashboard.views import AUDIT_PAGE, HISTORY_PAGE
from plasmaart.worker import Worker
from tests.support.accounts import make_user

PAGES = (
    "/",
    "/create",
    "/generations",
    "/usage",
    "/billing",
    "/team",
    "/settings",
    "/notifications",
)


def test_anonymous_visitors_are_sent_to_log_in_and_back(client: TestClient) -> None:
    for path in (*PAGES, "/admin", "/admin/audit"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F"), path
    response = client.get("/usage?model=flux-dev", follow_redirects=False)
    assert response.headers["location"] == "/login?next=%2Fusage%3Fmodel%3Dflux-dev"


def test_pages_for_users_and_admin_only_for_admins(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "user@example.com", credits=3)
    admin = make_user(platform, "admin@example.com", admin=True)
    for path in PAGES:
        response = client.get(path, headers=user.auth)
        assert response.status_code == 200, path
        assert "user@example.com" in response.text
    assert client.get("/admin", headers=user.auth).status_code == 404
    answer = client.get("/admin?q=user", headers=admin.auth)
    assert answer.status_code == 200
    assert "user@example.com" in answer.text


@pytest.mark.parametrize(
    ("asked", "followed"),
    [
        ("/usage?model=flux-dev", "/usage?model=flux-dev"),
        ("/", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_next_only_ever_leads_to_a_local_path(asked: str | None, followed: str) -> None:
    assert safe_next(asked) == followed


def test_login_page_refuses_to_send_anyone_elsewhere(
    client: TestClient, platform: Platform
) -> None:
    page = client.get("/login?next=https://evil.example/steal")
    assert page.status_code == 200
    assert 'data-next="/"' in page.text
    assert "evil.example" not in page.text
    user = make_user(platform, "user@example.com")
    # A signed-in visitor is sent straight on: to the local path only.
    away = client.get("/login?next=//evil.example", headers=user.auth, follow_redirects=False)
    assert (away.status_code, away.headers["location"]) == (303, "/")
    home = client.get("/login?next=/usage", headers=user.auth, follow_redirects=False)
    assert home.headers["location"] == "/usage"
    again = client.get("/signup?next=/login%3Fnext%3D/", headers=user.auth, follow_redirects=False)
    assert again.headers["location"] == "/"


def test_a_prompt_with_html_is_shown_as_text(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "user@example.com", credits=5)
    prompt = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
    with platform.db.write() as conn:
        platform.generations.submit(
            conn, platform.accounts.get(conn, user.id), GenerationRequest("flux-schnell", prompt)
        )
    for path in ("/", "/generations"):
        text = client.get(path, headers=user.auth).text
        assert "<script>alert" not in text, path
        assert "<img src=x" not in text, path
        assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in text, path


def test_pages_carry_security_headers(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "user@example.com")
    response = client.get("/", headers=user.auth)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    css = client.get("/assets/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert client.get("/assets/js/live.js").status_code == 200


def test_a_suspended_account_sees_why(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "user@example.com")
    with platform.db.write() as conn:
        found = platform.accounts.get(conn, user.id)
        platform.accounts.set_status(conn, found, "suspended", actor="usr_admin", reason="spam")
    # Read-only, not locked out: the page, under a banner saying why and
    # whom to write to.
    response = client.get("/", headers=user.auth)
    assert response.status_code == 200
    assert "Your account is suspended." in response.text
    assert "Reason: spam." in response.text
    assert f"mailto:{platform.settings.support_email}" in response.text


def test_usage_filter_errors_are_shown_beside_the_field(
    client: TestClient, platform: Platform
) -> None:
    user = make_user(platform, "user@example.com")
    response = client.get("/usage?since=someday&model=nope", headers=user.auth)
    assert response.status_code == 200
    assert "&#39;someday&#39; is not a date" in response.text
    assert "no model &#39;nope&#39;" in response.text


def test_admin_stats_count_queue_and_credits(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "user@example.com", credits=10)
    admin = make_user(platform, "admin@example.com", admin=True)
    with platform.db.write() as conn:
        for _ in range(2):
            platform.generations.submit(
                conn, platform.accounts.get(conn, user.id), GenerationRequest("flux-dev", "a")
            )
    with platform.db.read() as conn:
        stats = platform_stats(conn)
    assert stats.queue_depth == 2
    assert stats.jobs_by_state == {
        "queued": 2,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert (stats.credits_granted, stats.credits_consumed, stats.credits_expired) == (10, 0, 0)
    answer = client.get("/v1/admin/stats", headers=admin.auth)
    assert answer.status_code == 200
    assert answer.json()["queue_depth"] == 2
    assert client.get("/v1/admin/stats", headers=user.auth).status_code == 404


def test_admin_page_shows_abuse_flags_and_scheduled_changes(
    client: TestClient, platform: Platform
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    churner = make_user(platform, "churner@example.com")
    verdict = "clear"
    for attempt in range(20):
        with platform.db.write() as conn:
            verdict = platform.fairuse.record_signal(
                conn, churner.id, "clawback", {"payment": f"pay_{attempt}"}, subject=str(attempt)
            ).verdict
        if verdict != "clear":
            break
    assert verdict != "clear"
    with platform.db.write() as conn:
        platform.catalog_changes.schedule(
            conn,
            admin_id=admin.id,
            target="model",
            target_id="veo3",
            field="credits",
            value=900,
            effective_at=platform.clock.now() + timedelta(days=platform.settings.notice_days + 1),
        )
    page = client.get("/admin", headers=admin.auth).text
    assert "churner@example.com" in page
    assert "clawback: " in page
    assert "(payment pay_0)" in page
    assert page.count("Veo3: credits 800 → 900") == 2  # the banner and the admin's list
    # Everybody sees the banner.
    assert "Veo3: credits 800 → 900" in client.get("/", headers=churner.auth).text


def test_usage_history_pages_and_filters_by_model(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "busy@example.com", plan="studio")
    at_once = {"aspect_ratio": "16:9", "sandbox": {"delay_s": 0}}
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, user.id)
        for index in range(28):
            model = "flux-dev" if index % 10 == 0 else "flux-schnell"
            platform.generations.submit(
                conn, account, GenerationRequest(model, f"frame {index}", params=at_once)
            )
    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() == 28
    first = client.get("/usage", headers=user.auth).text
    assert first.count("<tr>") == 1 + HISTORY_PAGE  # the header row and a full page
    older = re.search(r'href="(/usage\?[^"]*cursor=[^"]+)"', first)
    assert older is not None
    second = client.get(html.unescape(older.group(1)), headers=user.auth).text
    assert second.count("<tr>") == 1 + 28 - HISTORY_PAGE
    assert "cursor=" not in second
    # A cursor no page handed out (a time in no UTC year) starts from the newest.
    odd = client.get("/usage?cursor=12|9999-12-31T23:00-05:00", headers=user.auth)
    assert odd.status_code == 200
    assert odd.text.count("<tr>") == 1 + HISTORY_PAGE
    # Three of them were Flux Dev: 5 credits each, the newest first.
    dev = client.get("/usage?model=flux-dev", headers=user.auth).text
    assert dev.count("<tr>") == 1 + 3
    assert dev.count(">Flux Dev</td>") == 3
    assert ">Flux Schnell</td>" not in dev


def test_admin_audit_page_filters_and_pages_the_log(client: TestClient, platform: Platform) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    carol = make_user(platform, "carol@example.com")
    start = platform.clock.now()
    with platform.db.write() as conn:
        audit.record(
            conn,
            actor=admin.id,
            action="user.suspend",
            target=carol.id,
            reason="<b>spam</b>",
            now=start,
            data={"email": "carol@example.com"},
        )
        for index in range(AUDIT_PAGE + 5):
            audit.record(
                conn,
                actor="cli",
                action="credits.adjust",
                target=carol.id,
                reason=None,
                now=start + timedelta(minutes=1 + index),
                data={"amount": index, "lots": {"a": 1}},
            )
    # Newest first: a full page of the CLI's grants, then the rest.
    first = client.get("/admin/audit", headers=admin.auth)
    assert first.status_code == 200
    assert "content-security-policy" in first.headers
    assert "<script>" not in first.text  # scripts only come from /assets
    assert first.text.count("data-audit-id=") == AUDIT_PAGE
    assert "amount:</span> 54" in first.text  # the newest
    assert "lots:</span> {&#34;a&#34;: 1}" in first.text
    assert "<code>user.suspend</code>" not in first.text
    older = re.search(r'href="(/admin/audit\?[^"]*cursor=[^"]+)"', first.text)
    assert older is not None
    second = client.get(html.unescape(older.group(1)), headers=admin.auth).text
    assert second.count("data-audit-id=") == 6
    assert "cursor=" not in second.split('aria-label="Audit log pages"')[1]  # the last page
    # The admin's suspension, with who it was by and about, its reason escaped.
    assert "&lt;b&gt;spam&lt;/b&gt;" in second
    assert (
        f'?actor={admin.id}" title="Only entries with this actor">admin@example.com</a>' in second
    )
    assert 'title="Only entries with this subject">carol@example.com</a>' in second
    # Filters, as the form sends them (empty fields filter nothing).
    by_admin = client.get(
        f"/admin/audit?actor={admin.id}&subject=&action=&since=&until=", headers=admin.auth
    ).text
    assert by_admin.count("data-audit-id=") == 1
    assert "<code>user.suspend</code>" in by_admin
    window = client.get(
        "/admin/audit",
        params={
            "action": "credits.adjust",
            "since": (start + timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M"),
            "until": (start + timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M"),
        },
        headers=admin.auth,
    ).text
    assert window.count("data-audit-id=") == 3  # minutes 3, 4 and 5: amounts 2, 3, 4
    assert [int(n) for n in re.findall(r"amount:</span> (\d+)", window)] == [4, 3, 2]
    none = client.get("/admin/audit?subject=usr_nobody", headers=admin.auth).text
    assert "No entry matches" in none
    # A filter that cannot be read is said beside its field; the rest still applies.
    bad = client.get(f"/admin/audit?since=someday&actor={admin.id}", headers=admin.auth)
    assert bad.status_code == 200
    assert "&#39;someday&#39; is not a date or time" in bad.text
    assert bad.text.count("data-audit-id=") == 1
    far = client.get("/admin/audit?until=0001-01-01T00:00%2B05:00", headers=admin.auth)
    assert far.status_code == 200
    assert "is out of range" in far.text
    # Not there for anybody else: the dashboard's not-found page.
    hidden = client.get("/admin/audit", headers=carol.auth)
    assert hidden.status_code == 404
    assert "Page not found" in hidden.text
    assert "spam" not in hidden.text
    # The admin page links to it.
    assert 'href="/admin/audit"' in client.get("/admin", headers=admin.auth).text


def plan_card(page: str, plan: str) -> str:
    found = re.search(rf'aria-labelledby="plan-{plan}">(.*?)</article>', page, re.S)
    assert found is not None, plan
    return html.unescape(found.group(1))


def test_the_plan_page_shows_what_an_upgrade_charges_and_grants_before_it_is_confirmed(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    """The issue's customer: Starter, one day before the period ends. The
    Studio card says what upgrading pays and grants now, and confirming it
    (the card's form, minutes later) applies exactly those numbers."""
    kai = make_user(platform, "kai@example.com", plan="starter")
    clock.set(datetime(2026, 1, 31, tzinfo=UTC))
    page = client.get("/billing", headers=kai.auth).text
    studio = plan_card(page, "studio")
    # $80 and 9000 credits for 1 of January's 31 days: 258.06 cents, 290.3 credits.
    assert "You pay $2.58 now and get 290 credits now" in studio
    assert (
        'data-confirm="Upgrade to Studio now? You pay $2.58 now and get 290 credits now.'
        ' Then $99 a month from Feb 01, 2026."'
    ) in studio
    assert "then $99 a month" in studio
    pro = plan_card(page, "pro")
    assert "You pay $0.97 now and get 97 credits now" in pro  # 3000 / 31 = 96.8
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', studio))
    assert fields == {"plan": "studio", "prorate_at": "2026-01-31T00:00:00+00:00"}
    clock.advance(timedelta(minutes=5))
    before = platform_available(platform, kai.wallet_id)
    confirmed = client.patch("/v1/subscription", json=fields, headers=kai.auth)
    assert confirmed.status_code == 200, confirmed.text
    upgrade = client.get("/v1/payments", headers=kai.auth).json()["data"][0]
    assert (upgrade["kind"], upgrade["amount_cents"], upgrade["credits"]) == ("upgrade", 258, 290)
    assert platform_available(platform, kai.wallet_id) - before == 290
    # On Studio now: the cheaper plans take effect at the period end, for nothing now.
    after = client.get("/billing", headers=kai.auth).text
    starter = plan_card(after, "starter")
    assert "Nothing to pay now: Starter from Feb 01, 2026, at $19 a month." in starter
    assert "prorate_at" not in starter


def platform_available(platform: Platform, wallet_id: str) -> int:
    with platform.db.read() as conn:
        return platform.ledger.balance(conn, wallet_id).available


def test_plan_cards_list_the_models_each_plan_includes(
    client: TestClient, platform: Platform
) -> None:
    user = make_user(platform, "cards@example.com", plan="starter")
    page = client.get("/billing", headers=user.auth).text
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
    for plan in catalog.plans_by_price():
        card = plan_card(page, plan.id)
        listed = re.findall(r'data-plan-model="([^"]+)"', card)
        assert listed == [m.id for m in plan_models(catalog, plan)], plan.id
        # The policy's words stay, beside the list.
        for feature in plan.features:
            assert html.escape(feature) in card, (plan.id, feature)
    starter = plan_card(page, "starter")
    assert "Access: All models" in starter
    assert ">Pixverse v4.5<" in starter
    assert ">Veo3<" not in starter
    assert "Text to video (4)" in starter
    assert ">Veo3<" in plan_card(page, "pro")


def test_team_members_see_a_cancel_button_only_where_they_may_cancel(
    client: TestClient, platform: Platform
) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    ann = make_user(platform, "ann@example.com")
    ben = make_user(platform, "ben@example.com")
    teams = platform.teams
    with platform.db.write() as conn:
        team = teams.create_team(conn, platform.accounts.get(conn, owner.id), "Night Shift")
        invitations = [teams.invite(conn, team.id, owner.id, u.email) for u in (ann, ben)]
    for user, invitation in zip((ann, ben), invitations, strict=True):
        with platform.db.write() as conn:
            teams.accept_invitation(conn, invitation.token, platform.accounts.get(conn, user.id))
    with platform.db.write() as conn:
        by_ann = platform.generations.submit(
            conn,
            platform.accounts.get(conn, ann.id),
            GenerationRequest("flux-schnell", "ann's heron", team_id=team.id),
        ).id

    def cancel_buttons(user_auth: dict[str, str]) -> list[str]:
        page = client.get("/generations", headers=user_auth).text
        assert f'data-generation-id="{by_ann}"' in page
        return re.findall(r'data-url="/v1/generations/([^"/]+)/cancel"', page)

    assert cancel_buttons(ann.auth) == [by_ann]
    assert cancel_buttons(owner.auth) == [by_ann]
    assert cancel_buttons(ben.auth) == []


def test_a_partly_delivered_batch_says_what_arrived_and_what_was_charged(
    client: TestClient, platform: Platform
) -> None:
    user = make_user(platform, "batch@example.com", plan="starter")
    params = {"aspect_ratio": "1:1", "sandbox": {"delay_s": 0, "deliver": 1}}
    full = {"aspect_ratio": "1:1", "sandbox": {"delay_s": 0}}
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, user.id)
        partial = platform.generations.submit(
            conn, account, GenerationRequest("flux-dev", "two cats", num_outputs=2, params=params)
        )
        whole = platform.generations.submit(
            conn, account, GenerationRequest("flux-dev", "two dogs", num_outputs=2, params=full)
        )
    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() == 2
    page = client.get("/generations", headers=user.auth).text

    def card(generation_id: str) -> str:
        found = re.search(rf'data-generation-id="{generation_id}"(.*?)</article>', page, re.S)
        assert found is not None
        return found.group(1)

    note = re.search(r'data-field="partial_note"\s*>(.*?)</p>', card(partial.id), re.S)
    assert note is not None  # shown: no ``hidden`` before the ``>``
    assert "1 of 2 outputs arrived" in note.group(1)
    assert "5 charged" in card(partial.id)  # Flux Dev: 5 credits, one output
    assert re.search(r'data-field="partial_note" hidden>', card(whole.id)) is not None
    assert "10 charged" in card(whole.id)


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize("path", ["/nonexistent", "/admin/nothing-here", "/usage/extra"])
def test_a_browser_asking_for_an_unknown_page_gets_the_styled_404(
    client: TestClient, path: str
) -> None:
    response = client.get(path, headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Page not found</h1>" in response.text
    assert '<link rel="stylesheet" href="/assets/dashboard.css' in response.text


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/nonexistent", "application/json"),
        ("/nonexistent", "*/*"),
        ("/nonexistent", None),
        ("/nonexistent", "application/json, text/html;q=0.5"),
        ("/v1/nonexistent", BROWSER_ACCEPT),
        ("/assets/nonexistent.css", BROWSER_ACCEPT),
    ],
)
def test_an_api_client_asking_for_an_unknown_path_gets_problem_json(
    client: TestClient, path: str, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "not_found"


def test_every_paid_action_on_the_plan_page_says_what_it_charges_and_asks_first(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    """Subscribing (no plan yet) and buying a pack ask before charging, with
    the amount now, the credits now and, for a plan, the renewal; a downgrade
    says nothing is charged now and from when it applies."""
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    new = make_user(platform, "new@example.com")
    page = client.get("/billing", headers=new.auth).text
    pro = plan_card(page, "pro")
    preview = client.post("/v1/subscription/preview", json={"plan": "pro"}, headers=new.auth)
    assert preview.status_code == 200, preview.text
    quote = preview.json()
    assert quote["change"] == "subscribe"
    now = f"${quote['amount_cents'] / 100:,.2f}".replace(".00", "")
    renews = f"${quote['renews_amount_cents'] / 100:,.2f}".replace(".00", "")
    assert (
        f'data-confirm="Subscribe to Pro? You pay {now} now and get '
        f'{quote["credits_now"]:,} credits now. Then {renews} a month, renewing on Feb 10, 2026."'
    ) in pro
    billing = html.unescape(page)
    assert 'data-confirm="Buy 1,000 credits? You pay $12 now and get 1,000 credits now.' in billing
    # On Studio, Pro is a downgrade: nothing now, and the date it applies.
    studio = make_user(platform, "studio@example.com", plan="studio")
    pro_card = plan_card(client.get("/billing", headers=studio.auth).text, "pro")
    assert (
        'data-confirm="Move to Pro? Nothing is charged now. Pro takes effect on Feb 10, 2026'
        in pro_card
    )
    assert client.get("/v1/payments", headers=new.auth).json()["data"] == []


def test_the_create_page_describes_each_model_and_locks_with_an_icon_not_an_emoji(
    client: TestClient, platform: Platform
) -> None:
    user = make_user(platform, "free@example.com")
    page = client.get("/create", headers=user.auth).text
    # Both Veo 3 listings, each with its own line.
    google = platform.catalogs.base.model("google-veo3").description
    veo3 = platform.catalogs.base.model("veo3").description
    assert google in html.unescape(page)
    assert veo3 in html.unescape(page)
    assert google != veo3
    assert 'aria-describedby="desc-veo3 lock-veo3"' in page
    # The lock is an SVG hidden from screen readers, with words for them.
    lock = re.search(r'<span class="lock" id="lock-veo3">(.*?)</span>\s*</label>', page, re.S)
    assert lock is not None
    assert re.search(r'<svg class="lock-icon" aria-hidden="true" focusable="false"', lock.group(1))
    assert '<span class="visually-hidden">Locked. </span>Unlocked by' in lock.group(1)
    css = client.get("/assets/dashboard.css").text
    assert "\U0001f512" not in page
    assert "\U0001f512" not in css
    # One credit, eight credits; Free's first model allows four outputs.
    assert '<span class="model-cost">1 credit</span>' in page
    assert '<span class="model-cost">8 credits</span>' in page
    assert 'max="4"' in page
    assert "Up to 4 with this model." in page


def test_a_failed_generation_reads_as_two_sentences(client: TestClient, platform: Platform) -> None:
    user = make_user(platform, "fails@example.com", credits=5)
    request = GenerationRequest(
        "flux-schnell", "a storm", params={"sandbox": {"delay_s": 0, "fail": True}}
    )
    with platform.db.write() as conn:
        failed = platform.generations.submit(conn, platform.accounts.get(conn, user.id), request)
    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = lambda _seconds: None
    assert worker.drain() == 1
    page = client.get("/generations", headers=user.auth).text
    found = re.search(
        rf'data-generation-id="{failed.id}".*?<p class="gen-error" data-field="error"\s*>(.*?)</p>',
        page,
        re.S,
    )
    assert found is not None
    text = " ".join(re.sub(r"<[^>]+>", " ", html.unescape(found.group(1))).split())
    assert text == (
        "The sandbox failed this job on request (params.sandbox.fail). No credits were charged."
    )

"""The dashboard's page routes through the app (no browser): who gets which
page, where a login link may lead, that user text is escaped, the pages'
security headers, and the admin statistics."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from plasmaart.bootstrap import Platform
from plasmaart.generation.service import GenerationRequest
from plasmaart.stats import platform_stats
from plasmaart.web.dashboard.pages import safe_next
from plasmaart.web.dashboard.views import HISTORY_PAGE
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
    for path in (*PAGES, "/admin"):
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
    # Three of them were Flux Dev: 5 credits each, the newest first.
    dev = client.get("/usage?model=flux-dev", headers=user.auth).text
    assert dev.count("<tr>") == 1 + 3
    assert dev.count(">Flux Dev</td>") == 3
    assert ">Flux Schnell</td>" not in dev

"""Address verification, the welcome mail and the change of address, on SQLite
and PostgreSQL, with mail delivered to a real SMTP server (aiosmtpd).

* Sign-up mails a welcome and a single-use link; the link proves the address
  (and logs a browser without a session in); expired, used, forged and
  other-purpose links are one ``invalid_token`` that writes nothing.
* While verification is required, sign-up answers alike for a new and a
  registered address: status, body, headers, no cookie, one password hash.
* An unverified account logs in and reads, but every ``VERIFIED_ONLY`` write
  answers ``email_not_verified``, writing nothing.
* Resend is throttled (3 an hour), voids older links, and sends nothing for a
  proven address.
* A change of address needs the password (and a two-factor code when on),
  mails the new address a link and tells the old one before and after; a
  taken address answers the same and its owner is mailed no link.
* ``plasmaart users create`` makes verified accounts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import String, Text, func, select
from typer.testing import CliRunner

from plasmaart.accounts import service as account_service
from plasmaart.accounts.addresses import RESENDS_PER_HOUR
from plasmaart.cli import app as cli_app
from plasmaart.client import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    VerificationSent,
)
from plasmaart.clock import ManualClock
from plasmaart.db.tables import (
    account_tokens,
    api_keys,
    metadata,
    notification_outbox,
    sessions,
    subscriptions,
    team_members,
    users,
)
from plasmaart.errors import InvalidToken
from plasmaart.platform import Platform
from plasmaart.web.auth import VERIFIED_ONLY
from plasmaart.worker import outbox_delivery
from tests.integration.test_security import Captured
from tests.support.accounts import PASSWORD, make_user
from tests.support.live_server import WAIT_S, live_server
from tests.support.mail import Inbox, SmtpServer, html_of, link_to, smtp_settings, text_of, token_of
from tests.support.platforms import api_client, running_platform, settings_for

PUBLIC = "https://art.example.test"


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    with SmtpServer() as received:
        yield received


@pytest.fixture
def platform(
    database_url: str, clock: ManualClock, tmp_path: Path, inbox: Inbox
) -> Iterator[Platform]:
    """SMTP set: verification is required."""
    settings = settings_for(
        database_url,
        tmp_path / "var",
        public_url=PUBLIC,
        support_email="help@plasmaart.test",
        **smtp_settings(inbox.port),
    )
    with running_platform(settings, clock) as built:
        assert built.settings.email_verification_required
        yield built


def deliver(platform: Platform) -> int:
    return outbox_delivery(platform).run("test").delivered


def count(platform: Platform, table: Any, *where: Any) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def written(platform: Platform) -> tuple[int, ...]:
    """Rows a refused request must not add or change."""
    return (
        count(platform, users),
        count(platform, users, users.c.email_verified_at.is_not(None)),
        count(platform, sessions),
        count(platform, notification_outbox),
        count(platform, account_tokens, account_tokens.c.used_at.is_not(None)),
        count(platform, api_keys),
        count(platform, subscriptions),
        count(platform, team_members),
    )


def csrf(client: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.cookies["pa_csrf"]}


def signup(client: TestClient, email: str) -> Any:
    return client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})


def link_mail(inbox: Inbox, address: str, count: int = 1) -> EmailMessage:
    return inbox.wait_for(address, subject="Confirm your e-mail address", count=count)


def login(client: TestClient, email: str) -> None:
    answer = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert answer.status_code == 200, answer.text


# -- sign-up, the link, the welcome ----------------------------------------------------


def test_signup_mails_a_welcome_and_a_link_that_proves_the_address(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    answer = signup(client, " Nia@Example.com ")
    assert answer.status_code == 202
    assert answer.json() == {"email": "nia@example.com", "verification": "sent"}
    assert "set-cookie" not in answer.headers
    assert deliver(platform) == 2

    mail = link_mail(inbox, "nia@example.com")
    url = link_to(mail, "/verify-email")
    assert url.startswith(f"{PUBLIC}/verify-email?token=")
    assert "help@plasmaart.test" in text_of(mail)
    assert url.replace("&", "&amp;") in html_of(mail)
    # The link's body is blanked once the mail is out; the welcome's is kept.
    with platform.db.read() as conn:
        bodies = dict(
            conn.execute(select(notification_outbox.c.kind, notification_outbox.c.body)).all()
        )
    assert token_of(url) not in bodies["account.verify_email"]
    assert "removed after delivery" in bodies["account.verify_email"]
    assert token_of(url) not in bodies["account.welcome"]

    welcome = inbox.wait_for("nia@example.com", subject="Welcome to PlasmaArt")
    words = text_of(welcome)
    for expected in (
        "Free plan",
        "Flux Schnell costs 1 credit",
        "1,000 credits costs $",
        f"{PUBLIC}/billing",
        f"{PUBLIC}/create",
        f"{PUBLIC}/settings",
        "API key",
        "confirm your address",
        "help@plasmaart.test",
    ):
        assert expected in words, expected
    assert html_of(welcome).count(f'href="{PUBLIC}/billing"') == 1

    me = client.get("/v1/me", headers={})
    assert me.status_code == 401  # no session: sign-up logged nobody in

    verified = client.post("/v1/auth/verify-email", json={"token": token_of(url)})
    assert verified.status_code == 200, verified.text
    assert verified.json()["user"]["email"] == "nia@example.com"
    assert {"pa_session", "pa_csrf"} <= set(client.cookies.keys())
    me = client.get("/v1/me").json()
    assert (me["email_verified"], me["pending_email"]) == (True, None)

    # Used once: the same link again writes nothing.
    before = written(platform)
    again = client.post("/v1/auth/verify-email", json={"token": token_of(url)})
    assert (again.status_code, again.json()["code"]) == (400, "invalid_token")
    assert token_of(url) not in again.text
    assert written(platform) == before


def test_a_signed_in_browser_verifies_without_a_new_session(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    signup(client, "kai@example.com")
    deliver(platform)
    token = token_of(link_to(link_mail(inbox, "kai@example.com"), "/verify-email"))
    login(client, "kai@example.com")
    assert client.get("/v1/me").json()["email_verified"] is False
    sessions_before = count(platform, sessions)
    answer = client.post("/v1/auth/verify-email", json={"token": token}, headers=csrf(client))
    assert answer.status_code == 200
    assert "set-cookie" not in answer.headers
    assert count(platform, sessions) == sessions_before
    # The cached user was dropped: the session sees the proven address at once.
    assert client.get("/v1/me").json()["email_verified"] is True


def test_expired_forged_and_other_purpose_links_write_nothing(
    client: TestClient, platform: Platform, inbox: Inbox, clock: ManualClock
) -> None:
    signup(client, "old@example.com")
    deliver(platform)
    token = token_of(link_to(link_mail(inbox, "old@example.com"), "/verify-email"))
    user_id = client.post("/v1/auth/login", json={"email": "old@example.com", "password": PASSWORD})
    user_id = user_id.json()["user"]["id"]
    client.cookies.clear()
    with platform.db.write() as conn:
        reset = platform.account_tokens.issue(
            conn, "password_reset", user_id=user_id, email="old@example.com"
        )
    before = written(platform)
    for bad in (token[:-2] + "xx", "forged", reset):
        answer = client.post("/v1/auth/verify-email", json={"token": bad})
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_token"), bad
        assert bad not in answer.text
    clock.advance(timedelta(days=2, seconds=1))
    expired = client.post("/v1/auth/verify-email", json={"token": token})
    assert (expired.status_code, expired.json()["code"]) == (400, "invalid_token")
    assert "set-cookie" not in expired.headers
    assert written(platform) == before
    bad_body = client.post("/v1/auth/verify-email", json={"token": ""})
    assert (bad_body.status_code, bad_body.json()["code"]) == (422, "invalid_input")


# -- sign-up answers alike -------------------------------------------------------------


def test_signup_answers_alike_for_a_new_and_a_registered_address(
    client: TestClient, platform: Platform, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = make_user(platform, "taken@example.com")
    hashed: list[str] = []
    real = account_service.hash_password

    def counting(password: str) -> str:
        hashed.append(password)
        return real(password)

    monkeypatch.setattr(account_service, "hash_password", counting)
    fresh = signup(client, "fresh@example.com")
    assert len(hashed) == 1
    taken = signup(client, "Taken@Example.com")
    assert len(hashed) == 2  # argon2 either way: the time does not tell them apart

    assert fresh.status_code == taken.status_code == 202
    assert fresh.json() == {"email": "fresh@example.com", "verification": "sent"}
    assert taken.json() == {"email": "taken@example.com", "verification": "sent"}

    def shape(headers: Any) -> list[str]:
        return sorted(k for k in headers if k not in ("x-request-id", "content-length"))

    assert shape(fresh.headers) == shape(taken.headers)
    assert "set-cookie" not in fresh.headers
    assert "set-cookie" not in taken.headers
    assert len(client.cookies) == 0

    deliver(platform)
    assert link_to(link_mail(inbox, "fresh@example.com"), "/verify-email")
    told = inbox.wait_for("taken@example.com", subject="Someone tried to sign up")
    assert "/verify-email" not in text_of(told)
    assert [str(m["Subject"]) for m in inbox.to("taken@example.com")] == [
        "Someone tried to sign up with your address"
    ]
    with platform.db.read() as conn:
        kinds = conn.execute(
            select(notification_outbox.c.kind).where(notification_outbox.c.user_id == owner.id)
        ).scalars()
        assert list(kinds) == ["account.signup_attempt"]
    # The registered account is untouched: same password, no new user.
    assert count(platform, users, users.c.email == "taken@example.com") == 1
    login(client, "taken@example.com")


# -- what an unverified account may do ------------------------------------------------------

BODIES = {
    "POST /v1/subscription": {"plan": "starter"},
    "PATCH /v1/subscription": {"plan": "pro"},
    "POST /v1/subscription/pay": {},
    "POST /v1/credit-purchases": {"pack": "pack-1000"},
    "POST /v1/invitations/{token}/accept": {},
    "POST /v1/api-keys": {"name": "laptop"},
    "POST /v1/webhook-endpoints": {"url": "https://93.184.215.14/hook", "events": ["topup.failed"]},
    "PUT /v1/auto-topup": {
        "enabled": True,
        "threshold": 100,
        "pack": "pack-1000",
        "monthly_cap_cents": 3600,
    },
}


def test_an_unverified_account_reads_but_makes_no_verified_only_write(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    assert set(BODIES) == VERIFIED_ONLY
    owner = make_user(platform, "studio@example.com", plan="studio")
    invited = client.post(
        "/v1/teams", json={"name": "Crew"}, headers=owner.auth
    ).json()  # a real invitation, so only verification can refuse it
    invitation = client.post(
        f"/v1/teams/{invited['id']}/invitations",
        json={"email": "una@example.com"},
        headers=owner.auth,
    ).json()["token"]

    signup(client, "una@example.com")
    login(client, "una@example.com")
    for path in ("/v1/me", "/v1/balance", "/v1/ledger", "/v1/notifications", "/v1/api-keys"):
        assert client.get(path).status_code == 200, path
    before = written(platform)
    for route, body in BODIES.items():
        method, path = route.split(" ")
        answer = client.request(
            method, path.replace("{token}", invitation), json=body, headers=csrf(client)
        )
        assert (answer.status_code, answer.json()["code"]) == (403, "email_not_verified"), route
        assert "una@example.com" in answer.json()["detail"]
    assert written(platform) == before

    deliver(platform)
    token = token_of(link_to(link_mail(inbox, "una@example.com"), "/verify-email"))
    client.post("/v1/auth/verify-email", json={"token": token}, headers=csrf(client))
    created = client.post("/v1/api-keys", json={"name": "laptop"}, headers=csrf(client))
    assert created.status_code == 201
    joined = client.post(f"/v1/invitations/{invitation}/accept", headers=csrf(client))
    assert joined.status_code == 200, joined.text


# -- resend ---------------------------------------------------------------------------------


def test_resend_is_throttled_and_voids_older_links(
    client: TestClient, platform: Platform, inbox: Inbox, clock: ManualClock
) -> None:
    signup(client, "rae@example.com")
    login(client, "rae@example.com")
    deliver(platform)
    first = token_of(link_to(link_mail(inbox, "rae@example.com"), "/verify-email"))
    for _ in range(RESENDS_PER_HOUR):
        answer = client.post("/v1/auth/verify-email/resend", headers=csrf(client))
        assert answer.status_code == 202
        assert answer.json() == {"email": "rae@example.com", "verification": "sent"}
    before = written(platform)
    refused = client.post("/v1/auth/verify-email/resend", headers=csrf(client))
    assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert written(platform) == before
    deliver(platform)
    links = [link_mail(inbox, "rae@example.com", n) for n in range(1, RESENDS_PER_HOUR + 2)]
    assert len({token_of(link_to(m, "/verify-email")) for m in links}) == RESENDS_PER_HOUR + 1
    # The newest link wins; the first no longer works.
    voided = client.post("/v1/auth/verify-email", json={"token": first}, headers=csrf(client))
    assert voided.json()["code"] == "invalid_token"
    newest = token_of(link_to(links[-1], "/verify-email"))
    assert (
        client.post(
            "/v1/auth/verify-email", json={"token": newest}, headers=csrf(client)
        ).status_code
        == 200
    )
    # Proven: nothing to send, nothing counted.
    clock.advance(timedelta(hours=1))
    before = written(platform)
    done = client.post("/v1/auth/verify-email/resend", headers=csrf(client))
    assert (done.status_code, done.json()["verification"]) == (202, "already_verified")
    assert written(platform) == before
    client.cookies.clear()
    assert client.post("/v1/auth/verify-email/resend").status_code == 401


# -- changing the address ------------------------------------------------------------------


def change(client: TestClient, auth: dict[str, str], **body: Any) -> Any:
    return client.patch("/v1/me", json={"password": PASSWORD, **body}, headers=auth)


def test_a_change_of_address_takes_effect_once_the_new_one_is_proven(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    user = make_user(platform, "ben@example.com")
    with platform.db.write() as conn:
        reset = platform.account_tokens.issue(
            conn, "password_reset", user_id=user.id, email="ben@example.com"
        )
    before = written(platform)
    wrong = client.patch(
        "/v1/me", json={"email": "ben@new.example", "password": "not it"}, headers=user.auth
    )
    assert (wrong.status_code, wrong.json()["code"]) == (403, "wrong_password")
    assert "not it" not in wrong.text
    assert written(platform) == before
    for bad in ({"email": "nope"}, {"email": "ben@example.com"}):
        answer = change(client, user.auth, **bad)
        assert (answer.status_code, answer.json()["code"]) == (422, "invalid_input")

    asked = change(client, user.auth, email="Ben@New.example")
    assert asked.status_code == 202, asked.text
    assert (asked.json()["email"], asked.json()["pending_email"]) == (
        "ben@example.com",
        "ben@new.example",
    )
    deliver(platform)
    link = link_to(
        inbox.wait_for("ben@new.example", subject="Confirm your new e-mail address"),
        "/verify-email",
    )
    told = inbox.wait_for("ben@example.com", subject="A change of your e-mail address")
    assert "ben@new.example" in text_of(told)
    assert "/verify-email" not in text_of(told)
    # Not yet: the account keeps its address until the link is used.
    assert client.get("/v1/me", headers=user.auth).json()["email"] == "ben@example.com"

    done = client.post("/v1/auth/verify-email", json={"token": token_of(link)})
    assert done.status_code == 200
    assert done.json()["user"]["email"] == "ben@new.example"
    me = client.get("/v1/me", headers=user.auth).json()
    assert (me["email"], me["email_verified"], me["pending_email"]) == (
        "ben@new.example",
        True,
        None,
    )
    deliver(platform)
    after = inbox.wait_for("ben@example.com", subject="Your e-mail address was changed")
    assert "ben@new.example" in text_of(after)
    client.cookies.clear()
    login(client, "ben@new.example")
    old = client.post("/v1/auth/login", json={"email": "ben@example.com", "password": PASSWORD})
    assert old.status_code == 401
    # A reset link mailed to the old address no longer works.
    with platform.db.read() as conn, pytest.raises(InvalidToken):
        platform.account_tokens.peek(conn, "password_reset", reset)


def test_a_change_to_a_taken_address_answers_the_same_and_mails_no_link(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    user = make_user(platform, "cy@example.com")
    holder = make_user(platform, "held@example.com")
    free = change(client, user.auth, email="cy@free.example")
    taken = change(client, user.auth, email="held@example.com")
    assert free.status_code == taken.status_code == 202
    assert taken.json()["pending_email"] == "held@example.com"
    assert set(free.json()) == set(taken.json())
    deliver(platform)
    [notice] = inbox.to("held@example.com")
    assert str(notice["Subject"]) == "Someone asked to use your address"
    assert "http" not in text_of(notice).split("-- ")[0]
    assert "cy@example.com" not in text_of(notice)
    assert client.get("/v1/me", headers=holder.auth).json()["email"] == "held@example.com"
    # The requester hears the same as for a free address.
    requested = [
        str(m["Subject"])
        for m in inbox.to("cy@example.com")
        if "change of your e-mail" in str(m["Subject"])
    ]
    assert len(requested) == 2


def test_a_change_of_address_needs_the_second_factor_when_it_is_on(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    user = make_user(platform, "tfa@example.com")
    with platform.db.write() as conn:
        account = platform.accounts.get(conn, user.id)
        enrolled = platform.second_factor.begin(conn, account)
        codes = platform.second_factor.enable(
            conn, account, pyotp.TOTP(enrolled.secret).at(platform.job_clock.now())
        )
    assert isinstance(codes, list)
    before = written(platform)
    missing = change(client, user.auth, email="tfa@new.example")
    assert (missing.status_code, missing.json()["code"]) == (401, "otp_required")
    wrong = change(client, user.auth, email="tfa@new.example", otp="000000")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "otp_invalid")
    assert written(platform) == before
    fine = change(client, user.auth, email="tfa@new.example", otp=codes[0])
    assert fine.status_code == 202
    assert fine.json()["pending_email"] == "tfa@new.example"


# -- verification off, and accounts an operator makes --------------------------------


def test_without_verification_signup_logs_in_and_welcomes(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "open")
    with running_platform(settings, clock) as open_platform, api_client(open_platform) as client:
        assert not open_platform.settings.email_verification_required
        answer = signup(client, "ora@example.com")
        assert answer.status_code == 201
        assert "pa_session" in client.cookies
        assert client.get("/v1/me").json()["email_verified"] is False
        # Nothing needs proving: the API key is made at once.
        assert (
            client.post("/v1/api-keys", json={"name": "k"}, headers=csrf(client)).status_code == 201
        )
        client.cookies.clear()
        again = signup(client, "ora@example.com")
        assert (again.status_code, again.json()["code"]) == (409, "email_taken")
        with open_platform.db.read() as conn:
            kinds = sorted(conn.execute(select(notification_outbox.c.kind)).scalars())
        assert kinds == ["account.signup_attempt", "account.welcome"]
        assert outbox_delivery(open_platform).run("t").delivered == 2
        [welcome] = [m for m in open_platform.mail_folder.messages() if "Welcome" in m.subject]
        assert welcome.to == "ora@example.com"
        assert "Your first steps" in welcome.text
        assert "confirm your address" not in welcome.text


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The command configures logging for a real process; give the test run
    its own configuration back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = False


@pytest.mark.usefixtures("keep_logging")
def test_accounts_made_with_users_create_are_verified(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, platform: Platform
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PLASMAART_VAR_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("PLASMAART_SMTP_HOST", "127.0.0.1")
    monkeypatch.delenv("PLASMAART_CATALOG_FILE", raising=False)
    result = CliRunner().invoke(
        cli_app,
        ["users", "create", "--email", "op@example.com", "--password", PASSWORD],
        prog_name="plasmaart",
    )
    assert result.exit_code == 0, result.output
    with platform.db.read() as conn:
        assert platform.accounts.get_by_email(conn, "op@example.com").email_verified
        assert conn.execute(select(func.count()).select_from(notification_outbox)).scalar() == 0


# -- secrets ----------------------------------------------------------------------------------


class PlatformLines(Captured):
    """The platform's log lines: not those of the test's SMTP server
    (aiosmtpd's ``mail.log``), which logs the mail it receives."""

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("mail.log"):
            super().emit(record)


@pytest.fixture
def logged() -> Iterator[Captured]:
    handler = PlatformLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_links_and_passwords_reach_neither_the_logs_nor_the_tables(
    client: TestClient, platform: Platform, inbox: Inbox, logged: Captured
) -> None:
    signup(client, "sam@example.com")
    deliver(platform)
    token = token_of(link_to(link_mail(inbox, "sam@example.com"), "/verify-email"))
    forged = token[:-3] + "abc"
    # The page the link opens shows it (to post it), but its GET uses nothing up.
    page = client.get("/verify-email", params={"token": token})
    assert page.status_code == 200
    assert f'data-verify-token="{token}"' in page.text
    assert client.post("/v1/auth/verify-email", json={"token": forged}).status_code == 400
    assert client.post("/v1/auth/verify-email", json={"token": token}).status_code == 200
    wrong_password = "a wrong but long password"
    auth = csrf(client)
    assert (
        client.patch(
            "/v1/me", json={"email": "sam@new.example", "password": wrong_password}, headers=auth
        ).status_code
        == 403
    )
    assert change(client, auth, email="sam@new.example").status_code == 202
    deliver(platform)
    change_token = token_of(
        link_to(inbox.wait_for("sam@new.example", subject="Confirm your new"), "/verify-email")
    )
    assert client.post("/v1/auth/verify-email", json={"token": change_token}).status_code == 200
    secrets = [token, forged, change_token, PASSWORD, wrong_password]
    assert len(logged.lines) >= 5
    leaks = [(s[:6], line) for line in logged.lines for s in secrets if s in line]
    assert leaks == []
    found = []
    with platform.db.read() as conn:
        for table in metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text)]
            for row in conn.execute(select(*columns)) if columns else ():
                found += [
                    f"{table.name}.{column.name}"
                    for column, value in zip(columns, row, strict=True)
                    for s in (token, change_token, PASSWORD)
                    if isinstance(value, str) and s in value
                ]
    assert found == []


# -- the Python client ------------------------------------------------------------------------


def test_the_clients_sign_up_verify_and_change_the_address(
    platform: Platform, inbox: Inbox
) -> None:
    with live_server(platform) as server:
        with Client(server, timeout=WAIT_S, backoff=0.1) as client:
            pending = client.signup("Lea@Example.com", PASSWORD)
            assert pending == VerificationSent("lea@example.com", "sent")
            with pytest.raises(AuthenticationError):
                client.me()  # no session until the link is used
            deliver(platform)
            token = token_of(link_to(link_mail(inbox, "lea@example.com"), "/verify-email"))
            with pytest.raises(ApiError) as refused:
                client.verify_email("forged")
            assert refused.value.code == "invalid_token"
            user = client.verify_email(token)
            assert user.email == "lea@example.com"
            me = client.me()  # logged in by the link
            assert (me.email_verified, me.pending_email) == (True, None)
            sent = client.resend_verification()
            assert sent.verification == "already_verified"
            moved = client.change_email("lea@new.example", PASSWORD)
            assert (moved.email, moved.pending_email) == ("lea@example.com", "lea@new.example")

        async def scenario() -> None:
            async with AsyncClient(server, timeout=WAIT_S) as client:
                answer = await client.signup("max@example.com", PASSWORD)
                assert isinstance(answer, VerificationSent)
                await client.login("max@example.com", PASSWORD)
                assert (await client.me()).email_verified is False
                again = await client.resend_verification()
                assert again == VerificationSent("max@example.com", "sent")
                deliver(platform)
                newest = link_mail(inbox, "max@example.com", count=2)
                verified = await client.verify_email(token_of(link_to(newest, "/verify-email")))
                assert verified.email == "max@example.com"
                assert (await client.me()).email_verified is True
                changed = await client.change_email("max@new.example", PASSWORD)
                assert changed.pending_email == "max@new.example"

        asyncio.run(scenario())


def test_an_address_registered_before_the_link_is_used_is_refused(
    client: TestClient, platform: Platform, inbox: Inbox
) -> None:
    user = make_user(platform, "dee@example.com")
    assert change(client, user.auth, email="dee@late.example").status_code == 202
    deliver(platform)
    token = token_of(
        link_to(inbox.wait_for("dee@late.example", subject="Confirm your new"), "/verify-email")
    )
    make_user(platform, "dee@late.example")  # somebody else takes it meanwhile
    before = written(platform)
    refused = client.post("/v1/auth/verify-email", json={"token": token})
    assert (refused.status_code, refused.json()["code"]) == (409, "email_taken")
    assert written(platform) == before
    assert client.get("/v1/me", headers=user.auth).json()["email"] == "dee@example.com"

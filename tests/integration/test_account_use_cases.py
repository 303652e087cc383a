"""The accounts' and teams' use cases as the routes call them, on both
databases: the watermark setting decided by the plan in force, refusals that
leave their trace, and the seats a team use case answers with."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.accounts.credentials import LOGIN_FAILURES_PER_EMAIL, LoginThrottled
from plasmaart.accounts.entitlements import NotInPlan
from plasmaart.accounts.service import EmailTaken, SignedIn, WrongCredentials
from plasmaart.bootstrap import bootstrap
from plasmaart.catalog import DEFAULT_CATALOG_PATH
from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import login_failures, notification_outbox, users
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from tests.support.accounts import PASSWORD, make_user


def watermark_flag(platform: Platform, user_id: str) -> bool:
    with platform.db.read() as conn:
        return bool(
            conn.execute(select(users.c.remove_watermark).where(users.c.id == user_id)).scalar_one()
        )


def test_watermark_removal_follows_the_plan_in_force(
    platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="studio")
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, sam.id)
        assert platform.accounts.set_remove_watermark(conn, user, True).remove_watermark
        platform.billing.subscriptions.cancel(conn, platform.billing.customer(conn, sam.id))
    # Canceled, but Studio until its period ends: still allowed.
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, sam.id)
        assert platform.accounts.set_remove_watermark(conn, user, True).remove_watermark
        assert not platform.accounts.set_remove_watermark(conn, user, False).remove_watermark
    clock.advance(timedelta(days=32))  # past the period end: Free
    with platform.db.read() as conn:
        user = platform.accounts.get(conn, sam.id)
    with pytest.raises(NotInPlan) as refused, platform.db.write() as conn:
        platform.accounts.set_remove_watermark(conn, user, True)
    assert refused.value.extra == {"required_plan": "studio"}
    assert refused.value.detail == (
        "watermark removal is not part of the Free plan; Studio includes it"
    )
    assert watermark_flag(platform, sam.id) is False
    # Putting the watermark back is allowed on every plan.
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, sam.id)
        platform.accounts.set_remove_watermark(conn, user, False)
    assert watermark_flag(platform, sam.id) is False


def test_a_wrong_password_is_returned_with_its_failure_counted(platform: Platform) -> None:
    make_user(platform, "ada@example.com")
    for _ in range(LOGIN_FAILURES_PER_EMAIL):
        with platform.db.write() as conn:
            refused = platform.accounts.log_in(conn, "Ada@Example.com", "wrong", address="10.0.0.1")
        assert isinstance(refused, WrongCredentials)
    with platform.db.read() as conn:
        counted = conn.execute(select(func.count()).select_from(login_failures)).scalar_one()
    assert counted == LOGIN_FAILURES_PER_EMAIL
    # Throttled before the password is checked, even the right one; nothing more counted.
    with pytest.raises(LoginThrottled), platform.db.write() as conn:
        platform.accounts.log_in(conn, "ada@example.com", PASSWORD, address="10.0.0.2")
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(login_failures)).scalar_one() == (
            LOGIN_FAILURES_PER_EMAIL
        )


def test_a_login_forgets_the_failures_of_its_address(platform: Platform) -> None:
    make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        platform.accounts.log_in(conn, "ada@example.com", "wrong", address="10.0.0.1")
    with platform.db.write() as conn:
        signed_in = platform.accounts.log_in(conn, "ada@example.com", PASSWORD, address="10.0.0.1")
    assert isinstance(signed_in, SignedIn)
    assert signed_in.user.email == "ada@example.com"
    with platform.db.read() as conn:
        assert platform.credentials.session(conn, signed_in.session.token) is not None
        assert conn.execute(select(func.count()).select_from(login_failures)).scalar_one() == 0


def test_a_taken_address_is_returned_with_its_owner_warned(platform: Platform) -> None:
    owner = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        taken = platform.addresses.sign_up(conn, "ADA@example.com", "another long password")
    assert isinstance(taken, EmailTaken)
    assert taken.address == "ada@example.com"
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(users)).scalar_one() == 1
        warned = conn.execute(
            select(notification_outbox.c.user_id, notification_outbox.c.kind)
        ).all()
    assert [tuple(row) for row in warned] == [(owner.id, "account.signup_attempt")]


def test_team_use_cases_answer_with_the_seats_as_stored(platform: Platform) -> None:
    owner = make_user(platform, "owner@example.com", plan="studio")
    member = make_user(platform, "member@example.com")
    with platform.db.write() as conn:
        created = platform.teams.create_team(conn, platform.accounts.get(conn, owner.id), "Night")
        assert created.seats == platform.teams.seats(conn, created)
        platform.teams.invite(conn, created.id, owner.id, "pending@example.com")
        invitation = platform.teams.invite(conn, created.id, owner.id, member.email)
        joined = platform.teams.accept_invitation(
            conn, invitation.token, platform.accounts.get(conn, member.id)
        )
        assert (joined.seats.members, joined.seats.pending) == (2, 1)
        assert joined.seats == platform.teams.seats(conn, joined)
        shown = platform.teams.team_for_member(conn, created.id, member.id)
    assert shown.seats == joined.seats
    assert (shown.id, shown.name, shown.owner_id) == (created.id, "Night", owner.id)


def test_a_revoked_key_answers_as_it_is_stored(platform: Platform) -> None:
    ada = make_user(platform, "ada@example.com")
    with platform.db.write() as conn:
        created = platform.credentials.create_api_key(conn, ada.id, "laptop")
        revoked = platform.credentials.revoke_api_key(conn, ada.id, created.key.id)
        again = platform.credentials.revoke_api_key(conn, ada.id, created.key.id)
    with platform.db.read() as conn:
        stored = {key.id: key for key in platform.credentials.list_api_keys(conn, ada.id)}
    assert revoked.revoked_at is not None
    assert stored[created.key.id] == revoked == again


def test_watermark_removal_is_refused_plainly_when_no_plan_includes_it(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    # Operator data: a catalog where no plan lets its subscribers remove the
    # watermark. The refusal names no plan to move to (it was a 500 before).
    catalog = tmp_path / "catalog.toml"
    text = DEFAULT_CATALOG_PATH.read_text()
    assert text.count("watermark_removable = true\n") == 1
    catalog.write_text(
        text.replace("watermark_removable = true\n", "watermark_removable = false\n")
    )
    settings = Settings(database_url=database_url, var_dir=tmp_path / "var", catalog_file=catalog)
    platform = bootstrap(settings, clock=clock, migrate=False)
    try:
        with TestClient(create_app(platform, embedded_worker=False)) as client:
            sam = make_user(platform, "sam@example.com", plan="studio")
            refused = client.patch(
                "/v1/me/settings", json={"remove_watermark": True}, headers=sam.auth
            )
            assert (refused.status_code, refused.json()["code"]) == (403, "forbidden"), refused.text
            assert "required_plan" not in refused.json()
            assert refused.json()["detail"] == "watermark removal is not part of the Studio plan"
            assert watermark_flag(platform, sam.id) is False
    finally:
        platform.close()

"""Submitting generations: validation, plan access, the quote, and the hold
and the job written together (DESIGN.md §4), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from plasmaart.db.tables import generations, holds
from plasmaart.errors import InsufficientCredits, InvalidInput
from plasmaart.generation.errors import ConcurrencyLimit, GenerationNotFound, ModelNotInPlan
from plasmaart.generation.service import GenerationRequest
from plasmaart.ledger.invariants import check_ledger
from plasmaart.platform import Platform
from tests.support.accounts import make_user


def submit(platform: Platform, email: str, request: GenerationRequest, key: str | None = None):
    with platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        return platform.generations.submit(conn, user, request, idempotency_key=key)


def counts(platform: Platform) -> tuple[int, int, int]:
    with platform.db.read() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("generations", "holds", "journal_entries")
        )


def test_a_starter_user_submits_four_images(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    generation = submit(
        platform,
        "sam@example.com",
        GenerationRequest(
            "flux-schnell",
            "a red fox in snow",
            num_outputs=4,
            params={"seed": 7, "aspect_ratio": "16:9"},
        ),
    )
    assert (generation.status, generation.credits_held, generation.balance_after) == (
        "queued",
        4,
        1996,
    )
    assert (generation.credits_per_output, generation.credits_charged) == (1, 0)
    assert generation.queue_position == 1
    assert generation.license == "personal"
    assert generation.watermark is True
    with platform.db.read() as conn:
        hold = conn.execute(select(holds)).one()
        assert (hold.generation_id, hold.model, hold.amount) == (generation.id, "flux-schnell", 4)
        assert check_ledger(conn) == []


def test_the_policy_spelling_and_video_access(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    video = submit(
        platform,
        "sam@example.com",
        GenerationRequest("pixverse-v4.5", "waves", params={"duration_s": 5}),
    )
    assert (video.credits_held, video.balance_after) == (80, 1920)
    aliased = submit(platform, "sam@example.com", GenerationRequest("Flux Scnell", "cat"))
    assert aliased.model == "flux-schnell"


def test_model_not_in_plan_names_the_cheapest_plan(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    make_user(platform, "fay@example.com", credits=5000)
    before = counts(platform)
    with pytest.raises(ModelNotInPlan) as refused:
        submit(platform, "sam@example.com", GenerationRequest("veo3", "a storm"))
    assert (refused.value.code, refused.value.extra["required_plan"]) == (
        "model_not_in_plan",
        "pro",
    )
    with pytest.raises(ModelNotInPlan) as free:
        submit(platform, "fay@example.com", GenerationRequest("wan-pro", "a storm"))
    assert free.value.extra["required_plan"] == "starter"
    assert counts(platform) == before


def test_insufficient_credits_writes_nothing(platform: Platform) -> None:
    make_user(platform, "low@example.com", credits=3)
    before = counts(platform)
    with pytest.raises(InsufficientCredits) as refused:
        submit(platform, "low@example.com", GenerationRequest("flux-dev", "x", num_outputs=1))
    assert (refused.value.required, refused.value.available) == (5, 3)
    assert counts(platform) == before


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (GenerationRequest("dall-e", "x"), "model"),
        (GenerationRequest("flux-dev", "   "), "prompt"),
        (GenerationRequest("flux-dev", "x" * 5000), "prompt"),
        (GenerationRequest("flux-dev", "x", num_outputs=5), "num_outputs"),
        (GenerationRequest("pixverse-v4.5", "x", num_outputs=2), "num_outputs"),
        (GenerationRequest("wan-pro-i2v", "x"), "upload_id"),
        (GenerationRequest("flux-dev", "x", upload_id="upl_x"), "upload_id"),
        (GenerationRequest("flux-pro-kontext", "x", upload_id="upl_nope"), "upload_id"),
        (GenerationRequest("flux-pro-kontext", "x", image_url="http://insecure"), "image_url"),
        (GenerationRequest("flux-dev", "x", params={"duration_s": 5}), "params.duration_s"),
        (GenerationRequest("flux-dev", "x", params={"seed": -1}), "params.seed"),
        (GenerationRequest("flux-dev", "x", params={"sandbox": "fail"}), "params.sandbox"),
    ],
)
def test_invalid_input(platform: Platform, request_: GenerationRequest, field: str) -> None:
    make_user(platform, "rich@example.com", plan="studio")
    before = counts(platform)
    with pytest.raises(InvalidInput) as refused:
        submit(platform, "rich@example.com", request_)
    assert field in {e["field"] for e in refused.value.extra["errors"]}
    assert counts(platform) == before


def test_queued_jobs_are_bounded_per_plan(platform: Platform) -> None:
    make_user(platform, "bot@example.com", credits=100)  # Free: at most 10 queued
    for n in range(10):
        submit(platform, "bot@example.com", GenerationRequest("flux-schnell", f"spam {n}"))
    with pytest.raises(ConcurrencyLimit) as refused:
        submit(platform, "bot@example.com", GenerationRequest("flux-schnell", "one more"))
    assert refused.value.code == "concurrency_limit"


def test_an_idempotency_key_submits_once(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    request = GenerationRequest("flux-schnell", "once", num_outputs=2)
    first = submit(platform, "sam@example.com", request, key="k1")
    again = submit(platform, "sam@example.com", request, key="k1")
    assert again.id == first.id
    with platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(generations)).scalar_one() == 1
        assert (
            platform.ledger.balance(
                conn, conn.execute(select(holds.c.wallet_id)).scalar_one()
            ).available
            == 1998
        )


def test_cancel_a_queued_job_releases_everything(platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    make_user(platform, "eve@example.com", plan="starter")
    generation = submit(platform, "sam@example.com", GenerationRequest("pixverse-v4.5", "waves"))
    with platform.db.write() as conn:
        eve = platform.accounts.get_by_email(conn, "eve@example.com")
        with pytest.raises(GenerationNotFound):
            platform.generations.cancel(conn, eve, generation.id)
    with platform.db.write() as conn:
        user = platform.accounts.get(conn, sam.id)
        canceled = platform.generations.cancel(conn, user, generation.id)
        again = platform.generations.cancel(conn, user, generation.id)
    assert (canceled.status, canceled.credits_charged, canceled.balance_after) == (
        "canceled",
        0,
        2000,
    )
    assert again.status == "canceled"
    with platform.db.read() as conn:
        assert platform.ledger.balance(conn, sam.wallet_id).available == 2000
        assert check_ledger(conn) == []


def test_quote_holds_nothing(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    before = counts(platform)
    with platform.db.read() as conn:
        user = platform.accounts.get_by_email(conn, "sam@example.com")
        quote = platform.generations.quote(
            conn, user, GenerationRequest("kling-video-v2.1", "storm")
        )
        fine = platform.generations.quote(
            conn, user, GenerationRequest("flux-pro-v1.1", "x", num_outputs=4)
        )
    assert (quote.credits, quote.allowed) == (280, False)
    assert "Pro" in (quote.reason or "") or "pro" in (quote.reason or "")
    assert (fine.credits, fine.available, fine.available_after, fine.allowed) == (
        32,
        2000,
        1968,
        True,
    )
    assert counts(platform) == before


def test_others_cannot_see_a_generation(platform: Platform) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    make_user(platform, "eve@example.com")
    generation = submit(platform, "sam@example.com", GenerationRequest("flux-schnell", "x"))
    with platform.db.read() as conn:
        eve = platform.accounts.get_by_email(conn, "eve@example.com")
        with pytest.raises(GenerationNotFound):
            platform.generations.get(conn, eve, generation.id)
        assert platform.generations.list(conn, eve, limit=10) == []
        sam = platform.accounts.get_by_email(conn, "sam@example.com")
        assert [g.id for g in platform.generations.list(conn, sam, limit=10)] == [generation.id]


def test_a_full_queue_is_refused_by_the_quote_too(platform: Platform) -> None:
    make_user(platform, "bot@example.com", credits=100)  # Free: at most 10 queued
    for n in range(10):
        submit(platform, "bot@example.com", GenerationRequest("flux-schnell", f"spam {n}"))
    with platform.db.read() as conn:
        user = platform.accounts.get_by_email(conn, "bot@example.com")
        quote = platform.generations.quote(conn, user, GenerationRequest("flux-schnell", "x"))
    assert (quote.allowed, quote.credits) == (False, 1)
    assert "queues at most 10" in (quote.reason or "")
    with pytest.raises(ConcurrencyLimit) as refused:
        submit(platform, "bot@example.com", GenerationRequest("flux-schnell", "one more"))
    assert refused.value.extra["retry_after"] == 10

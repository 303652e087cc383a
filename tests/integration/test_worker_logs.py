"""The worker's log lines: every step of a job is one INFO record carrying its
generation id, so an operator can follow one job (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from plasmaart.clock import ManualClock
from plasmaart.generation.runner import LEASE
from plasmaart.generation.service import GenerationRequest
from plasmaart.logs import JsonFormatter
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import make_user

PROMPT = "a secret red fox in the snow"


def steps(caplog: pytest.LogCaptureFixture, generation_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "generation_id", None) == generation_id]


def submit(platform: Platform, request: GenerationRequest) -> str:
    with platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, "sam@example.com")
        return platform.generations.submit(conn, user, request).id


def worker(platform: Platform) -> Worker:
    made = Worker(platform, 2)
    made.runner.sleep = lambda _seconds: None
    return made


def test_a_succeeded_job_logs_each_step_with_its_generation_id(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        GenerationRequest(
            "flux-schnell", PROMPT, num_outputs=2, params={"sandbox": {"delay_s": 0}}
        ),
    )
    with caplog.at_level(logging.INFO, logger="plasmaart"):
        assert worker(platform).drain() == 1
    records = steps(caplog, job)
    assert [r.job_event for r in records] == [  # type: ignore[attr-defined]
        "claimed",
        "submitted",
        "output_stored",
        "output_stored",
        "charged",
        "ended",
    ]
    assert all(r.levelno == logging.INFO for r in records)
    claimed, submitted, _first, second, charged, ended = records
    expected = {
        "wallet_id": sam.wallet_id,
        "model": "flux-schnell",
        "attempt": 1,
        "resumed": False,
        "prompt_chars": len(PROMPT),
    }
    assert {name: claimed.__dict__.get(name) for name in expected} == expected
    assert claimed.getMessage().startswith(f"job {job} claimed: flux-schnell, 2 output(s)")
    assert submitted.provider_request_id  # type: ignore[attr-defined]
    assert submitted.provider_request_id in submitted.getMessage()  # type: ignore[attr-defined]
    assert (second.outputs_stored, second.outputs_wanted) == (2, 2)  # type: ignore[attr-defined]
    assert "output 2 of 2" in second.getMessage()
    assert (charged.credits_charged, charged.balance_after) == (2, 1998)  # type: ignore[attr-defined]
    assert charged.getMessage() == f"job {job} charged 2 credits for 2 output(s); 0 released"
    assert (ended.status, ended.error_code, ended.outputs_stored) == (  # type: ignore[attr-defined]
        "succeeded",
        None,
        2,
    )
    # The prompt may be private: its length is logged, never its text.
    formatter = JsonFormatter()
    for record in records:
        line = formatter.format(record)
        assert PROMPT not in line
        assert json.loads(line)["generation_id"] == job


def test_a_failed_job_logs_its_release_and_error_code(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        GenerationRequest("flux-dev", "x", params={"sandbox": {"fail": True, "delay_s": 0}}),
    )
    with caplog.at_level(logging.INFO, logger="plasmaart"):
        worker(platform).drain()
    records = steps(caplog, job)
    assert [r.job_event for r in records] == [  # type: ignore[attr-defined]
        "claimed",
        "submitted",
        "released",
        "ended",
    ]
    released, ended = records[-2:]
    assert released.credits_charged == 0  # type: ignore[attr-defined]
    assert released.credits_released > 0  # type: ignore[attr-defined]
    assert (ended.status, ended.error_code) == ("failed", "generation_failed")  # type: ignore[attr-defined]
    assert ended.getMessage().startswith(f"job {job} ended failed (generation_failed) after")


def test_a_resumed_job_says_so(
    platform: Platform, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    make_user(platform, "sam@example.com", plan="starter")
    job = submit(
        platform,
        GenerationRequest("flux-schnell", "x", params={"sandbox": {"delay_s": 10}}),
    )
    first = worker(platform)
    claimed = first.claim()
    assert claimed is not None
    first.runner.stopping = lambda: True
    with caplog.at_level(logging.INFO, logger="plasmaart"):
        first.runner.run(claimed)
        clock.advance(LEASE + timedelta(seconds=11))
        second = worker(platform)
        resumed = second.claim()
        assert resumed is not None
        second.runner.run(resumed)
    records = steps(caplog, job)
    assert [r.job_event for r in records] == [  # type: ignore[attr-defined]
        "claimed",
        "submitted",
        "handed_back",
        "claimed",
        "resumed",
        "output_stored",
        "charged",
        "ended",
    ]
    again = records[3]
    # Handed back on shutdown, the first claim does not count as an attempt.
    assert (again.attempt, again.resumed) == (1, True)  # type: ignore[attr-defined]
    assert records[4].provider_request_id == records[1].provider_request_id  # type: ignore[attr-defined]

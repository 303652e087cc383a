"""The Generations API over HTTP (``/v1/generations``, ``/v1/quotes``,
``/v1/uploads``, output downloads), on SQLite and PostgreSQL, with the worker
drained in the test's thread: the policy's story of a Starter user, refunds,
refusals that write nothing, idempotent submission, the list, uploads and
image-to-video, and the live ``generation.updated`` events."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi import routing as fastapi_routing
from fastapi.dependencies import utils as dependency_utils
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import TypeAdapter
from sqlalchemy import func, select, update

from plasmaart.clock import ManualClock
from plasmaart.db.tables import generations, holds, idempotency_records, uploads
from plasmaart.ledger.invariants import check_ledger
from plasmaart.media.metadata import probe_mp4, read_png_metadata
from plasmaart.platform import Platform
from plasmaart.web.api import events as events_api
from plasmaart.web.api import generations as generations_api
from plasmaart.web.api.generations import GenerationOut
from plasmaart.web.problems import PROBLEM_JSON
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.live_server import live_server, open_stream
from tests.support.matrix import changes, snapshot

AT_ONCE = {"delay_s": 0}
STARTER_CREDITS = 2000


# -- helpers -------------------------------------------------------------------


class HttpAnswer(Protocol):
    """What the helpers read of a response (the test client's or httpx's)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


def drain(platform: Platform) -> int:
    """Run every queued job to its end in this thread; how many ran."""
    worker = Worker(platform, concurrency=4)
    worker.runner.sleep = lambda _seconds: None
    return worker.drain()


def create(
    client: TestClient, user: TestUser, model: str, prompt: str = "a red fox in snow", **body: Any
) -> HttpAnswer:
    params = body.pop("params", {})
    sandbox = body.pop("sandbox", AT_ONCE)
    payload = {"model": model, "prompt": prompt, "params": {**params, "sandbox": sandbox}, **body}
    return client.post("/v1/generations", json=payload, headers=user.auth)


def created(client: TestClient, user: TestUser, model: str, **body: Any) -> dict[str, Any]:
    answer = create(client, user, model, **body)
    assert answer.status_code == 201, answer.text
    generation: dict[str, Any] = answer.json()
    return generation


def fetch(client: TestClient, user: TestUser, generation_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/generations/{generation_id}", headers=user.auth)
    assert answer.status_code == 200, answer.text
    generation: dict[str, Any] = answer.json()
    return generation


def balance(client: TestClient, user: TestUser) -> tuple[int, int]:
    answer = client.get("/v1/balance", headers=user.auth).json()
    return answer["available"], answer["held"]


def ledger_of(client: TestClient, user: TestUser, generation_id: str) -> list[tuple[str, int]]:
    """(kind, amount) of the generation's ledger entries, oldest first."""
    entries = client.get("/v1/ledger", headers=user.auth).json()["data"]
    return [
        (e["kind"], e["amount"]) for e in reversed(entries) if e["generation_id"] == generation_id
    ]


def assert_problem(answer: HttpAnswer, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    return body


@pytest.fixture(autouse=True)
def ledger_stays_consistent(platform: Platform) -> Iterator[None]:
    """Every test ends with the ledger's invariants intact (accepted,
    refused, refunded or replayed alike)."""
    yield
    with platform.db.read() as conn:
        assert check_ledger(conn) == []


def png(size: tuple[int, int], colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def gif(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (250, 200, 0)).save(out, format="GIF")
    return out.getvalue()


def huge_png_header() -> bytes:
    """A small PNG whose header claims 5000 x 5000 px (over 4096 a side)."""
    data = bytearray(png((2, 2)))
    data[16:24] = (5000).to_bytes(4, "big") * 2
    return bytes(data)


def upload(client: TestClient, user: TestUser, data: bytes, name: str, kind: str) -> HttpAnswer:
    return client.post("/v1/uploads", files={"file": (name, data, kind)}, headers=user.auth)


def stored_uploads(platform: Platform) -> list[Path]:
    folder = platform.settings.media_dir / "uploads"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def count(platform: Platform, table: Any) -> int:
    with platform.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- the policy's story ----------------------------------------------------------


def test_a_starter_user_generates_four_images(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(
        client,
        sam,
        "flux-schnell",
        num_outputs=4,
        params={"seed": 7, "aspect_ratio": "1:1"},
    )
    assert {
        key: queued[key]
        for key in (
            "status",
            "model",
            "kind",
            "num_outputs",
            "credits_per_output",
            "credits_held",
            "credits_charged",
            "balance_after",
            "outputs",
            "error",
            "queue_position",
            "license",
        )
    } == {
        "status": "queued",
        "model": "flux-schnell",
        "kind": "text-to-image",
        "num_outputs": 4,
        "credits_per_output": 1,
        "credits_held": 4,
        "credits_charged": 0,
        "balance_after": 1996,
        "outputs": [],
        "error": None,
        "queue_position": 1,
        "license": "personal",
    }
    assert queued["id"].startswith("gen_")
    assert balance(client, sam) == (1996, 4)

    assert drain(platform) == 1
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["balance_after"]) == (
        "succeeded",
        4,
        1996,
    )
    assert (done["queue_position"], done["error"]) == (None, None)
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert len(done["outputs"]) == 4
    assert len({output["id"] for output in done["outputs"]}) == 4
    for n, output in enumerate(done["outputs"], start=1):
        assert {k: v for k, v in output.items() if k not in ("id", "url")} == {
            "content_type": "image/png",
            "width": 1024,
            "height": 1024,
            "duration_s": None,
            "watermarked": True,
            "license": "personal",
        }
        # The signed URL is the file, for anyone holding it.
        signed = client.get(output["url"])
        assert signed.status_code == 200, signed.text
        assert signed.headers["content-type"] == "image/png"
        # Shown inline in the gallery, saved under a name that says what it is.
        disposition = f'inline; filename="plasmaart-{queued["id"]}-{n}.png"'
        assert signed.headers["content-disposition"] == disposition
        with Image.open(io.BytesIO(signed.content)) as image:
            assert (image.format, image.size) == ("PNG", (1024, 1024))
        assert read_png_metadata(signed.content)["license"] == "personal"
        # The bare path needs the owner's credentials.
        path = output["url"].split("?", 1)[0]
        assert path == f"/v1/outputs/{output['id']}/content"
        assert_problem(client.get(path), 404, "not_found")
        own = client.get(path, headers=sam.auth)
        assert (own.status_code, own.content) == (200, signed.content)
        assert own.headers["content-disposition"] == disposition
    assert balance(client, sam) == (1996, 0)
    assert ledger_of(client, sam, queued["id"]) == [("hold", -4), ("capture", 0)]

    # Somebody else gets nothing of it, and a link stops working when it expires.
    eve = make_user(platform, "eve@example.com", plan="starter")
    link = done["outputs"][0]["url"]
    assert_problem(client.get(link.split("?", 1)[0], headers=eve.auth), 404, "not_found")
    assert_problem(
        client.get(f"/v1/generations/{queued['id']}", headers=eve.auth), 404, "not_found"
    )
    clock.advance(timedelta(hours=1, seconds=1))
    assert_problem(client.get(link), 404, "not_found")


def test_a_video_is_an_mp4_charged_eighty(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(client, sam, "pixverse-v4.5", prompt="waves at dusk", params={"duration_s": 5})
    assert (queued["kind"], queued["credits_held"], queued["balance_after"]) == (
        "text-to-video",
        80,
        1920,
    )
    assert drain(platform) == 1
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["balance_after"]) == (
        "succeeded",
        80,
        1920,
    )
    [output] = done["outputs"]
    assert (output["content_type"], output["width"], output["height"]) == ("video/mp4", 1280, 720)
    assert output["duration_s"] == 5
    answer = client.get(output["url"])
    assert (answer.status_code, answer.headers["content-type"]) == (200, "video/mp4")
    assert answer.headers["content-disposition"] == (
        f'inline; filename="plasmaart-{queued["id"]}-1.mp4"'
    )
    video = probe_mp4(answer.content)
    assert (video.codec, video.width, video.height) == ("h264", 1280, 720)
    assert balance(client, sam) == (1920, 0)


def test_a_failed_generation_is_refunded(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(client, sam, "flux-dev", sandbox={"fail": True, "delay_s": 0})
    assert (queued["credits_held"], queued["balance_after"]) == (5, 1995)
    assert drain(platform) == 1
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["balance_after"]) == ("failed", 0, 2000)
    assert done["error"]["code"] == "generation_failed"
    assert done["error"]["message"]
    assert done["outputs"] == []
    assert balance(client, sam) == (STARTER_CREDITS, 0)
    assert ledger_of(client, sam, queued["id"]) == [("hold", -5), ("release", 5)]


def unfinished(platform: Platform) -> list[str]:
    with platform.db.read() as conn:
        return list(
            conn.execute(
                select(generations.c.id).where(generations.c.status.in_(("queued", "running")))
            ).scalars()
        )


def test_a_partial_batch_is_charged_for_the_outputs_that_arrived(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(client, sam, "flux-dev", num_outputs=2, sandbox={"delay_s": 0, "deliver": 1})
    assert (queued["credits_held"], queued["balance_after"]) == (10, 1990)
    assert drain(platform) == 1
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["balance_after"]) == (
        "succeeded",
        5,
        1995,
    )
    assert done["error"] is None
    [output] = done["outputs"]
    assert client.get(output["url"]).status_code == 200
    assert balance(client, sam) == (1995, 0)
    # 1 x 5 credits consumed, the other 5 back in the wallet.
    assert ledger_of(client, sam, queued["id"]) == [("hold", -10), ("capture", 0), ("release", 5)]
    assert unfinished(platform) == []


def test_a_result_whose_downloads_are_refused_fails_and_costs_nothing(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(
        client, sam, "flux-schnell", num_outputs=3, sandbox={"delay_s": 0, "fail_download": True}
    )
    assert drain(platform) == 1
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["balance_after"]) == (
        "failed",
        0,
        STARTER_CREDITS,
    )
    assert done["error"]["code"] == "output_unavailable"
    assert "3 of 3 outputs" in done["error"]["message"]
    assert done["outputs"] == []
    assert balance(client, sam) == (STARTER_CREDITS, 0)
    assert ledger_of(client, sam, queued["id"]) == [("hold", -3), ("release", 3)]
    assert unfinished(platform) == []
    # The Free plan's one job at a time is free again.
    fay = make_user(platform, "fay@example.com", credits=10)
    stuck = created(client, fay, "flux-schnell", sandbox={"delay_s": 0, "fail_download": True})
    after = created(client, fay, "flux-schnell")
    assert drain(platform) == 2
    assert fetch(client, fay, stuck["id"])["status"] == "failed"
    assert fetch(client, fay, after["id"])["status"] == "succeeded"
    assert balance(client, fay) == (9, 0)


class CrashingDownloads:
    """The provider, but downloading output ``crash_at`` raises what no
    provider error is (a bug, a worker dying mid-copy): the exception leaves
    the runner and the job stays leased until its lease runs out."""

    def __init__(self, provider: Any, crash_at: int) -> None:
        self.provider = provider
        self.crash_at = crash_at
        self.name = provider.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)

    def download(self, output: Any) -> bytes:
        if str(output.url).endswith(f"/{self.crash_at}"):
            raise RuntimeError("the worker died while copying this output")
        data: bytes = self.provider.download(output)
        return data


def test_a_job_whose_worker_keeps_crashing_ends_at_the_attempts_cap(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(client, sam, "flux-dev", num_outputs=2)
    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = lambda _seconds: None
    worker.runner.lease = timedelta(seconds=5)
    worker.runner.provider = CrashingDownloads(platform.provider, crash_at=1)  # type: ignore[assignment]
    crashes = 0
    for _ in range(8):
        claimed = worker.claim()
        if claimed is None:
            break
        try:
            worker.runner.run(claimed)
        except RuntimeError:
            crashes += 1
        clock.advance(timedelta(seconds=6))  # the crashed worker's lease runs out
    assert crashes == 5  # the default cap (PLASMAART_MAX_JOB_ATTEMPTS)
    done = fetch(client, sam, queued["id"])
    # The first output was stored on the first attempt: it is delivered and
    # charged; the one that never arrived is released.
    assert (done["status"], done["credits_charged"], len(done["outputs"])) == ("succeeded", 5, 1)
    assert done["error"]["code"] == "attempts_exhausted"
    assert balance(client, sam) == (1995, 0)
    assert ledger_of(client, sam, queued["id"]) == [("hold", -10), ("capture", 0), ("release", 5)]
    assert unfinished(platform) == []
    with platform.db.read() as conn:
        row = conn.execute(select(generations).where(generations.c.id == queued["id"])).one()
    assert row.attempts == 6


def test_cancel_ends_a_job_whose_downloads_keep_failing(
    client: TestClient, platform: Platform
) -> None:
    from plasmaart.generation.providers.base import ProviderUnavailable

    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(client, sam, "flux-schnell", num_outputs=2)

    class Unreachable(CrashingDownloads):
        def download(self, output: Any) -> bytes:
            raise ProviderUnavailable(f"{output.url}: HTTP 503")

    canceled: list[int] = []

    def sleep(_seconds: float) -> None:
        # The user gives up on the job while the worker is retrying.
        if not canceled:
            answer = client.post(f"/v1/generations/{queued['id']}/cancel", headers=sam.auth)
            canceled.append(answer.status_code)
            assert answer.json()["status"] == "running"

    worker = Worker(platform, concurrency=1)
    worker.runner.sleep = sleep
    worker.runner.provider = Unreachable(platform.provider, crash_at=-1)  # type: ignore[assignment]
    claimed = worker.claim()
    assert claimed is not None
    worker.runner.run(claimed)
    assert canceled == [200]
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["outputs"]) == ("canceled", 0, [])
    assert done["error"]["code"] == "canceled"
    assert balance(client, sam) == (STARTER_CREDITS, 0)
    assert ledger_of(client, sam, queued["id"]) == [("hold", -2), ("release", 2)]
    assert unfinished(platform) == []


def test_a_test_clock_jump_neither_times_out_running_jobs_nor_frees_their_leases(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    """Billing time jumps three days; the job's deadline and lease measure
    real time, so it runs on, on the same worker, and succeeds."""
    sam = make_user(platform, "sam@example.com", plan="starter")
    root = make_user(platform, "root@example.com", admin=True)
    queued = created(client, sam, "flux-dev", sandbox={"delay_s": 30})
    first = Worker(platform, concurrency=1)
    first.runner.sleep = lambda _seconds: None
    claimed = first.claim()
    assert claimed is not None

    def polls(count: int) -> None:
        """Run the job for ``count`` polls of the provider, then leave it."""
        ticks = iter([False] * count)
        first.runner.stopping = lambda: next(ticks, True)
        first.runner.run(claimed)

    polls(1)  # submitted to the provider, still generating
    jumped = client.post("/v1/admin/clock/advance", json={"days": 3}, headers=root.auth)
    assert jumped.status_code == 200, jumped.text
    assert platform.clock.now() >= clock.now() + timedelta(days=3)
    # The lease has not run out: no other worker may take the job.
    assert Worker(platform, concurrency=1).claim() is None
    polls(1)
    assert fetch(client, sam, queued["id"])["status"] == "running"
    clock.advance(timedelta(seconds=31))  # the provider finishes
    polls(2)
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"], done["error"]) == ("succeeded", 5, None)
    # What users see stays on billing time: it ended three days after it began.
    started = done["created_at"]
    finished = done["finished_at"]
    from datetime import datetime

    assert datetime.fromisoformat(finished) - datetime.fromisoformat(started) >= timedelta(days=3)
    assert balance(client, sam) == (1995, 0)
    assert unfinished(platform) == []


def test_a_queued_generation_canceled_is_refunded(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    queued = created(client, sam, "flux-schnell", num_outputs=3)
    answer = client.post(f"/v1/generations/{queued['id']}/cancel", headers=sam.auth)
    assert answer.status_code == 200, answer.text
    canceled = answer.json()
    assert (canceled["status"], canceled["credits_charged"], canceled["balance_after"]) == (
        "canceled",
        0,
        STARTER_CREDITS,
    )
    assert canceled["error"]["code"] == "canceled"
    assert canceled["queue_position"] is None
    assert balance(client, sam) == (STARTER_CREDITS, 0)
    # Nothing left to run, and canceling again changes nothing.
    assert drain(platform) == 0
    before = snapshot(platform)
    again = client.post(f"/v1/generations/{queued['id']}/cancel", headers=sam.auth)
    assert (again.status_code, again.json()["status"]) == (200, "canceled")
    assert changes(before, snapshot(platform)) == []
    assert ledger_of(client, sam, queued["id"]) == [("hold", -3), ("release", 3)]
    assert fetch(client, sam, queued["id"])["status"] == "canceled"


def test_cancel_of_someone_elses_generation_is_not_found(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    eve = make_user(platform, "eve@example.com", plan="starter")
    queued = created(client, sam, "flux-schnell")
    before = snapshot(platform)
    refused = client.post(f"/v1/generations/{queued['id']}/cancel", headers=eve.auth)
    body = assert_problem(refused, 404, "not_found")
    assert sam.id not in refused.text
    assert sam.email not in refused.text
    assert body["status"] == 404
    assert changes(before, snapshot(platform)) == []
    assert fetch(client, sam, queued["id"])["status"] == "queued"


def studio_team(client: TestClient, platform: Platform) -> tuple[TestUser, list[TestUser], str]:
    """A Studio owner's team with two members who joined; the team's id."""
    owner = make_user(platform, "owner@example.com", plan="studio")
    team = client.post("/v1/teams", json={"name": "Night Shift"}, headers=owner.auth).json()
    members = []
    for name in ("ann", "ben"):
        member = make_user(platform, f"{name}@example.com")
        invitation = client.post(
            f"/v1/teams/{team['id']}/invitations", json={"email": member.email}, headers=owner.auth
        ).json()
        joined = client.post(f"/v1/invitations/{invitation['token']}/accept", headers=member.auth)
        assert joined.status_code == 200, joined.text
        members.append(member)
    return owner, members, team["id"]


def test_in_a_team_only_the_submitter_and_the_owner_may_cancel(
    client: TestClient, platform: Platform
) -> None:
    owner, (ann, ben), team_id = studio_team(client, platform)
    outsider = make_user(platform, "eve@example.com", plan="studio")
    by_ann = created(client, ann, "flux-schnell", team_id=team_id)
    by_owner = created(client, owner, "flux-schnell", team_id=team_id)
    assert (by_ann["can_cancel"], by_owner["can_cancel"]) == (True, True)
    # Every member reads both; only the submitter and the owner may cancel.
    may = {
        (who.email, generation["id"]): fetch(client, who, generation["id"])["can_cancel"]
        for who in (owner, ann, ben)
        for generation in (by_ann, by_owner)
    }
    assert may == {
        ("owner@example.com", by_ann["id"]): True,
        ("owner@example.com", by_owner["id"]): True,
        ("ann@example.com", by_ann["id"]): True,
        ("ann@example.com", by_owner["id"]): False,
        ("ben@example.com", by_ann["id"]): False,
        ("ben@example.com", by_owner["id"]): False,
    }
    listed = client.get("/v1/generations", params={"team_id": team_id}, headers=ben.auth).json()
    assert {(g["id"], g["can_cancel"]) for g in listed["data"]} == {
        (by_ann["id"], False),
        (by_owner["id"], False),
    }

    # Another member: 403 forbidden (they can read it), and nothing written.
    for caller, generation in ((ben, by_ann), (ann, by_owner)):
        before = snapshot(platform)
        refused = client.post(f"/v1/generations/{generation['id']}/cancel", headers=caller.auth)
        body = assert_problem(refused, 403, "forbidden")
        assert "owner" in body["detail"]
        assert changes(before, snapshot(platform)) == []
    # Outside the team it does not exist.
    before = snapshot(platform)
    refused = client.post(f"/v1/generations/{by_ann['id']}/cancel", headers=outsider.auth)
    assert_problem(refused, 404, "not_found")
    assert changes(before, snapshot(platform)) == []
    assert fetch(client, owner, by_ann["id"])["status"] == "queued"

    # The owner cancels a member's job; the submitter cancels their own.
    answer = client.post(f"/v1/generations/{by_ann['id']}/cancel", headers=owner.auth)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["can_cancel"]) == ("canceled", False)
    by_ann_again = created(client, ann, "flux-schnell", team_id=team_id)
    answer = client.post(f"/v1/generations/{by_ann_again['id']}/cancel", headers=ann.auth)
    assert (answer.status_code, answer.json()["status"]) == (200, "canceled")
    # A finished one is refused to other members all the same.
    refused = client.post(f"/v1/generations/{by_ann['id']}/cancel", headers=ben.auth)
    assert_problem(refused, 403, "forbidden")
    # A member who leaves may still cancel what they submitted.
    by_ben = created(client, ben, "flux-schnell", team_id=team_id)
    left = client.delete(f"/v1/teams/{team_id}/members/{ben.id}", headers=ben.auth)
    assert left.status_code in (200, 204), left.text
    answer = client.post(f"/v1/generations/{by_ben['id']}/cancel", headers=ben.auth)
    assert (answer.status_code, answer.json()["status"]) == (200, "canceled")
    assert balance(client, owner)[1] == by_owner["credits_held"]


# -- refusals --------------------------------------------------------------------


def test_veo3_is_not_in_the_starter_plan(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    before = snapshot(platform)
    refused = create(client, sam, "veo3", prompt="a comet", params={"duration_s": 8})
    body = assert_problem(refused, 403, "model_not_in_plan")
    assert body["required_plan"] == "pro"
    # The detail names the plan as people know it; required_plan is its id.
    assert body["detail"] == "Veo3 is not part of the Starter plan; Pro includes it"
    assert changes(before, snapshot(platform)) == []
    quote = client.post(
        "/v1/quotes", json={"model": "veo3", "prompt": "a comet"}, headers=sam.auth
    ).json()
    assert (quote["credits"], quote["available"], quote["allowed"]) == (800, 2000, False)
    assert quote["reason"] == body["detail"]
    assert balance(client, sam) == (STARTER_CREDITS, 0)


def test_insufficient_credits_is_402_and_writes_nothing(
    client: TestClient, platform: Platform
) -> None:
    fay = make_user(platform, "fay@example.com", credits=3)  # Free, 3 credits
    before = snapshot(platform)
    refused = create(client, fay, "flux-dev")
    body = assert_problem(refused, 402, "insufficient_credits")
    assert (body["required"], body["available"]) == (5, 3)
    assert body["detail"] == "this needs 5 credits and 3 are available"
    assert changes(before, snapshot(platform)) == []
    quote = client.post(
        "/v1/quotes", json={"model": "flux-dev", "prompt": "x"}, headers=fay.auth
    ).json()
    assert (quote["credits"], quote["available"], quote["available_after"]) == (5, 3, -2)
    assert quote["allowed"] is False
    assert quote["reason"] == body["detail"]
    assert balance(client, fay) == (3, 0)


def test_a_refusal_for_one_credit_says_credit_not_credits(
    client: TestClient, platform: Platform
) -> None:
    zed = make_user(platform, "zed@example.com")  # Free, no credits
    refused = create(client, zed, "flux-schnell")
    body = assert_problem(refused, 402, "insufficient_credits")
    assert body["detail"] == "this needs 1 credit and 0 are available"
    one = make_user(platform, "one@example.com", credits=1)
    refused = create(client, one, "flux-schnell", num_outputs=2)
    assert assert_problem(refused, 402, "insufficient_credits")["detail"] == (
        "this needs 2 credits and 1 is available"
    )


def other_users_upload(client: TestClient, platform: Platform) -> str:
    eve = make_user(platform, "eve@example.com")
    answer = upload(client, eve, png((64, 64)), "eve.png", "image/png")
    assert answer.status_code == 201, answer.text
    upload_id: str = answer.json()["id"]
    return upload_id


INVALID = [
    pytest.param({"model": "no-such-model"}, "model", id="unknown-model"),
    pytest.param({"model": "flux-schnell", "num_outputs": 5}, "num_outputs", id="too-many"),
    pytest.param({"model": "flux-schnell", "num_outputs": 0}, "num_outputs", id="no-outputs"),
    pytest.param(
        {"model": "flux-schnell", "params": {"duration_s": 5}},
        "params.duration_s",
        id="param-unknown-to-the-model",
    ),
    pytest.param(
        {"model": "flux-schnell", "params": {"aspect_ratio": "2:1"}},
        "params.aspect_ratio",
        id="param-out-of-range",
    ),
    pytest.param({"model": "pixverse-v4.5-i2v"}, "upload_id", id="image-missing"),
    pytest.param(
        {"model": "pixverse-v4.5-i2v", "upload_id": "OTHER"}, "upload_id", id="others-upload"
    ),
    pytest.param({"model": "flux-schnell", "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"model": "flux-schnell", "prompt": "   "}, "prompt", id="blank-prompt"),
    # The sandbox's fault injection is checked at submission, not by the worker.
    pytest.param(
        {"model": "flux-schnell", "num_outputs": 2, "params": {"sandbox": {"deliver": 2}}},
        "params.sandbox.deliver",
        id="deliver-every-output",
    ),
    pytest.param(
        {"model": "flux-schnell", "num_outputs": 3, "params": {"sandbox": {"deliver": 0}}},
        "params.sandbox.deliver",
        id="deliver-none",
    ),
    pytest.param(
        {"model": "flux-schnell", "num_outputs": 3, "params": {"sandbox": {"deliver": "2"}}},
        "params.sandbox.deliver",
        id="deliver-not-a-number",
    ),
    pytest.param(
        {"model": "flux-schnell", "params": {"sandbox": {"deliver": 1}}},
        "params.sandbox.deliver",
        id="deliver-of-one-output",
    ),
    pytest.param(
        {"model": "flux-schnell", "params": {"sandbox": {"fail_download": "yes"}}},
        "params.sandbox.fail_download",
        id="fail-download-not-a-flag",
    ),
    pytest.param(
        {"model": "flux-schnell", "params": {"sandbox": {"delay_s": 601}}},
        "params.sandbox.delay_s",
        id="delay-too-long",
    ),
    pytest.param(
        {"model": "flux-schnell", "params": {"sandbox": {"explode": True}}},
        "params.sandbox.explode",
        id="sandbox-unknown-key",
    ),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_input_is_422_and_writes_nothing(
    client: TestClient, platform: Platform, body: dict[str, Any], field: str
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    if body.get("upload_id") == "OTHER":
        body = {**body, "upload_id": other_users_upload(client, platform)}
    payload = {"prompt": "a red fox", **body}
    before = snapshot(platform)
    refused = client.post("/v1/generations", json=payload, headers=sam.auth)
    problem = assert_problem(refused, 422, "invalid_input")
    assert field in [error["field"] for error in problem["errors"]], problem
    assert all(error["message"] for error in problem["errors"])
    assert changes(before, snapshot(platform)) == []
    assert balance(client, sam) == (STARTER_CREDITS, 0)


# -- idempotency, quotes, the list ---------------------------------------------------


def test_an_idempotency_key_replays_and_holds_once(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    payload = {"model": "flux-schnell", "prompt": "a kite", "num_outputs": 2}
    headers = {**sam.auth, "Idempotency-Key": "kite-1"}
    first = client.post("/v1/generations", json=payload, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/generations", json=payload, headers=headers)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert (count(platform, generations), count(platform, holds)) == (1, 1)
    assert balance(client, sam) == (1998, 2)
    # The same key with another body is a conflict, and holds nothing more.
    other = client.post("/v1/generations", json={**payload, "num_outputs": 3}, headers=headers)
    assert_problem(other, 409, "idempotency_conflict")
    # Another key is another generation.
    fresh = client.post(
        "/v1/generations", json=payload, headers={**sam.auth, "Idempotency-Key": "kite-2"}
    )
    assert fresh.status_code == 201
    assert fresh.json()["id"] != first.json()["id"]
    assert balance(client, sam) == (1996, 4)


def test_a_key_left_running_by_a_dead_process_is_taken_over_without_a_second_job(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    """The crash window: the generation was committed, then the process died
    before storing the answer, so the key's record still says "running". A
    retry is refused (409, retry shortly) until the takeover time, then runs
    again and answers the same generation, holding nothing more."""
    sam = make_user(platform, "sam@example.com", plan="starter")
    payload = {"model": "flux-schnell", "prompt": "a kite", "num_outputs": 2}
    headers = {**sam.auth, "Idempotency-Key": "kite-crash"}
    first = client.post("/v1/generations", json=payload, headers=headers)
    assert first.status_code == 201, first.text
    with platform.db.write() as conn:
        conn.execute(
            update(idempotency_records)
            .where(idempotency_records.c.key == "kite-crash")
            .values(status="running", response_status=None, response_body=None)
        )
    refused = client.post("/v1/generations", json=payload, headers=headers)
    assert_problem(refused, 409, "idempotency_conflict")
    assert refused.headers["retry-after"] == "1"
    clock.advance(timedelta(seconds=platform.settings.idempotency_takeover_s + 1))
    again = client.post("/v1/generations", json=payload, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]
    assert (count(platform, generations), count(platform, holds)) == (1, 1)
    assert balance(client, sam) == (1998, 2)


def test_a_key_reused_from_another_api_key_never_answers_for_another_request(
    client: TestClient, platform: Platform
) -> None:
    """The middleware scopes keys by credential; the submission also looks the
    key up per user. Whichever scope wins, a request must never be answered
    with the generation of a *different* request: either it is a conflict
    (409, API.md: same key, another body) or it is a generation of its own."""
    sam = make_user(platform, "sam@example.com", plan="starter")
    with platform.db.write() as conn:
        laptop = platform.credentials.create_api_key(conn, sam.id, "laptop")
    first = client.post(
        "/v1/generations",
        json={"model": "flux-schnell", "prompt": "a kite"},
        headers={**sam.auth, "Idempotency-Key": "shared"},
    )
    assert first.status_code == 201, first.text
    other_body = {"model": "flux-dev", "prompt": "a boat", "num_outputs": 2}
    second = client.post(
        "/v1/generations",
        json=other_body,
        headers={"Authorization": f"Bearer {laptop.secret}", "Idempotency-Key": "shared"},
    )
    if second.status_code == 409:
        assert_problem(second, 409, "idempotency_conflict")
        assert balance(client, sam) == (1999, 1)
        return
    assert second.status_code == 201, second.text
    answered = second.json()
    assert (answered["model"], answered["prompt"], answered["num_outputs"]) == (
        "flux-dev",
        "a boat",
        2,
    ), f"answered with generation {answered['id']} of another request (first: {first.json()['id']})"
    assert balance(client, sam) == (1989, 11)


def test_a_quote_holds_nothing(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    before = snapshot(platform)
    answer = client.post(
        "/v1/quotes",
        json={"model": "flux-schnell", "prompt": "a fox", "num_outputs": 4, "params": {"seed": 1}},
        headers=sam.auth,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "credits": 4,
        "available": 2000,
        "available_after": 1996,
        "allowed": True,
        "reason": None,
    }
    assert changes(before, snapshot(platform)) == []
    assert balance(client, sam) == (STARTER_CREDITS, 0)
    # A quote validates like a submission.
    refused = client.post(
        "/v1/quotes",
        json={"model": "flux-schnell", "prompt": "a fox", "params": {"fps": 30}},
        headers=sam.auth,
    )
    problem = assert_problem(refused, 422, "invalid_input")
    assert [error["field"] for error in problem["errors"]] == ["params.fps"]


def test_the_list_is_newest_first_with_cursor_and_filters(
    client: TestClient, platform: Platform
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    eve = make_user(platform, "eve@example.com", plan="starter")
    first = created(client, sam, "flux-schnell", prompt="first")
    failing = created(
        client, sam, "flux-dev", prompt="second", sandbox={"fail": True, "delay_s": 0}
    )
    assert drain(platform) == 2
    last = created(client, sam, "flux-schnell", prompt="third")
    created(client, eve, "flux-schnell", prompt="eve's")

    def ids(query: str, user: TestUser = sam) -> tuple[list[str], str | None]:
        answer = client.get(f"/v1/generations{query}", headers=user.auth)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return [g["id"] for g in body["data"]], body["next_cursor"]

    page, cursor = ids("?limit=2")
    assert page == [last["id"], failing["id"]]
    assert cursor is not None
    assert ids(f"?limit=2&cursor={cursor}") == ([first["id"]], None)
    assert ids("") == ([last["id"], failing["id"], first["id"]], None)
    assert ids("?status=failed") == ([failing["id"]], None)
    assert ids("?status=succeeded") == ([first["id"]], None)
    assert ids("?status=queued") == ([last["id"]], None)
    assert ids("?model=flux-schnell") == ([last["id"], first["id"]], None)
    assert ids("?model=flux-dev&status=queued") == ([], None)
    assert len(ids("", eve)[0]) == 1
    listed = client.get("/v1/generations?status=succeeded", headers=sam.auth).json()["data"]
    assert listed[0]["outputs"][0]["url"].startswith(f"/v1/outputs/{listed[0]['outputs'][0]['id']}")
    assert_problem(
        client.get("/v1/generations?status=done", headers=sam.auth), 422, "invalid_input"
    )


# -- uploads and image-to-video -------------------------------------------------------


def test_a_png_upload_is_accepted(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    data = png((40, 30))
    answer = upload(client, sam, data, "photo.png", "image/png")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["id"].startswith("upl_")
    assert (body["content_type"], body["width"], body["height"]) == ("image/png", 40, 30)
    fetched = client.get(body["url"])
    assert (fetched.status_code, fetched.headers["content-type"]) == (200, "image/png")
    assert fetched.content == data
    path = body["url"].split("?", 1)[0]
    assert path == f"/v1/uploads/{body['id']}/content"
    assert_problem(client.get(path), 404, "not_found")
    assert client.get(path, headers=sam.auth).content == data
    assert count(platform, uploads) == 1


HTML_PAGE = b"<!doctype html><html><script>alert(1)</script></html>"
REFUSED_UPLOADS = [
    # (the file, its name, the type it is sent as, what the refusal says)
    pytest.param(lambda: gif((8, 8)), "anim.gif", "image/gif", "PNG, JPEG and WebP", id="gif"),
    pytest.param(
        lambda: HTML_PAGE, "pretty.png", "image/png", "PNG, JPEG and WebP", id="html-as-png"
    ),
    pytest.param(huge_png_header, "huge.png", "image/png", "4096", id="oversized-png-header"),
]


@pytest.mark.parametrize(("make", "name", "kind", "says"), REFUSED_UPLOADS)
def test_refused_uploads_are_422_and_write_nothing(
    client: TestClient, platform: Platform, make: Any, name: str, kind: str, says: str
) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    before = snapshot(platform)
    refused = upload(client, sam, make(), name, kind)
    problem = assert_problem(refused, 422, "invalid_input")
    assert [error["field"] for error in problem["errors"]] == ["file"]
    assert says in problem["errors"][0]["message"]
    assert changes(before, snapshot(platform)) == []
    assert stored_uploads(platform) == []


def test_image_to_video_from_an_upload(client: TestClient, platform: Platform) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    portrait = upload(client, sam, png((360, 640), (200, 90, 20)), "tall.png", "image/png")
    assert portrait.status_code == 201, portrait.text
    queued = created(
        client,
        sam,
        "pixverse-v4.5-i2v",
        prompt="the leaves start to move",
        upload_id=portrait.json()["id"],
        params={"duration_s": 5},
    )
    assert (queued["kind"], queued["credits_held"], queued["balance_after"]) == (
        "image-to-video",
        80,
        1920,
    )
    assert drain(platform) == 1
    done = fetch(client, sam, queued["id"])
    assert (done["status"], done["credits_charged"]) == ("succeeded", 80), done["error"]
    [output] = done["outputs"]
    # The video takes the upload's (portrait) orientation.
    assert (output["content_type"], output["width"], output["height"]) == ("video/mp4", 720, 1280)
    video = probe_mp4(client.get(output["url"]).content)
    assert (video.codec, video.width, video.height) == ("h264", 720, 1280)
    assert balance(client, sam) == (1920, 0)


# -- live events -------------------------------------------------------------------


@pytest.fixture
def server(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(events_api, "HEARTBEAT_S", 0.2)
    with live_server(platform) as base_url:
        yield base_url


def test_generation_updated_events_follow_the_job(platform: Platform, server: str) -> None:
    sam = make_user(platform, "sam@example.com", plan="starter")
    with open_stream(server, sam.auth) as stream, httpx.Client(base_url=server) as http:
        answer = http.post(
            "/v1/generations",
            json={"model": "flux-schnell", "prompt": "a heron", "params": {"sandbox": AT_ONCE}},
            headers=sam.auth,
        )
        assert answer.status_code == 201, answer.text
        generation_id = answer.json()["id"]
        seen: list[dict[str, Any]] = []

        def next_update() -> dict[str, Any]:
            while True:
                event = stream.next_event()
                if event.event == "generation.updated":
                    data: dict[str, Any] = event.data
                    seen.append(data)
                    return data

        assert next_update()["status"] == "queued"
        assert drain(platform) == 1
        while seen[-1]["status"] != "succeeded":
            next_update()
    assert {update["id"] for update in seen} == {generation_id}
    assert [update["status"] for update in seen] == ["queued", "running", "succeeded"]
    assert (seen[0]["credits_held"], seen[0]["queue_position"]) == (1, 1)
    assert (seen[-1]["credits_charged"], seen[-1]["balance_after"]) == (1, 1999)


def test_a_submissions_answer_is_written_once_as_the_framework_would(
    client: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route writes its 201 itself: FastAPI does not validate the answer
    a second time (in a second hop to the thread pool), and the bytes are
    those its response-model path writes."""
    framework_serialized: list[object] = []
    original = fastapi_routing.serialize_response

    async def counting(**kwargs: Any) -> Any:
        framework_serialized.append(kwargs.get("response_content"))
        return await original(**kwargs)

    monkeypatch.setattr(fastapi_routing, "serialize_response", counting)
    sam = make_user(platform, "sam@example.com", plan="starter")
    answer = client.post(
        "/v1/generations",
        json={"model": "flux-schnell", "prompt": "a kite", "params": {"sandbox": {"delay_s": 0}}},
        headers=sam.auth,
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert framework_serialized == []
    written = GenerationOut.model_validate(answer.json())
    assert answer.content == TypeAdapter(GenerationOut).dump_json(written, by_alias=True)
    # The same generation read back is the same object.
    again = client.get(f"/v1/generations/{written.id}", headers=sam.auth)
    assert again.status_code == 200
    assert {k: v for k, v in again.json().items() if k != "queue_position"} == {
        k: v for k, v in answer.json().items() if k != "queue_position"
    }
    # The OpenAPI document still describes the answer.
    document = client.get("/openapi.json").json()
    created_answer = document["paths"]["/v1/generations"]["post"]["responses"]["201"]
    assert created_answer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerationOut"
    }


def test_a_submission_hops_to_the_thread_pool_only_for_what_may_block(
    client: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding the platform blocks nothing: it runs on the event loop. The
    caller's principal, the rate limit (both may read the database or Redis)
    and the endpoint run in the thread pool, once each."""
    hops: list[str] = []
    original = dependency_utils.run_in_threadpool

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(dependency_utils, "run_in_threadpool", counting)
    monkeypatch.setattr(fastapi_routing, "run_in_threadpool", counting)
    sam = make_user(platform, "sam@example.com", plan="starter")
    answer = client.post(
        "/v1/generations",
        json={"model": "flux-schnell", "prompt": "a kite", "params": {"sandbox": {"delay_s": 0}}},
        headers=sam.auth,
    )
    assert answer.status_code == 201, answer.text
    assert "get_platform" not in hops
    # The two dependencies, then the endpoint (wrapped by FastAPI).
    assert hops[:2] == ["require_principal", "limit_generation_requests"]
    assert len(hops) == 3


def test_the_generation_routes_come_first_and_shadow_no_other_route(client: TestClient) -> None:
    """The router tries its routers in order: the generation routes (the
    busiest) come first, which changes nothing only while none of them
    matches the path of another route of the same method, nor another one
    theirs."""
    included = [
        route.original_router  # FastAPI keeps each included router whole
        for route in client.app.router.routes  # type: ignore[attr-defined]
        if hasattr(route, "original_router")
    ]
    assert included[0] is generations_api.router
    ours = [r for r in generations_api.router.routes if isinstance(r, APIRoute)]
    others = [r for router in included[1:] for r in router.routes if isinstance(r, APIRoute)]
    assert ours
    assert others
    for mine in ours:
        for other in others:
            if mine.methods & other.methods:
                assert not mine.path_regex.match(other.path_format), (mine.path, other.path)
                assert not other.path_regex.match(mine.path_format), (mine.path, other.path)

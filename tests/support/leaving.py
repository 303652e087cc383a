"""An account with something of everything, for the export and deletion
tests: finished generations with files, a queued one, a running one, an
upload, a session, a notification, a payment, an API key."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from plasmaart.db.tables import generation_outputs, generations, uploads
from plasmaart.generation.service import Generation, GenerationRequest
from plasmaart.platform import Platform
from plasmaart.worker import Worker
from tests.support.accounts import PASSWORD, TestUser

MODEL = "flux-schnell"
AT_ONCE = {"aspect_ratio": "16:9", "sandbox": {"delay_s": 0}}
SLOW = {"aspect_ratio": "16:9", "sandbox": {"delay_s": 600}}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


def submit(
    platform: Platform,
    user: TestUser,
    prompt: str,
    *,
    team_id: str | None = None,
    params: Mapping[str, object] | None = None,
) -> Generation:
    with platform.db.write() as conn:
        return platform.generations.submit(
            conn,
            platform.accounts.get(conn, user.id),
            GenerationRequest(MODEL, prompt, team_id=team_id, params=params or AT_ONCE),
        )


def run_all(platform: Platform) -> int:
    worker = Worker(platform, concurrency=4)
    worker.runner.sleep = lambda _seconds: None
    return worker.drain()


@dataclass(frozen=True)
class Busy:
    finished: tuple[str, ...]
    queued: str
    upload_id: str
    storage_keys: tuple[str, ...]


def storage_keys(platform: Platform, user_id: str) -> tuple[str, ...]:
    """The keys of the user's outputs and uploads, as the database lists them."""
    with platform.db.read() as conn:
        outputs = conn.execute(
            select(generation_outputs.c.storage_key)
            .join(generations, generations.c.id == generation_outputs.c.generation_id)
            .where(generations.c.user_id == user_id)
        ).scalars()
        uploaded = conn.execute(
            select(uploads.c.storage_key).where(uploads.c.user_id == user_id)
        ).scalars()
        return tuple(sorted([*outputs, *uploaded]))


def make_busy(platform: Platform, client: TestClient, *users: tuple[TestUser, str]) -> list[Busy]:
    """For each ``(user, tag)``: two finished generations (one file each),
    one queued, an upload, a notification and a signed-in session. The
    queued ones are submitted after the others ran: a worker never runs them."""
    finished = [
        (
            submit(platform, user, f"{tag}: a lighthouse at dusk").id,
            submit(platform, user, f"{tag}: a fox in the snow").id,
        )
        for user, tag in users
    ]
    assert run_all(platform) == 2 * len(users)
    made = []
    for (user, tag), done in zip(users, finished, strict=True):
        queued = submit(platform, user, f"{tag}: still waiting", params=SLOW)
        uploaded = client.post(
            "/v1/uploads", headers=user.auth, files={"file": ("red.png", png(), "image/png")}
        )
        assert uploaded.status_code == 201, uploaded.text
        with platform.db.write() as conn:
            platform.notifications.notify(
                conn, user.id, "catalog.change", f"{tag} news", f"{tag}: Veo 3 costs more."
            )
        logged_in = client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
        assert logged_in.status_code == 200, logged_in.text
        client.cookies.clear()
        made.append(Busy(done, queued.id, uploaded.json()["id"], storage_keys(platform, user.id)))
    return made

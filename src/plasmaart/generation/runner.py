"""Running one claimed job to its end (DESIGN.md §4).

submit to the provider and store its request id (before waiting, so that a
worker that dies can be replaced by one that resumes from it) → poll → on
success copy the outputs into our storage (watermarked unless the plan and the
user's setting allow removal, license in the file) → capture credits x outputs
delivered → succeeded. Failure, timeout or cancellation → release → failed or
canceled. Every write is conditional on the job's fencing token, and the
ledger's idempotency keys make a finalisation that is retried (or repeated by
the worker that takes over) charge once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection, insert

from plasmaart.catalog import Catalog, ModelSpec
from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import Database
from plasmaart.db.tables import generation_outputs, uploads
from plasmaart.generation import queue
from plasmaart.generation import repository as repo
from plasmaart.generation.providers.base import (
    Provider,
    ProviderOutput,
    ProviderRejected,
    ProviderRequest,
    ProviderStatus,
    ProviderUnavailable,
)
from plasmaart.generation.service import GenerationService
from plasmaart.generation.wakeups import PollWakeups
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService
from plasmaart.media import metadata, watermark
from plasmaart.media.storage import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

# The default; ``Settings.job_lease_s`` sets it.
LEASE = timedelta(seconds=60)
# Longest a job may run, by kind of model, before it is failed and released.
TIMEOUTS = {
    "text-to-image": timedelta(minutes=5),
    "text-to-video": timedelta(minutes=20),
    "image-to-video": timedelta(minutes=20),
}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}


class LeaseLost(Exception):
    """Another worker owns the job now: stop touching it."""


@dataclass
class JobRunner:
    db: Database
    clock: Clock
    catalog: Catalog
    ledger: LedgerService
    generations: GenerationService
    provider: Provider
    storage: Storage
    poll_interval_s: float = 0.25
    lease: timedelta = LEASE
    retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    sleep: Callable[[float], None] = time.sleep
    stopping: Callable[[], bool] = lambda: False
    # With provider webhooks (PLASMAART_FAL_WEBHOOK_URL): the URL the provider
    # calls when a job finishes, and the wake-ups that end the wait between
    # two polls of that job early. Without, polls keep to the interval.
    webhook_url: str | None = None
    wakeups: PollWakeups | None = None

    def run(self, claim: queue.Claim) -> None:
        # The lease is renewed in the background for as long as the job runs,
        # whatever step it is in: copying large outputs or waiting out provider
        # retries can take longer than a lease, and a job whose lease ran out
        # mid-step would be taken over, and its step started again, forever.
        keeper = threading.Event()
        renewing = threading.Thread(
            target=self._keep_lease, args=(claim, keeper), name=f"lease-{claim.id}", daemon=True
        )
        renewing.start()
        if self.wakeups is not None:
            self.wakeups.watch(claim.id)
        try:
            self._run(claim)
        except LeaseLost:
            log.warning("lost the lease of %s; another worker has it", claim.id)
        finally:
            if self.wakeups is not None:
                self.wakeups.unwatch(claim.id)
            keeper.set()
            renewing.join()

    def _keep_lease(self, claim: queue.Claim, done: threading.Event) -> None:
        every = self.lease.total_seconds() / 3
        while not done.wait(every):
            try:
                with self.db.write() as conn:
                    kept = queue.renew(conn, claim.id, claim.token, self.clock.now() + self.lease)
            except Exception:  # the next renewal tries again; the lease is 3 periods long
                log.exception("could not renew the lease of %s", claim.id)
                continue
            if not kept:  # finished, or another worker has it: the job's own writes will see
                return

    # -- the steps -----------------------------------------------------------

    def _run(self, claim: queue.Claim) -> None:
        with self.db.read() as conn:
            row = repo.get_generation(conn, claim.id)
        if row is None:  # pragma: no cover - claimed rows exist
            return
        model = self.catalog.model(row.model)
        request_id = row.provider_request_id
        if request_id is None:
            try:
                request_id = self._with_retries(
                    lambda: self.provider.submit(self._request(row, model))
                )
            except ProviderRejected as refused:
                self._fail(claim, "provider_rejected", str(refused))
                return
            except ProviderUnavailable as down:
                self._fail(claim, "provider_unavailable", str(down))
                return
            with self.db.write() as conn:
                if not queue.set_provider_request(conn, claim.id, claim.token, request_id):
                    raise LeaseLost
        started = as_utc(row.started_at) if row.started_at else self.clock.now()
        deadline = started + TIMEOUTS[model.kind]
        while True:
            if self.stopping():
                # Graceful shutdown: leave the job running at the provider;
                # whoever claims it after the lease resumes from the request id.
                return
            with self.db.write() as conn:
                current = repo.lock_generation(conn, claim.id)
                if current is None or int(current.fencing_token) != claim.token:
                    raise LeaseLost
                queue.renew(conn, claim.id, claim.token, self.clock.now() + self.lease)
            if current.cancel_requested and self._with_retries(
                lambda: self.provider.cancel(model, request_id)
            ):
                self._release(claim, "canceled", "canceled", "canceled while running")
                return
            try:
                status = self._with_retries(lambda: self.provider.status(model, request_id))
            except ProviderRejected as refused:
                self._fail(claim, "provider_rejected", str(refused))
                return
            except ProviderUnavailable:
                # Still down after the retries: keep the job (and its lease)
                # until the deadline, then give up like any timeout.
                if self.clock.now() >= deadline:
                    self._fail(claim, "timeout", f"no result within {TIMEOUTS[model.kind]}")
                    return
                self._pause(claim.id)
                continue
            if status.state == "succeeded":
                self._deliver(claim, row, status)
                return
            if status.state == "failed":
                self._fail(claim, "generation_failed", status.error or "the model failed")
                return
            if status.state == "canceled":
                self._release(claim, "canceled", "canceled", "canceled at the provider")
                return
            if self.clock.now() >= deadline:
                self._with_retries(lambda: self.provider.cancel(model, request_id))
                self._fail(claim, "timeout", f"no result within {TIMEOUTS[model.kind]}")
                return
            self._pause(claim.id)

    def _pause(self, generation_id: str) -> None:
        """Wait until the next poll: the interval, or less if a webhook about
        the job wakes it."""
        if self.wakeups is None:
            self.sleep(self.poll_interval_s)
        else:
            self.wakeups.wait(generation_id, self.poll_interval_s)

    def _request(self, row: repo.AnyRow, model: ModelSpec) -> ProviderRequest:
        image = None
        if row.upload_id is not None:
            with self.db.read() as conn:
                upload = conn.execute(uploads.select().where(uploads.c.id == row.upload_id)).one()
            image = self.storage.get(upload.storage_key)
        return ProviderRequest(
            generation_id=row.id,
            model=model,
            prompt=row.prompt,
            num_outputs=int(row.num_outputs),
            params=json.loads(row.params),
            image_url=row.image_url,
            image=image,
            sandbox=json.loads(row.sandbox),
            webhook_url=self.webhook_url,
        )

    def _deliver(self, claim: queue.Claim, row: repo.AnyRow, status: ProviderStatus) -> None:
        """Copy the outputs into our storage, then charge for what was delivered."""
        stored = []
        for position, output in enumerate(status.outputs[: int(row.num_outputs)]):
            data = self._with_retries(partial(self.provider.download, output))
            stored.append(self._store(row, position, output, data))
        delivered = len(stored)
        charged = delivered * int(row.credits_per_output)
        now = self.clock.now()
        with self.db.write() as conn:
            if not queue.owns(conn, claim.id, claim.token):
                raise LeaseLost
            for values in stored:
                conn.execute(insert(generation_outputs).values(**values, created_at=now))
            if charged:
                settled = self.ledger.capture(
                    conn,
                    row.hold_id,
                    charged,
                    outputs=delivered,
                    idempotency_key=f"generation:{row.id}:capture",
                )
            else:
                settled = self.ledger.release(
                    conn, row.hold_id, idempotency_key=f"generation:{row.id}:release"
                )
            status_name = "succeeded" if delivered else "failed"
            repo.finish(
                conn,
                row.id,
                status=status_name,
                charged=charged,
                balance_after=settled.balance_after,
                now=now,
                error_code=None if delivered else "no_outputs",
                error_message=None if delivered else "the model returned no output",
            )
            self._announce(conn, row.id)

    def _store(
        self, row: repo.AnyRow, position: int, output: ProviderOutput, data: bytes
    ) -> dict[str, object]:
        content_type = output.content_type
        video = content_type == "video/mp4"
        if row.watermark:
            data = watermark.watermark_mp4(data) if video else watermark.watermark_png(data)
            content_type = content_type if video else "image/png"
        fields = {"license": row.license, "generation_id": row.id, "model": row.model}
        if video:
            data = metadata.stamp_mp4(data, fields)
        elif content_type == "image/png":
            data = metadata.stamp_png(data, fields)
        key = f"outputs/{row.id[4:14]}/{row.id}/{position}.{EXTENSIONS.get(content_type, 'bin')}"
        self.storage.put(key, data, content_type, {"license": row.license})
        return {
            "id": new_id("out"),
            "generation_id": row.id,
            "position": position,
            "storage_key": key,
            "content_type": content_type,
            "width": output.width,
            "height": output.height,
            "duration_s": output.duration_s,
            "size": len(data),
            "watermarked": bool(row.watermark),
            "license": row.license,
        }

    def _fail(self, claim: queue.Claim, code: str, message: str) -> None:
        self._release(claim, "failed", code, message)

    def _release(self, claim: queue.Claim, status: str, code: str, message: str) -> None:
        """No credits for a failed or canceled generation: the hold goes back."""
        with self.db.write() as conn:
            if not queue.owns(conn, claim.id, claim.token):
                raise LeaseLost
            row = repo.get_generation(conn, claim.id)
            if row is None:  # pragma: no cover - owns() just read it
                raise LeaseLost
            settled = self.ledger.release(
                conn, row.hold_id, idempotency_key=f"generation:{claim.id}:release"
            )
            repo.finish(
                conn,
                claim.id,
                status=status,
                charged=0,
                balance_after=settled.balance_after,
                now=self.clock.now(),
                error_code=code,
                error_message=message[:1000],
            )
            self._announce(conn, claim.id)

    def _announce(self, conn: Connection, generation_id: str) -> None:
        self.generations.announce(conn, generation_id)

    def _with_retries(self, call: Callable[[], T]) -> T:
        """Transport errors and provider 5xx retry with backoff; 4xx do not."""
        for delay in self.retry_delays_s:
            try:
                return call()
            except ProviderUnavailable as down:
                log.warning("provider unavailable (%s); retrying in %.1fs", down, delay)
                self.sleep(delay)
        return call()

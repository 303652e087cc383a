"""Running one claimed job to its end (DESIGN.md §4).

submit to the provider and store its request id (before waiting, so that a
worker that dies can be replaced by one that resumes from it) → poll → on
success copy each output into our storage as it arrives (watermarked unless
the plan and the user's setting allow removal, license in the file) → capture
credits x outputs stored → succeeded. Failure, timeout or cancellation →
release → failed or canceled. Every write is conditional on the job's fencing
token, and the ledger's idempotency keys make a finalisation that is retried
(or repeated by the worker that takes over) charge once.

Every job ends within a bound (``generation/bounds.py``): each step has a
deadline, a claim past the job's hard deadline or over ``max_attempts`` ends
it at once, and an output that cannot be fetched (the provider refuses it,
or stays unavailable after bounded retries) is left out rather than retried
forever. However a job ends, it is charged for the outputs stored, and the
rest of its hold is released: succeeded if any arrived, else failed (or
canceled).

Each step of a job is one INFO line carrying ``generation_id`` (and the step
as ``job_event``: claimed, submitted, resumed, output_stored, charged or
released, ended), so an operator can follow one job through the JSON logs.
The prompt is never logged, only its length.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection

from plasmaart.catalog import Catalog, ModelSpec
from plasmaart.clock import Clock, as_utc
from plasmaart.db.engine import Database
from plasmaart.db.tables import uploads
from plasmaart.generation import bounds, queue
from plasmaart.generation import repository as repo
from plasmaart.generation.providers.base import (
    Provider,
    ProviderError,
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
# How long waiting for the provider's result may take, by kind of model.
TIMEOUTS = bounds.WAIT_TIMEOUTS
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}


class LeaseLost(Exception):
    """Another worker owns the job now: stop touching it."""


class StepCanceled(Exception):
    """The user canceled the job while a step was retrying."""


@dataclass
class JobRunner:
    db: Database
    # The platform's clock: the times users see (finished_at, outputs' created_at).
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
    # Real elapsed time, for leases and deadlines (never the billing test
    # clock, which may jump by days). None: ``clock``.
    job_clock: Clock | None = None
    # Claims of one job (``attempts``) after which it is ended, not run again.
    max_attempts: int = bounds.DEFAULT_MAX_ATTEMPTS

    def _now(self) -> datetime:
        return (self.job_clock or self.clock).now()

    def run(self, claim: queue.Claim) -> None:
        with self.db.read() as conn:
            row = repo.get_generation(conn, claim.id)
        if row is None:  # pragma: no cover - claimed rows exist
            return
        _step(
            "claimed",
            row.id,
            "job %s claimed: %s, %d output(s), attempt %d of %d, lease %gs%s",
            row.id,
            row.model,
            int(row.num_outputs),
            int(row.attempts),
            self.max_attempts,
            self.lease.total_seconds(),
            " (resumed after another worker's lease expired)" if claim.resumed else "",
            wallet_id=row.wallet_id,
            model=row.model,
            attempt=int(row.attempts),
            max_attempts=self.max_attempts,
            lease_s=self.lease.total_seconds(),
            resumed=claim.resumed,
            prompt_chars=len(row.prompt),
        )
        deadline = (
            as_utc(row.deadline_at)
            if row.deadline_at is not None
            else bounds.deadline_for(row.kind, self._now())
        )
        # The lease is renewed in the background for as long as the job runs,
        # whatever step it is in: copying large outputs or waiting out provider
        # retries can take longer than a lease, and a job whose lease ran out
        # mid-step would be taken over, and its step started again. Never past
        # the job's deadline, though: a worker stuck there loses the job to
        # one that ends it.
        keeper = threading.Event()
        renewing = threading.Thread(
            target=self._keep_lease,
            args=(claim, keeper, deadline),
            name=f"lease-{claim.id}",
            daemon=True,
        )
        renewing.start()
        if self.wakeups is not None:
            self.wakeups.watch(claim.id)
        try:
            self._run(claim, row, deadline)
        except LeaseLost:
            log.warning(
                "lost the lease of %s; another worker has it",
                claim.id,
                extra={"generation_id": claim.id, "job_event": "lease_lost"},
            )
        finally:
            if self.wakeups is not None:
                self.wakeups.unwatch(claim.id)
            keeper.set()
            renewing.join()

    def _keep_lease(self, claim: queue.Claim, done: threading.Event, deadline: datetime) -> None:
        every = self.lease.total_seconds() / 3
        while not done.wait(every):
            now = self._now()
            if now >= deadline:
                return  # the lease runs out at most one lease after the deadline
            try:
                with self.db.write() as conn:
                    kept = queue.renew(conn, claim.id, claim.token, now + self.lease)
            except Exception:  # the next renewal tries again; the lease is 3 periods long
                log.exception(
                    "could not renew the lease of %s", claim.id, extra={"generation_id": claim.id}
                )
                continue
            if not kept:  # finished, or another worker has it: the job's own writes will see
                return

    # -- the steps -----------------------------------------------------------

    def _run(self, claim: queue.Claim, row: repo.AnyRow, deadline: datetime) -> None:
        if int(row.fencing_token) != claim.token or row.status != "running":
            raise LeaseLost
        request_id = row.provider_request_id
        attempts = int(row.attempts)
        # Bounds that hold however often the job is claimed again, checked
        # before anything that could fail on every attempt.
        if attempts > self.max_attempts:
            self._give_up(
                claim,
                row,
                request_id,
                "attempts_exhausted",
                f"the job was started {attempts - 1} times without finishing "
                f"(at most {self.max_attempts})",
            )
            return
        if self._now() >= deadline:
            self._give_up(
                claim,
                row,
                request_id,
                "timeout",
                f"not finished within {bounds.job_timeout(row.kind)}",
            )
            return
        model = self.catalog.model(row.model)
        wait_until = bounds.wait_deadline(model.kind, deadline)
        if request_id is None:
            try:
                request_id = self._with_retries(
                    lambda: self.provider.submit(self._request(row, model)),
                    until=min(self._now() + bounds.SUBMIT_TIMEOUT, wait_until),
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
            _step(
                "submitted",
                row.id,
                "job %s submitted to %s: provider request %s",
                row.id,
                row.provider,
                request_id,
                provider=row.provider,
                provider_request_id=request_id,
            )
        else:
            _step(
                "resumed",
                row.id,
                "job %s resumed from provider request %s",
                row.id,
                request_id,
                provider=row.provider,
                provider_request_id=request_id,
            )
        known_request: str = request_id
        while True:
            if self.stopping():
                # Graceful shutdown: leave the job running at the provider;
                # whoever claims it after the lease resumes from the request id.
                with self.db.write() as conn:
                    queue.hand_back(conn, claim.id, claim.token)
                _step(
                    "handed_back",
                    row.id,
                    "job %s handed back on shutdown; provider request %s carries on",
                    row.id,
                    known_request,
                    provider_request_id=known_request,
                )
                return
            with self.db.write() as conn:
                current = repo.lock_generation(conn, claim.id)
                if current is None or int(current.fencing_token) != claim.token:
                    raise LeaseLost
                queue.renew(conn, claim.id, claim.token, self._now() + self.lease)
            if current.cancel_requested:
                try:
                    stopped = self._with_retries(
                        lambda: self.provider.cancel(model, known_request), until=wait_until
                    )
                except ProviderError as unreachable:
                    # The provider cannot be told: the job ends all the same.
                    self._end(
                        claim,
                        "canceled",
                        "canceled",
                        f"canceled while running (the provider could not be told: {unreachable})",
                    )
                    return
                if stopped:
                    self._end(claim, "canceled", "canceled", "canceled while running")
                    return
            try:
                status = self._with_retries(
                    lambda: self.provider.status(model, known_request), until=wait_until
                )
            except ProviderRejected as refused:
                self._fail(claim, "provider_rejected", str(refused))
                return
            except ProviderUnavailable:
                # Still down after the retries: keep the job (and its lease)
                # until the deadline, then give up like any timeout.
                if self._now() >= wait_until:
                    self._fail(claim, "timeout", f"no result within {TIMEOUTS[model.kind]}")
                    return
                self._pause(claim.id)
                continue
            if status.state == "succeeded":
                self._deliver(claim, row, model, status, deadline)
                return
            if status.state == "failed":
                self._fail(claim, "generation_failed", status.error or "the model failed")
                return
            if status.state == "canceled":
                self._end(claim, "canceled", "canceled", "canceled at the provider")
                return
            if self._now() >= wait_until:
                self._cancel_quietly(lambda: model, known_request)
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

    def _deliver(
        self,
        claim: queue.Claim,
        row: repo.AnyRow,
        model: ModelSpec,
        status: ProviderStatus,
        deadline: datetime,
    ) -> None:
        """Copy the outputs into our storage, each as it arrives, then charge
        for those stored. An output the provider refuses, or that stays
        unavailable past the retries or the fetch step's deadline, is left out;
        a cancel while fetches are failing stops them."""
        wanted = status.outputs[: int(row.num_outputs)]
        if not wanted:
            self._fail(claim, "no_outputs", "the model returned no output")
            return
        with self.db.read() as conn:
            stored = repo.output_positions(conn, row.id)
        fetch_until = min(self._now() + bounds.FETCH_TIMEOUTS[model.kind], deadline)
        missing: list[str] = []
        canceled = False
        for position, output in enumerate(wanted):
            if position in stored:
                continue  # stored by an earlier attempt of this job
            if canceled or self._now() >= fetch_until:
                missing.append(f"output {position + 1}: not fetched in time")
                continue
            try:
                data = self._with_retries(
                    partial(self.provider.download, output), until=fetch_until, claim=claim
                )
            except StepCanceled:
                canceled = True
                missing.append(f"output {position + 1}: canceled")
                continue
            except ProviderError as refused:
                log.warning(
                    "output %d of %s is unavailable: %s",
                    position,
                    row.id,
                    refused,
                    extra={"generation_id": row.id},
                )
                missing.append(f"output {position + 1}: {refused}")
                continue
            values = self._store(row, position, output, data)
            if values is None:
                missing.append(f"output {position + 1}: the file is not a readable image or video")
                continue
            with self.db.write() as conn:
                if not queue.owns(conn, claim.id, claim.token):
                    raise LeaseLost
                repo.insert_output(conn, {**values, "created_at": self.clock.now()})
            stored.add(position)
            _step(
                "output_stored",
                row.id,
                "job %s stored output %d of %d (%d bytes)",
                row.id,
                position + 1,
                len(wanted),
                values["size"],
                output=position + 1,
                outputs_stored=len(stored),
                outputs_wanted=len(wanted),
            )
        if canceled:
            self._end(
                claim,
                "canceled",
                "canceled",
                f"canceled while its outputs were being fetched; {len(stored)} of "
                f"{len(wanted)} arrived",
            )
        elif missing:
            self._end(
                claim,
                "failed",
                "output_unavailable",
                f"{len(missing)} of {len(wanted)} outputs could not be fetched from the "
                f"provider ({'; '.join(missing)})",
            )
        else:
            self._end(claim, "failed", None, None)

    def _store(
        self, row: repo.AnyRow, position: int, output: ProviderOutput, data: bytes
    ) -> dict[str, object] | None:
        """Watermark, stamp and store one output; None if its bytes are not
        the image or video they claim to be (nothing is stored then)."""
        content_type = output.content_type
        video = content_type == "video/mp4"
        fields = {"license": row.license, "generation_id": row.id, "model": row.model}
        try:
            if row.watermark:
                data = watermark.watermark_mp4(data) if video else watermark.watermark_png(data)
                content_type = content_type if video else "image/png"
            if video:
                data = metadata.stamp_mp4(data, fields)
            elif content_type == "image/png":
                data = metadata.stamp_png(data, fields)
        except (ValueError, OSError) as unreadable:
            log.warning(
                "output %d of %s is unreadable: %s",
                position,
                row.id,
                unreadable,
                extra={"generation_id": row.id},
            )
            return None
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

    def _give_up(
        self,
        claim: queue.Claim,
        row: repo.AnyRow,
        request_id: str | None,
        code: str,
        message: str,
    ) -> None:
        """End a job past one of its bounds: stop it at the provider if it can
        still be stopped (once, no retries), keep what was stored."""
        if request_id is not None:
            self._cancel_quietly(lambda: self.catalog.model(row.model), request_id)
        self._end(claim, "failed", code, message)

    def _cancel_quietly(self, model: Callable[[], ModelSpec], request_id: str) -> None:
        try:
            self.provider.cancel(model(), request_id)
        except Exception:  # best effort: the job ends whatever the provider says
            log.warning("could not cancel %s at the provider", request_id, exc_info=True)

    def _fail(self, claim: queue.Claim, code: str, message: str) -> None:
        self._end(claim, "failed", code, message)

    def _end(
        self, claim: queue.Claim, otherwise: str, code: str | None, message: str | None
    ) -> None:
        """The job's one ending: charged for the outputs stored (succeeded,
        ``code`` saying why any are missing), or, with none, released and
        ``otherwise`` (failed or canceled). The rest of the hold goes back."""
        with self.db.write() as conn:
            if not queue.owns(conn, claim.id, claim.token):
                raise LeaseLost
            row = repo.get_generation(conn, claim.id)
            if row is None:  # pragma: no cover - owns() just read it
                raise LeaseLost
            delivered = len(repo.output_positions(conn, claim.id))
            charged = delivered * int(row.credits_per_output)
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
            finished_at = self.clock.now()
            status = "succeeded" if delivered else otherwise
            repo.finish(
                conn,
                claim.id,
                status=status,
                charged=charged,
                balance_after=settled.balance_after,
                now=finished_at,
                error_code=code,
                error_message=None if message is None else message[:1000],
            )
            self._announce(conn, claim.id)
        # Logged once committed: a step rolled back never shows as done.
        if charged:
            text = "job %s charged %d credits for %d output(s); %d released"
            args: tuple[object, ...] = (row.id, settled.captured, delivered, settled.released)
        else:
            text = "job %s stored no output: nothing charged, %d credits released"
            args = (row.id, settled.released)
        _step(
            "charged" if charged else "released",
            row.id,
            text,
            *args,
            wallet_id=row.wallet_id,
            hold_id=row.hold_id,
            credits_charged=settled.captured,
            credits_released=settled.released,
            balance_after=settled.balance_after,
        )
        started = as_utc(row.started_at) if row.started_at is not None else finished_at
        duration_s = round((finished_at - started).total_seconds(), 3)
        _step(
            "ended",
            row.id,
            "job %s ended %s%s after %gs",
            row.id,
            status,
            f" ({code})" if code else "",
            duration_s,
            status=status,
            error_code=code,
            outputs_stored=delivered,
            outputs_wanted=int(row.num_outputs),
            credits_charged=charged,
            duration_s=duration_s,
        )

    def _announce(self, conn: Connection, generation_id: str) -> None:
        self.generations.announce(conn, generation_id)

    def _with_retries(
        self,
        call: Callable[[], T],
        *,
        until: datetime | None = None,
        claim: queue.Claim | None = None,
    ) -> T:
        """Transport errors and provider 5xx retry with backoff; 4xx do not.
        No retry starts past ``until`` (the step's deadline); with ``claim``,
        a cancel of the job stops the retries (``StepCanceled``)."""
        for delay in self.retry_delays_s:
            try:
                return call()
            except ProviderUnavailable as down:
                if until is not None and self._now() + timedelta(seconds=delay) >= until:
                    raise
                if claim is not None and self._cancel_requested(claim):
                    raise StepCanceled from down
                log.warning("provider unavailable (%s); retrying in %.1fs", down, delay)
                self.sleep(delay)
        return call()

    def _cancel_requested(self, claim: queue.Claim) -> bool:
        with self.db.read() as conn:
            row = repo.get_generation(conn, claim.id)
        return row is not None and bool(row.cancel_requested)


def _step(event: str, generation_id: str, message: str, *args: object, **fields: object) -> None:
    """One INFO line of a job's progress: readable text, and the same facts as
    fields of the JSON record (``generation_id``, ``job_event`` and ``fields``)."""
    log.info(
        message,
        *args,
        extra={"generation_id": generation_id, "job_event": event, **fields},
        stacklevel=2,
    )

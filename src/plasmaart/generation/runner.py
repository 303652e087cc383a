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

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

from plasmaart.catalog import Catalog, ModelSpec
from plasmaart.clock import Clock, as_utc
from plasmaart.db.disk_full import StorageFull
from plasmaart.db.engine import Database
from plasmaart.db.outage import Backoff
from plasmaart.generation import bounds, queue
from plasmaart.generation import queue_repository as queue_repo
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
from plasmaart.generation.repository import GenerationRow, OutputRow
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


@dataclass
class _Ending:
    """What a job's last transaction writes besides its status and charge."""

    claim: queue.Claim
    # Claimed for the first time: no earlier attempt stored an output.
    first_attempt: bool
    # The provider's request id, until it is stored.
    request_id: str | None = None
    # Outputs in our storage: not yet in the database, and already in it.
    pending: list[OutputRow] = field(default_factory=list)
    recorded: list[OutputRow] = field(default_factory=list)


class LeaseKeeper:
    """Renews the leases of a runner's jobs: one thread, and one statement
    every third of a lease for all of them. A job is renewed until it ends,
    until another worker has it, or until its deadline (the lease then runs
    out at most one lease after it, and a worker stuck there loses the job to
    one that ends it)."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[int, datetime]] = {}
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._backoff = Backoff("lease renewal", logger=log)

    def keep(self, claim: queue.Claim, deadline: datetime) -> None:
        with self._lock:
            self._jobs[claim.id] = (claim.token, deadline)
            self._closing = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._renew, name="plasmaart-leases", daemon=True
                )
                self._thread.start()

    def drop(self, generation_id: str) -> None:
        with self._lock:
            self._jobs.pop(generation_id, None)
            if not self._jobs:
                self._changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            thread, self._thread = self._thread, None
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _renew(self) -> None:
        runner = self._runner
        while True:
            with self._lock:
                if not self._jobs or self._closing:
                    # Idle: the thread ends; the next job starts another.
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                if self._changed.wait(runner.lease.total_seconds() / 3):
                    # Woken because the jobs ended or it closes, not because
                    # a third of a lease went by: look again, renew nothing.
                    continue
                now = runner._now()
                jobs = [
                    (job_id, token)
                    for job_id, (token, deadline) in self._jobs.items()
                    if now < deadline
                ]
                for job_id in [j for j, (_t, d) in self._jobs.items() if now >= d]:
                    del self._jobs[job_id]  # past its deadline: no more renewals
            if not jobs:
                continue
            try:
                with runner.db.write() as conn:
                    kept = queue_repo.renew_many(conn, jobs, now + runner.lease)
                self._backoff.succeeded()
            except StorageFull:  # logged by db/disk_full.py; the next renewal tries again
                log.warning("could not renew the leases of %d job(s): disk full", len(jobs))
                continue
            except Exception as exc:  # the next renewal tries again; the lease is 3 periods long
                self._backoff.failed(exc)  # an outage is logged once, a bug each time
                continue
            with self._lock:
                for job_id, _token in jobs:
                    if job_id not in kept:
                        # Ended, or another worker has it: its own writes will see.
                        self._jobs.pop(job_id, None)


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
    # Outputs copied are recorded before the next fetch starts once this many
    # seconds passed since the last record (0: before every fetch, so an
    # output copied is never lost to a crash in a later fetch); the last
    # output is recorded with the charge, in the job's last transaction.
    record_every_s: float = 0.0

    def _now(self) -> datetime:
        return (self.job_clock or self.clock).now()

    def __post_init__(self) -> None:
        self._leases = LeaseKeeper(self)

    def run(self, claim: queue.Claim) -> None:
        row = claim.take_row()
        if row is None:
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
        # one that ends it. One thread renews every job of this runner, in
        # one statement.
        self._leases.keep(claim, deadline)
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
            self._leases.drop(claim.id)

    def close(self) -> None:
        """Stop renewing leases (the jobs have ended or are handed back)."""
        self._leases.close()

    # -- the steps -----------------------------------------------------------

    def _run(self, claim: queue.Claim, row: GenerationRow, deadline: datetime) -> None:
        ending = _Ending(claim, first_attempt=int(row.attempts) == 1)
        try:
            self._steps(ending, row, deadline)
        except StorageFull as full:
            self._storage_full(ending, row, full)

    def _storage_full(self, ending: _Ending, row: GenerationRow, full: StorageFull) -> None:
        """The disk under the database or the media folder is full: nothing
        of the failed step was kept (its transaction rolled back, its file
        removed), and nothing is charged for an output not stored. The
        outputs copied but not yet recorded are removed too (the job copies
        them again), and the job is handed back to the queue, claimable again
        one lease from now, so that it ends once the disk has room. The
        hand-back is not counted as an attempt, unless outputs of this first
        attempt are recorded already (the next claim must read them back).
        When the hand-back cannot be written either (the database's disk),
        the job keeps its lease until it runs out, and the next claim resumes
        it; a claim cannot be written while that disk is full either."""
        claim = ending.claim
        for output in ending.pending:
            with contextlib.suppress(Exception):
                self.storage.delete(output.storage_key)
        ending.pending = []
        retry_at = self._now() + self.lease
        try:
            with self.db.write() as conn:
                handed = queue_repo.hand_back(
                    conn,
                    claim.id,
                    claim.token,
                    retry_at,
                    ending.request_id,
                    counted=ending.first_attempt and bool(ending.recorded),
                )
        except StorageFull:
            handed = False
        _step(
            "storage_full",
            row.id,
            "job %s stopped: the %s disk is full; nothing charged for outputs not stored; %s",
            row.id,
            full.where,
            f"handed back, tried again after {retry_at.isoformat(timespec='seconds')}"
            if handed
            else "its lease runs out and another claim resumes it",
            storage=full.where,
            handed_back=handed,
        )

    def _steps(self, ending: _Ending, row: GenerationRow, deadline: datetime) -> None:
        claim = ending.claim
        if int(row.fencing_token) != claim.token or row.status != "running":
            raise LeaseLost
        request_id = row.provider_request_id
        attempts = int(row.attempts)
        # Bounds that hold however often the job is claimed again, checked
        # before anything that could fail on every attempt.
        if attempts > self.max_attempts:
            self._give_up(
                ending,
                row,
                request_id,
                "attempts_exhausted",
                f"the job was started {attempts - 1} times without finishing "
                f"(at most {self.max_attempts})",
            )
            return
        if self._now() >= deadline:
            self._give_up(
                ending,
                row,
                request_id,
                "timeout",
                f"not finished within {bounds.job_timeout(row.kind)}",
            )
            return
        model = self.catalog.model(row.model)
        wait_until = bounds.wait_deadline(model.kind, deadline)
        # The provider's request id not yet stored: it is written with the
        # job's next write (before the first wait, with the outputs and the
        # charge if the provider answers at once, or on a hand-over), so that
        # a job done at its first poll costs no extra transaction.
        if request_id is None:
            try:
                request_id = self._with_retries(
                    lambda: self.provider.submit(self._request(row, model)),
                    until=min(self._now() + bounds.SUBMIT_TIMEOUT, wait_until),
                )
            except ProviderRejected as refused:
                self._end(ending, "failed", "provider_rejected", str(refused))
                return
            except ProviderUnavailable as down:
                self._end(ending, "failed", "provider_unavailable", str(down))
                return
            ending.request_id = request_id
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
                # Graceful shutdown: leave the job running at the provider,
                # its lease released; whoever claims it next resumes from
                # the request id.
                with self.db.write() as conn:
                    queue_repo.hand_back(
                        conn, claim.id, claim.token, self._now(), ending.request_id
                    )
                _step(
                    "handed_back",
                    row.id,
                    "job %s handed back on shutdown; provider request %s carries on",
                    row.id,
                    known_request,
                    provider_request_id=known_request,
                )
                return
            try:
                status = self._with_retries(
                    lambda: self.provider.status(model, known_request), until=wait_until
                )
            except ProviderRejected as refused:
                self._end(ending, "failed", "provider_rejected", str(refused))
                return
            except ProviderUnavailable as down:
                # Still down after the retries (5xx, no answer within the
                # client's timeout, an answer we cannot read): keep the job
                # (and its lease) until the wait deadline, then give up. Not a
                # ``timeout``: the model was never slow, the provider never
                # answered; its cancel is tried once.
                if self._now() >= wait_until:
                    self._cancel_quietly(lambda: model, known_request)
                    self._end(
                        ending,
                        "failed",
                        "provider_unavailable",
                        f"the provider did not answer usably within "
                        f"{TIMEOUTS[model.kind]}; last: {down}",
                    )
                    return
                if self._check_in(ending) and self._cancel(
                    ending, model, known_request, wait_until
                ):
                    return
                self._pause(claim.id)
                continue
            if status.state == "succeeded":
                self._deliver(ending, row, model, status, deadline)
                return
            if status.state == "failed":
                self._end(ending, "failed", "generation_failed", status.error or "the model failed")
                return
            if status.state == "canceled":
                self._end(ending, "canceled", "canceled", "canceled at the provider")
                return
            if self._now() >= wait_until:
                self._cancel_quietly(lambda: model, known_request)
                self._end(ending, "failed", "timeout", f"no result within {TIMEOUTS[model.kind]}")
                return
            # Still running: before waiting, the job must still be ours, its
            # request id stored, and a cancel asked meanwhile sent on.
            if self._check_in(ending) and self._cancel(ending, model, known_request, wait_until):
                return
            self._pause(claim.id)

    def _check_in(self, ending: _Ending) -> bool:
        """One write between two polls: the job is still ours (else
        ``LeaseLost``), its lease renewed, the request id stored; whether its
        user asked to cancel it."""
        claim = ending.claim
        with self.db.write() as conn:
            cancel = queue_repo.check_in(
                conn, claim.id, claim.token, self._now() + self.lease, ending.request_id
            )
        if cancel is None:
            raise LeaseLost
        ending.request_id = None
        return cancel

    def _cancel(
        self, ending: _Ending, model: ModelSpec, request_id: str, wait_until: datetime
    ) -> bool:
        """Pass the user's cancel on to the provider; whether the job ended."""
        try:
            stopped = self._with_retries(
                lambda: self.provider.cancel(model, request_id), until=wait_until
            )
        except ProviderError as unreachable:
            # The provider cannot be told: the job ends all the same.
            self._end(
                ending,
                "canceled",
                "canceled",
                f"canceled while running (the provider could not be told: {unreachable})",
            )
            return True
        if stopped:
            self._end(ending, "canceled", "canceled", "canceled while running")
            return True
        return False

    def _pause(self, generation_id: str) -> None:
        """Wait until the next poll: the interval, or less if a webhook about
        the job wakes it."""
        if self.wakeups is None:
            self.sleep(self.poll_interval_s)
        else:
            self.wakeups.wait(generation_id, self.poll_interval_s)

    def _request(self, row: GenerationRow, model: ModelSpec) -> ProviderRequest:
        image = None
        if row.upload_id is not None:
            with self.db.read() as conn:
                upload = repo.get_upload(conn, row.upload_id)
            if upload is None:  # pragma: no cover - a foreign key of the job
                raise ProviderRejected(f"the input image {row.upload_id} is gone")
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
        ending: _Ending,
        row: GenerationRow,
        model: ModelSpec,
        status: ProviderStatus,
        deadline: datetime,
    ) -> None:
        """Copy the outputs into our storage, each as it arrives, then charge
        for those stored. An output the provider refuses, or that stays
        unavailable past the retries or the fetch step's deadline, is left out;
        a cancel while fetches are failing stops them.

        Each output copied is recorded before the next fetch starts (see
        ``record_every_s``), so that a job resumed after a crash fetches only
        the rest; the last is recorded with the charge, in the job's last
        transaction (a job of one output: nothing but that transaction)."""
        claim = ending.claim
        wanted = status.outputs[: int(row.num_outputs)]
        if not wanted:
            self._end(ending, "failed", "no_outputs", "the model returned no output")
            return
        if len(wanted) < int(row.num_outputs):
            # Charged for what arrives, as a batch told to deliver fewer is.
            log.warning(
                "the provider delivered %d of the %d outputs of %s",
                len(wanted),
                int(row.num_outputs),
                row.id,
                extra={"generation_id": row.id, "outputs_offered": len(wanted)},
            )
        stored: set[int] = set()
        if not ending.first_attempt:  # an earlier attempt may have stored some
            with self.db.read() as conn:
                stored = repo.output_positions(conn, row.id)
        fetch_until = min(self._now() + bounds.FETCH_TIMEOUTS[model.kind], deadline)
        missing: list[str] = []
        canceled = False
        recorded_at = time.monotonic()
        for position, output in enumerate(wanted):
            if position in stored:
                continue  # stored by an earlier attempt of this job
            if canceled or self._now() >= fetch_until:
                missing.append(f"output {position + 1}: not fetched in time")
                continue
            if ending.pending and time.monotonic() - recorded_at >= self.record_every_s:
                self._record(ending)
                recorded_at = time.monotonic()
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
            made = self._store(row, position, output, data)
            if made is None:
                missing.append(f"output {position + 1}: the file is not a readable image or video")
                continue
            ending.pending.append(made)
            stored.add(position)
            _step(
                "output_stored",
                row.id,
                "job %s stored output %d of %d (%d bytes)",
                row.id,
                position + 1,
                len(wanted),
                made.size,
                output=position + 1,
                outputs_stored=len(stored),
                outputs_wanted=len(wanted),
            )
        if canceled:
            self._end(
                ending,
                "canceled",
                "canceled",
                f"canceled while its outputs were being fetched; {len(stored)} of "
                f"{len(wanted)} arrived",
            )
        elif missing:
            self._end(
                ending,
                "failed",
                "output_unavailable",
                f"{len(missing)} of {len(wanted)} outputs could not be fetched from the "
                f"provider ({'; '.join(missing)})",
            )
        else:
            self._end(ending, "failed", None, None)

    def _record(self, ending: _Ending) -> None:
        """Record the outputs stored so far (and the request id, if new) while
        the job is still ours."""
        claim = ending.claim
        with self.db.write() as conn:
            if (
                queue_repo.check_in(
                    conn, claim.id, claim.token, self._now() + self.lease, ending.request_id
                )
                is None
            ):
                raise LeaseLost
            repo.insert_outputs(conn, ending.pending)
        ending.request_id = None
        ending.recorded.extend(ending.pending)
        ending.pending = []

    def _store(
        self, row: GenerationRow, position: int, output: ProviderOutput, data: bytes
    ) -> OutputRow | None:
        """Watermark, stamp and store one output: its row, to record; None if
        its bytes are not the image or video they claim to be (nothing is
        stored then)."""
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
        return OutputRow(
            id=new_id("out"),
            generation_id=row.id,
            position=position,
            storage_key=key,
            content_type=content_type,
            width=output.width,
            height=output.height,
            duration_s=output.duration_s,
            size=len(data),
            watermarked=bool(row.watermark),
            license=row.license,
            created_at=self.clock.now(),
        )

    def _give_up(
        self,
        ending: _Ending,
        row: GenerationRow,
        request_id: str | None,
        code: str,
        message: str,
    ) -> None:
        """End a job past one of its bounds: stop it at the provider if it can
        still be stopped (once, no retries), keep what was stored."""
        if request_id is not None:
            self._cancel_quietly(lambda: self.catalog.model(row.model), request_id)
        self._end(ending, "failed", code, message)

    def _cancel_quietly(self, model: Callable[[], ModelSpec], request_id: str) -> None:
        try:
            self.provider.cancel(model(), request_id)
        except Exception:  # best effort: the job ends whatever the provider says
            log.warning("could not cancel %s at the provider", request_id, exc_info=True)

    def _end(self, ending: _Ending, otherwise: str, code: str | None, message: str | None) -> None:
        """The job's one ending, in one transaction: its outputs recorded,
        then ended by ``GenerationService.end`` (charged for those stored,
        the rest of the hold released; ``otherwise``, failed or canceled,
        with none)."""
        claim = ending.claim
        with self.db.write() as conn:
            row = queue_repo.lock_if_owned(conn, claim.id, claim.token)
            if row is None:
                raise LeaseLost
            if ending.first_attempt:
                recorded = list(ending.recorded)
            else:  # with those of earlier attempts
                recorded = repo.outputs_of(conn, claim.id)
            repo.insert_outputs(conn, ending.pending)
            ended = self.generations.end(
                conn,
                row,
                outputs=[*recorded, *ending.pending],
                otherwise=otherwise,
                code=code,
                message=message,
                provider_request_id=ending.request_id,
            )
            if ended is None:  # pragma: no cover - the row is locked and running
                raise LeaseLost
        settled, charged, finished_at = ended.settled, ended.charged, ended.finished_at
        status, delivered = ended.job.status, len(recorded) + len(ending.pending)
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

"""The webhook events of generations (docs/webhooks.md, "Events").

A generation that reaches a terminal state (succeeded, failed, canceled;
however it got there: the worker's end, a cancel while queued, an account
suspended) emits ``generation.<status>`` in the transaction that ends it
(``GenerationService.end``), when someone listens: the job's own
``webhook_url``, or an enabled endpoint of its submitter subscribed to that
type (asked by the job's final UPDATE itself, so the end of a job nobody
listens to sends no statement more). The event's ``data`` is the generation
object as the API shows it, with absolute output URLs signed for
``OUTPUT_LINK_LIFETIME``: retries and replays of the event carry the same
body, so its links outlive the day of retries.

A ``webhook_url`` is checked when the job is submitted (``check_url``):
``http(s)`` and, unless ``PLASMAART_WEBHOOKS_ALLOW_PRIVATE``, only public
addresses; the dispatcher checks it again before each attempt.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from plasmaart.clock import Clock, as_utc
from plasmaart.db.values import WebhookEventType
from plasmaart.eventbus import iso_utc
from plasmaart.generation.repository import GenerationRow, OutputRow
from plasmaart.links import Links
from plasmaart.media.signing import sign_url
from plasmaart.outbox.webhooks import WebhookEvents
from plasmaart.webhook_urls import UnsafeUrl, check_destination

# How long a submission waits for its webhook_url's host to resolve, and how
# many resolutions may wait at once (a DNS server that never answers costs a
# request seconds, never a thread for good).
RESOLVE_TIMEOUT_S = 3.0
MAX_RESOLVING = 8

# How long the output links of an event work (its deliveries retry for a day;
# a replay from the delivery log may come later).
OUTPUT_LINK_LIFETIME = timedelta(days=7)

TERMINAL_EVENTS: dict[str, WebhookEventType] = {
    "succeeded": "generation.succeeded",
    "failed": "generation.failed",
    "canceled": "generation.canceled",
}

# An output's absolute, signed download URL, from its id (bootstrap builds it
# from the public address and the signing secret).
OutputUrl = Callable[[str], str]


def signed_output_url(links: Links, clock: Clock, secret: Callable[[], bytes]) -> OutputUrl:
    """Output links as the download route verifies them (``media/signing.py``),
    absolute (``PLASMAART_PUBLIC_URL``) and working ``OUTPUT_LINK_LIFETIME``."""

    def url(output_id: str) -> str:
        path = f"/v1/outputs/{output_id}/content"
        return links.base + sign_url(path, clock.now() + OUTPUT_LINK_LIFETIME, secret())

    return url


class GenerationWebhooks:
    """Checks a submission's ``webhook_url`` and emits the event of a job's end."""

    def __init__(
        self, events: WebhookEvents, output_url: OutputUrl, *, allow_private: bool
    ) -> None:
        self.events = events
        self.output_url = output_url
        self.allow_private = allow_private
        self.resolve_timeout_s = RESOLVE_TIMEOUT_S
        self._resolving = threading.BoundedSemaphore(MAX_RESOLVING)

    def check_url(self, url: str) -> list[dict[str, str]]:
        """The refusals of ``url`` as a submission's ``webhook_url`` (none:
        accepted): the address rule, its host resolved within
        ``RESOLVE_TIMEOUT_S``."""
        if not self._resolving.acquire(blocking=False):
            return [_refusal("too many addresses are being checked right now; try again soon")]
        found: list[str] = []
        done = threading.Event()

        def run() -> None:
            try:
                check_destination(url, allow_private=self.allow_private)
            except UnsafeUrl as refused:
                found.append(str(refused))
            except Exception as failed:  # the resolver's own failure is a refusal too
                found.append(f"the address could not be checked ({type(failed).__name__})")
            finally:
                self._resolving.release()
                done.set()

        threading.Thread(target=run, name="webhook-url-check", daemon=True).start()
        if not done.wait(self.resolve_timeout_s):
            return [_refusal("the host of this URL did not resolve in time")]
        return [_refusal(reason) for reason in found]

    def emit_end(
        self, conn: Connection, job: GenerationRow, outputs: Sequence[OutputRow]
    ) -> str | None:
        """Emit the event of ``job``'s end (a ``GenerationRow`` as ended, and
        the ``OutputRow``s it stored); its id, or None if its end emitted one
        already."""
        event = TERMINAL_EVENTS[job.status]
        return self.events.emit(
            conn,
            cause_key=f"generation:{job.id}:{job.status}",
            user_id=job.user_id,
            type=event,
            data=self.generation_data(job, outputs),
            webhook_url=job.webhook_url,
        )

    def generation_data(self, job: GenerationRow, outputs: Sequence[OutputRow]) -> dict[str, Any]:
        """The generation object as ``GET /v1/generations/{id}`` shows it to
        its submitter (``can_cancel`` is false: it has ended)."""
        made = sorted(outputs, key=lambda o: int(o.position))
        return {
            "id": job.id,
            "status": job.status,
            "model": job.model,
            "kind": job.kind,
            "prompt": job.prompt,
            "num_outputs": int(job.num_outputs),
            "team_id": job.team_id,
            "params": json.loads(job.params),
            "credits_per_output": int(job.credits_per_output),
            "credits_held": int(job.credits_held),
            "credits_charged": int(job.credits_charged),
            "balance_after": int(job.balance_after),
            "outputs": [
                {
                    "id": output.id,
                    "url": self.output_url(output.id),
                    "content_type": output.content_type,
                    "width": output.width,
                    "height": output.height,
                    "duration_s": output.duration_s,
                    "watermarked": bool(output.watermarked),
                    "license": output.license,
                }
                for output in made
            ],
            "error": None
            if job.error_code is None
            else {"code": job.error_code, "message": job.error_message or ""},
            "license": job.license,
            "created_at": iso_utc(as_utc(job.created_at)),
            "started_at": None if job.started_at is None else iso_utc(as_utc(job.started_at)),
            "finished_at": None if job.finished_at is None else iso_utc(as_utc(job.finished_at)),
            "queue_position": None,
            "cancel_requested": bool(job.cancel_requested),
            "can_cancel": False,
        }


def _refusal(message: str) -> dict[str, str]:
    return {"field": "webhook_url", "message": message}

"""Webhook endpoints (docs/webhooks.md, "Endpoints"): the URLs a user
registers with the events each wants, their ``whsec_`` secrets and
rotations, the delivery log and replays, and the account's own secret that
signs deliveries to a per-generation ``webhook_url``.

An endpoint's URL must pass the address rule (``webhook_urls``) when it is
registered or changed; the dispatcher checks it again before each delivery.
A secret is shown once, when it is made (creation, rotation); lists show
only its last four characters. After a rotation the previous secret signs
too, for ``ROTATION_OVERLAP``, so that receivers can switch without losing
a delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from plasmaart.accounts.service import AccountService
from plasmaart.clock import Clock
from plasmaart.errors import InvalidInput, NotFound
from plasmaart.ids import new_id
from plasmaart.outbox.webhooks import EVENT_TYPES
from plasmaart.webhook_urls import UnsafeUrl, check_destination
from plasmaart.webhooks import endpoints_repository as repo
from plasmaart.webhooks import signing
from plasmaart.webhooks.endpoints_repository import Attempt, Delivery, Endpoint

MAX_ENDPOINTS = 20
ROTATION_OVERLAP = timedelta(hours=24)
# How long registering a URL waits for its host to resolve, and how many
# resolutions may wait at once: a name whose DNS server never answers costs
# a request a few seconds, never a worker thread for good.
RESOLVE_TIMEOUT_S = 3.0
MAX_RESOLVING = 8
DISABLED_BY_OWNER = "disabled by you"

__all__ = [
    "MAX_ENDPOINTS",
    "ROTATION_OVERLAP",
    "Attempt",
    "CheckedUrl",
    "Delivery",
    "DeliveryLog",
    "Endpoint",
    "EndpointChange",
    "WebhookEndpoints",
    "secret_hint",
]


@dataclass(frozen=True)
class CheckedUrl:
    """A URL the address rule accepted (made only by ``WebhookEndpoints.check_url``)."""

    url: str


@dataclass(frozen=True)
class EndpointChange:
    """What a PATCH sets; None: unchanged."""

    url: CheckedUrl | None = None
    events: Sequence[str] | None = None
    description: str | None = None
    enabled: bool | None = None


@dataclass(frozen=True)
class LoggedDelivery:
    delivery: Delivery
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True)
class DeliveryLog:
    """A page of an endpoint's deliveries, newest first; ``more`` says whether
    older ones follow (after the last one's ``(created_at, id)``)."""

    deliveries: list[LoggedDelivery]
    more: bool


def secret_hint(secret: str) -> str:
    """What lists show of a secret: its prefix and last four characters."""
    return f"{signing.PREFIX}…{secret[-4:]}"


def events_of(events: Sequence[str]) -> tuple[str, ...]:
    """``events`` as stored: known types, each once, in the catalogue's order;
    an empty or unknown one is refused (field ``events``)."""
    if not events:
        raise InvalidInput("choose at least one event", field="events")
    unknown = sorted({e for e in events if e not in EVENT_TYPES})
    if unknown:
        raise InvalidInput(
            f"unknown event {unknown[0]!r}: one of {', '.join(EVENT_TYPES)}", field="events"
        )
    return tuple(e for e in EVENT_TYPES if e in events)


class _Resolution:
    """One address check run on a daemon thread, waited for at most a timeout."""

    def __init__(self, url: str, allow_private: bool) -> None:
        self.url = url
        self.allow_private = allow_private
        self.error: UnsafeUrl | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            check_destination(self.url, allow_private=self.allow_private)
        except UnsafeUrl as exc:
            self.error = exc
        except Exception as exc:  # any resolver failure is a refusal
            self.error = UnsafeUrl(f"the host could not be resolved ({type(exc).__name__})")
        finally:
            self.done.set()


class WebhookEndpoints:
    """Endpoints, secrets and the delivery log of one user at a time."""

    def __init__(
        self,
        clock: Clock,
        accounts: AccountService,
        *,
        allow_private: bool,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> None:
        self.clock = clock
        self.accounts = accounts
        self.allow_private = allow_private
        self.resolve_timeout_s = resolve_timeout_s
        self._resolving = threading.BoundedSemaphore(MAX_RESOLVING)

    # --- the address rule, outside any transaction ---

    def check_url(self, url: str) -> CheckedUrl:
        """``url`` if the address rule accepts it now; else 422 on ``url``
        with the reason. Call it before the transaction: it may resolve a name."""
        if not self._resolving.acquire(blocking=False):
            raise InvalidInput(
                "too many addresses are being checked right now; try again in a moment",
                field="url",
            )
        resolution = _Resolution(url, self.allow_private)

        def run() -> None:
            try:
                resolution.run()
            finally:
                self._resolving.release()

        threading.Thread(target=run, name="webhook-url-check", daemon=True).start()
        if not resolution.done.wait(self.resolve_timeout_s):
            raise InvalidInput(
                f"the host did not resolve within {self.resolve_timeout_s:g} seconds", field="url"
            )
        if resolution.error is not None:
            raise InvalidInput(str(resolution.error), field="url")
        return CheckedUrl(url)

    # --- endpoints ---

    def create(
        self,
        conn: Connection,
        user_id: str,
        url: CheckedUrl,
        events: Sequence[str],
        description: str = "",
    ) -> Endpoint:
        """A new endpoint with a fresh secret (``endpoint.secret``: show it once)."""
        chosen = events_of(events)
        self.accounts.lock(conn, user_id)  # the count below stays true until commit
        if repo.count_endpoints(conn, user_id) >= MAX_ENDPOINTS:
            raise InvalidInput(
                f"an account has at most {MAX_ENDPOINTS} webhook endpoints: delete one first",
                field="url",
            )
        return repo.insert_endpoint(
            conn,
            endpoint_id=new_id("we"),
            user_id=user_id,
            url=url.url,
            events=chosen,
            description=description,
            secret=signing.new_secret(),
            now=self.clock.now(),
        )

    def endpoints_of(self, conn: Connection, user_id: str) -> list[Endpoint]:
        """The user's endpoints, oldest first."""
        return repo.endpoints_of(conn, user_id)

    def get(self, conn: Connection, user_id: str, endpoint_id: str) -> Endpoint:
        """The endpoint if it is ``user_id``'s; anyone else's or none: 404."""
        found = repo.endpoint_of(conn, user_id, endpoint_id)
        if found is None:
            raise NotFound("no such webhook endpoint")
        return found

    def change(
        self, conn: Connection, user_id: str, endpoint_id: str, change: EndpointChange
    ) -> Endpoint:
        """Apply a PATCH. Enabling a disabled endpoint forgets why it was
        disabled and since when it was failing; disabling records that its
        owner did it."""
        endpoint = self.get(conn, user_id, endpoint_id)
        now = self.clock.now()
        values: dict[str, object] = {}
        if change.url is not None:
            values["url"] = change.url.url
        if change.events is not None:
            values["events"] = events_of(change.events)
        if change.description is not None:
            values["description"] = change.description
        if change.enabled is True and not endpoint.enabled:
            values.update(enabled=True, disabled_at=None, disabled_reason=None, failing_since=None)
        elif change.enabled is False and endpoint.enabled:
            values.update(enabled=False, disabled_at=now, disabled_reason=DISABLED_BY_OWNER)
        if values:
            repo.update_endpoint(conn, endpoint.id, now, **values)
        return self.get(conn, user_id, endpoint_id)

    def delete(self, conn: Connection, user_id: str, endpoint_id: str) -> Endpoint:
        """Delete the endpoint and its delivery log; nothing more is sent to it."""
        endpoint = self.get(conn, user_id, endpoint_id)
        repo.delete_endpoint(conn, endpoint.id)
        return endpoint

    def rotate(self, conn: Connection, user_id: str, endpoint_id: str) -> Endpoint:
        """A new secret; the one it replaces signs too for ``ROTATION_OVERLAP``
        (a rotation during an overlap drops the oldest)."""
        endpoint = self.get(conn, user_id, endpoint_id)
        now = self.clock.now()
        repo.update_endpoint(
            conn,
            endpoint.id,
            now,
            secret=signing.new_secret(),
            previous_secret=endpoint.secret,
            previous_secret_expires_at=now + ROTATION_OVERLAP,
        )
        return self.get(conn, user_id, endpoint_id)

    def signing_secrets(self, endpoint: Endpoint) -> list[str]:
        """The secrets that sign a delivery to ``endpoint`` now: its own, and
        its previous one until that expires."""
        expires = endpoint.previous_secret_expires_at
        if endpoint.previous_secret and expires is not None and self.clock.now() < expires:
            return [endpoint.secret, endpoint.previous_secret]
        return [endpoint.secret]

    # --- the delivery log ---

    def deliveries(
        self,
        conn: Connection,
        user_id: str,
        endpoint_id: str,
        *,
        limit: int,
        before: tuple[datetime, str] | None = None,
    ) -> DeliveryLog:
        """A page of the endpoint's deliveries with their attempts."""
        endpoint = self.get(conn, user_id, endpoint_id)
        found = repo.deliveries_page(conn, endpoint.id, limit=limit + 1, before=before)
        page = found[:limit]
        attempts: dict[str, list[Attempt]] = {}
        for attempt in repo.attempts_of(conn, [d.id for d in page]):
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
        return DeliveryLog(
            [LoggedDelivery(d, tuple(attempts.get(d.id, ()))) for d in page],
            more=len(found) > limit,
        )

    def replay(
        self, conn: Connection, user_id: str, endpoint_id: str, delivery_id: str
    ) -> Delivery:
        """Send the delivery's event to the endpoint again: a new delivery,
        due now, with the same event (so the same ``webhook-id``)."""
        endpoint = self.get(conn, user_id, endpoint_id)
        original = repo.delivery_of(conn, endpoint.id, delivery_id)
        if original is None:
            raise NotFound("no such delivery of this endpoint")
        if not endpoint.enabled:
            raise InvalidInput(
                "this endpoint is disabled: enable it before replaying a delivery",
                field="endpoint",
            )
        replayed = new_id("wd")
        repo.insert_delivery(
            conn,
            delivery_id=replayed,
            event_id=original.event_id,
            endpoint_id=endpoint.id,
            url=endpoint.url,
            now=self.clock.now(),
        )
        found = repo.delivery_of(conn, endpoint.id, replayed)
        if found is None:
            raise LookupError(f"delivery {replayed} vanished as it was inserted")
        return found

    # --- the account's own secret ---

    def account_secret(self, conn: Connection, user_id: str) -> str:
        """The user's own secret (signing deliveries to a per-generation
        ``webhook_url``), made on first use."""
        found = repo.account_secret(conn, user_id)
        if found is not None:
            return found
        return repo.insert_account_secret(conn, user_id, signing.new_secret(), self.clock.now())

    def rotate_account_secret(self, conn: Connection, user_id: str) -> str:
        """A new account secret, in force at once (the old one stops signing)."""
        secret = signing.new_secret()
        repo.replace_account_secret(conn, user_id, secret, self.clock.now())
        return secret

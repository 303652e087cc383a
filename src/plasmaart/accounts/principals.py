"""Who a credential belongs to, cached per process, and API keys' last use
recorded off the request path.

``Principals.of_api_key`` and ``Principals.of_session`` answer from the
process's caches (caches.py) and read the database only on a miss: the key or
session with its user, in one read transaction. An entry carries the user
itself (a frozen ``User``), so it is tagged ``user:<id>`` and dropped by every
write that changes the user or their credentials: a suspension or
reinstatement, a role change, a key created or revoked, logging out
everywhere (repositories call ``invalidate``). Logging out of one session
drops ``session:<token hash>``. A session's expiry is checked against the
clock at every use, cached or not. Unknown or revoked credentials are never
cached, so a refusal always reflects the database.

``LastUsed`` keeps when each API key was last used: a request only notes it in
memory; a background thread writes the noted times in one transaction at most
every ``FLUSH_S`` seconds (and at shutdown). A crash loses at most that
interval of "last used" precision, which no rule depends on (it is shown to
the key's owner only).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from plasmaart.accounts.credentials import (
    SESSION_TOUCH_EVERY,
    CredentialService,
    KeyLimits,
    SessionInfo,
    digest,
)
from plasmaart.accounts.service import AccountService, User
from plasmaart.caches import CacheHub, TtlLru, cached
from plasmaart.clock import Clock
from plasmaart.db.disk_full import StorageFull
from plasmaart.db.engine import Database
from plasmaart.db.outage import Backoff, is_unavailable

log = logging.getLogger(__name__)


class LastUsed:
    """API keys' ``last_used_at``, batched: noted per request, written by a
    background thread every ``FLUSH_S`` seconds at most."""

    FLUSH_S = 2.0
    # Keys whose last write is remembered (to skip notes within SESSION_TOUCH_EVERY).
    REMEMBERED = 10_000

    def __init__(self, db: Database, credentials: CredentialService, clock: Clock) -> None:
        self.db = db
        self.credentials = credentials
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, datetime] = {}
        self._written: OrderedDict[str, datetime] = OrderedDict()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = Backoff("API keys' last use", logger=log)

    def used(self, key_id: str) -> None:
        """Note a use of ``key_id`` now (a dictionary write, no I/O)."""
        now = self.clock.now()
        with self._lock:
            last = self._written.get(key_id)
            if last is not None and last > now - SESSION_TOUCH_EVERY:
                return
            self._pending[key_id] = now
            self._remember(key_id, now)
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="plasmaart-key-last-used", daemon=True
                )
                self._thread.start()

    def _remember(self, key_id: str, at: datetime) -> None:
        self._written[key_id] = at
        self._written.move_to_end(key_id)
        while len(self._written) > self.REMEMBERED:
            self._written.popitem(last=False)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write the noted uses now; how many keys were written."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            with self.db.write() as conn:
                self.credentials.touch_api_keys(conn, batch)
        except (SQLAlchemyError, StorageFull) as exc:
            if isinstance(exc, StorageFull):
                # A full disk is logged once by db/disk_full.py: no traceback.
                log.warning("could not record the last use of %d API keys: disk full", len(batch))
            elif is_unavailable(exc):  # an outage: said once, and once when it ends
                self._outage.failed(exc)
            else:
                log.warning(
                    "could not record the last use of %d API keys", len(batch), exc_info=True
                )
            with self._lock:  # try again next time, unless newer uses came since
                for key_id, at in batch.items():
                    self._pending.setdefault(key_id, at)
            return 0
        self._outage.succeeded()
        return len(batch)

    def _run(self) -> None:
        while not self._stopping.wait(self.FLUSH_S):
            self.flush()

    def close(self) -> None:
        """Stop the writer and write what is noted."""
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.flush()


class Principals:
    """API key → (user, key id) and session token → (user, session), cached."""

    MAX_KEYS = 10_000
    MAX_SESSIONS = 10_000

    def __init__(
        self,
        hub: CacheHub,
        db: Database,
        accounts: AccountService,
        credentials: CredentialService,
        clock: Clock,
    ) -> None:
        self.hub = hub
        self.db = db
        self.accounts = accounts
        self.credentials = credentials
        self.clock = clock
        self.last_used = LastUsed(db, credentials, clock)
        self._keys: TtlLru[str, tuple[User, KeyLimits]] = hub.cache("api_keys", self.MAX_KEYS)
        self._sessions: TtlLru[str, tuple[User, SessionInfo]] = hub.cache(
            "sessions", self.MAX_SESSIONS
        )

    def of_api_key(self, secret: str) -> tuple[User, KeyLimits] | None:
        """``(user, the key's id and spend limits)`` of a live API key, else
        None. A change of the key's limits drops the entry (``user:<id>``)."""

        def load() -> tuple[User, KeyLimits] | None:
            with self.db.read() as conn:
                found = self.credentials.live_api_key(conn, secret)
                if found is None:
                    return None
                user_id, limits, _stale = found
                return self.accounts.get(conn, user_id), limits

        found = cached(self.hub, self._keys, digest(secret), load, _key_tags)
        if found is not None:
            self.last_used.used(found[1].key_id)
        return found

    def of_session(self, token: str) -> tuple[User, SessionInfo] | None:
        """``(user, session)`` of a session that has not expired, else None."""
        token_hash = digest(token)

        def load() -> tuple[User, SessionInfo] | None:
            with self.db.read() as conn:
                session = self.credentials.session(conn, token)
                if session is None:
                    return None
                return self.accounts.get(conn, session.user_id), session

        def tags(value: tuple[User, SessionInfo]) -> tuple[str, ...]:
            return (f"user:{value[0].id}", f"session:{token_hash}")

        found = cached(self.hub, self._sessions, token_hash, load, tags)
        if found is None or found[1].expires_at <= self.clock.now():
            return None
        return found

    def close(self) -> None:
        self.last_used.close()


def _key_tags(value: tuple[User, Any]) -> tuple[str, ...]:
    return (f"user:{value[0].id}",)

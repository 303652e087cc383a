"""A full disk under the database or the media folder: one refusal, one record.

SQLite answers a write that finds no room with ``SQLITE_FULL`` ("database or
disk is full"), PostgreSQL with SQLSTATE 53100 (``disk_full``), the media
folder with ``ENOSPC`` (or ``EDQUOT`` past a quota). Each becomes
``StorageFull``: 507 ``storage_full`` with ``Retry-After`` on the API, a job
handed back for later in the worker (``generation/runner.py``). Nothing of the
refused write is kept: the database rolls its transaction back, and a media
file is written to a temporary name that is removed when the write fails.

``WATCH`` records, per process, which disks were found full and since when:
the first refusal is logged as an error, then a summary at most every
``LOG_EVERY_S`` while it lasts. The outage ends with the first write that
succeeds ``QUIET_S`` after the last refusal, or with the first look (by
``/readyz`` or ``/metrics``) that finds ``ROOM_BYTES`` free again on the
disk's filesystem when its folder is known (SQLite's, the local media
folder's); its end is logged too, with how many writes were refused. A
nearly full disk takes some small writes and refuses larger ones: that is
one outage, not many. Nothing needs a restart: the next write simply tries
again.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plasmaart.errors import DomainError

log = logging.getLogger(__name__)

Where = Literal["database", "media"]
# How long a client should wait before trying a refused write again.
RETRY_AFTER_S = 30
# While a disk stays full, a summary is logged at most this often.
LOG_EVERY_S = 60.0
# A write that succeeds this long after the last refusal ends the outage.
QUIET_S = 2.0
# ... and so does this much free space found then on the disk's filesystem.
ROOM_BYTES = 1 << 20
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13
_POSTGRES_DISK_FULL = "53100"


class StorageFull(DomainError):
    """The disk under ``where`` has no room for this write; nothing was written."""

    code = "storage_full"
    status = 507
    title = "Insufficient storage"

    def __init__(self, where: Where) -> None:
        super().__init__(
            f"the server's {where} storage is full: nothing was written; "
            "try again later (with the same Idempotency-Key)",
            retry_after=RETRY_AFTER_S,
        )
        self.where = where


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the disk has no room."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageFull):
            return True
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        # sqlite3.Error: sqlite_errorcode (the extended code's low byte is
        # the primary one); psycopg's errors: sqlstate.
        code = getattr(current, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
            return True
        if getattr(current, "sqlstate", None) == _POSTGRES_DISK_FULL:
            return True
        # SQLAlchemy's DBAPIError keeps the driver's error in ``orig``.
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


@dataclass
class _State:
    since: float  # time.monotonic() of the first refusal
    last: float  # of the last one
    refused: int = 0
    logged_at: float = 0.0


class StorageWatch:
    """Which of this process's disks were last found full (module ``WATCH``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._full: dict[str, _State] = {}
        self._folders: dict[str, Path] = {}
        self.refused_total: dict[str, int] = {"database": 0, "media": 0}

    def watch_folder(self, where: Where, folder: Path) -> None:
        """Where ``where`` lives on this machine (its free space tells when
        the disk has room again, even without a write)."""
        with self._lock:
            self._folders[where] = folder

    def refused(self, where: Where, exc: BaseException) -> StorageFull:
        """Record a write refused for want of room; the error to raise."""
        now = time.monotonic()
        with self._lock:
            self.refused_total[where] = self.refused_total.get(where, 0) + 1
            state = self._full.get(where)
            first = state is None
            if state is None:
                state = self._full[where] = _State(since=now, last=now, logged_at=now)
            state.refused += 1
            state.last = now
            summary = not first and now - state.logged_at >= LOG_EVERY_S
            if summary:
                state.logged_at = now
            count, lasted = state.refused, now - state.since
        if first:
            log.error(
                "the %s disk is full: writes are refused (507 storage_full) until space "
                "returns; nothing of a refused write is kept: %s",
                where,
                exc,
                extra={"storage": where, "storage_event": "full"},
            )
        elif summary:
            log.error(
                "the %s disk is still full after %.0f s: %d write(s) refused",
                where,
                lasted,
                count,
                extra={"storage": where, "storage_event": "still_full"},
            )
        return StorageFull(where)

    def ok(self, where: Where) -> None:
        """A write to ``where`` succeeded (cheap when nothing was full)."""
        if where not in self._full:
            return
        with self._lock:
            state = self._full.get(where)
            if state is None or time.monotonic() - state.last < QUIET_S:
                return
            del self._full[where]
        _recovered(where, state, "takes writes again")

    def full(self) -> list[str]:
        """The disks found full whose outage has not ended (see ``ok``)."""
        now = time.monotonic()
        ended: list[tuple[str, _State]] = []
        with self._lock:
            for where, state in list(self._full.items()):
                folder = self._folders.get(where)
                if now - state.last >= QUIET_S and folder is not None and _has_room(folder):
                    del self._full[where]
                    ended.append((where, state))
            found = sorted(self._full)
        for where, state in ended:
            _recovered(where, state, "has room again")
        return found

    @contextmanager
    def translated(self, where: Where) -> Iterator[None]:
        """Run a write: an error saying the disk is full becomes ``StorageFull``
        (recorded); success clears the record of ``where``."""
        try:
            yield
        except StorageFull:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise self.refused(where, exc) from exc
            raise
        self.ok(where)


def _has_room(folder: Path) -> bool:
    # The folder may not be made yet: its nearest parent that is.
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= ROOM_BYTES


def _recovered(where: str, state: _State, how: str) -> None:
    log.warning(
        "the %s disk %s after %.1f s; %d write(s) were refused meanwhile",
        where,
        how,
        time.monotonic() - state.since,
        state.refused,
        extra={"storage": where, "storage_event": "recovered"},
    )


WATCH = StorageWatch()

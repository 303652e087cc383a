"""The audit log: who did what to whom, when and why. Append-only.

``record`` writes an entry in the caller's transaction; ``page`` reads the log
for the admins, newest first, in ``(created_at, id)`` order (the id breaks ties
between entries of the same instant), filtered by actor, target (the
``subject`` of the API), action and a time window. Each filter has an index in
that order (migration 0008), so every page is one index range however long
the log grows. The SQL (``record`` itself, an INSERT) is in ``audit_repository``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection

from plasmaart.accounts import audit_repository as repo
from plasmaart.accounts.audit_repository import AuditEntry, AuditFilter, AuditPosition, record

__all__ = ["AuditEntry", "AuditFilter", "AuditPage", "AuditPosition", "labels", "page", "record"]


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    more: bool  # older entries match too


def page(
    conn: Connection,
    wanted: AuditFilter,
    *,
    limit: int,
    before: AuditPosition | None = None,
) -> AuditPage:
    """Entries matching ``wanted``, newest first, strictly older than
    ``before`` (the last entry of the previous page)."""
    found = repo.entries(conn, wanted, limit=limit + 1, before=before)
    return AuditPage(entries=found[:limit], more=len(found) > limit)


def labels(conn: Connection, ids: Iterable[str]) -> dict[str, str]:
    """What a person reading the log knows the ids by: a user's e-mail, a
    team's name. Ids of neither (``cli``, ``system:…``, ``model:…``) are left out."""
    wanted = sorted(set(ids))
    return repo.names(conn, wanted) if wanted else {}

"""The dashboard's sections that show other features' data: scheduled
catalog changes (the banner on every page, the admin's list) and abuse flags
(the admin's list). Each is one small function returning plain data, so
the pages do not depend on how those features store it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from plasmaart.platform import Platform

T = TypeVar("T")
ABUSE_FLAGS_SHOWN = 100
SIGNALS_SHOWN = 5  # the latest signals of a flag the admin page lists


@dataclass(frozen=True)
class ScheduledChange:
    id: str
    summary: str  # "Veo3: credits 800 → 900"
    effective_at: datetime


@dataclass(frozen=True)
class AbuseFlag:
    user_id: str
    email: str
    status: str  # the account's: active or suspended
    reason: str
    evidence: list[str]
    flagged_at: datetime | None


@dataclass(frozen=True)
class Section(Generic[T]):
    """A section's items; ``wired`` is False while the feature it shows is
    not part of this build (the page then says so instead of an empty list)."""

    wired: bool
    items: list[T] = field(default_factory=list)


def scheduled_changes(conn: Connection, platform: Platform) -> list[ScheduledChange]:
    """Announced price, benefit or availability changes not yet in force."""
    return admin_catalog_changes(conn, platform).items


def _target_name(platform: Platform, target: str, target_id: str) -> str:
    try:
        if target == "model":
            return platform.catalogs.base.model(target_id).name
        return f"{platform.catalogs.base.plan(target_id).name} plan"
    except KeyError:
        return target_id


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "available" if value else "withdrawn"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return f"{value:,}" if isinstance(value, int) else str(value)


def admin_catalog_changes(conn: Connection, platform: Platform) -> Section[ScheduledChange]:
    """The catalog-changes service's scheduled changes (changes/service.py)."""
    changes = [
        ScheduledChange(
            id=view.id,
            summary=(
                f"{_target_name(platform, view.target, view.target_id)}: "
                f"{view.field.replace('_', ' ')} {_shown(view.previous)} → {_shown(view.value)}"
            ),
            effective_at=view.effective_at,
        )
        for view in platform.catalog_changes.upcoming(conn)
    ]
    return Section(wired=True, items=changes)


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """The flag's evidence in words: points per kind of signal, then the
    latest signals with what each was about; anything else as it is."""
    lines = [
        f"{kind.replace('_', ' ')}: {tally.get('count', 0)} signal(s), "
        f"{tally.get('points', 0)} points"
        for kind, tally in dict(evidence.get("by_kind") or {}).items()
        if isinstance(tally, dict)
    ]
    signals = evidence.get("signals") or []
    for signal in list(signals)[-SIGNALS_SHOWN:] if isinstance(signals, list) else []:
        if not isinstance(signal, dict):
            continue
        about = ", ".join(f"{k} {v}" for k, v in dict(signal.get("evidence") or {}).items())
        when = str(signal.get("at", ""))[:16].replace("T", " ")
        lines.append(f"{when} {signal.get('kind', '')}" + (f" ({about})" if about else ""))
    known = {"by_kind", "signals", "score", "flag_score", "suspend_score"}
    lines += [
        f"{key.replace('_', ' ')}: {_shown(value)}"
        for key, value in evidence.items()
        if key not in known
    ]
    return lines


def abuse_flags(conn: Connection, platform: Platform) -> Section[AbuseFlag]:
    """Open and suspended fair-use flags with their evidence (fairuse/service.py)."""
    flags = [
        AbuseFlag(
            user_id=flag.user_id,
            email=flag.email,
            status=flag.user_status,
            reason=(
                f"score {flag.score}"
                + (
                    f" (flag at {flag.evidence['flag_score']}, "
                    f"suspend at {flag.evidence['suspend_score']})"
                    if "flag_score" in flag.evidence and "suspend_score" in flag.evidence
                    else ""
                )
                + f"; {flag.status}"
            ),
            evidence=_evidence_lines(flag.evidence),
            flagged_at=flag.created_at,
        )
        for flag in platform.fairuse.flags(conn, limit=ABUSE_FLAGS_SHOWN)
    ]
    return Section(wired=True, items=flags)

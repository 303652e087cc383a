"""What each page shows, read from the services inside the caller's one read
transaction. Plain data for the templates: no request, no response here."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts.repository import Status, UserSearch
from plasmaart.accounts.service import User
from plasmaart.billing.receipts import receipt_label, receipt_path
from plasmaart.billing.repository import Payment, Subscription
from plasmaart.billing.subscriptions import PlanChangePreview
from plasmaart.catalog import (
    Catalog,
    ModelSpec,
    PlanSpec,
    plan_allows_model,
    plan_models,
    required_plan,
)
from plasmaart.clock import as_utc
from plasmaart.db.values import GENERATION_STATUSES
from plasmaart.errors import DomainError, InvalidInput
from plasmaart.generation.service import may_cancel
from plasmaart.ledger import queries
from plasmaart.ledger.service import Balance
from plasmaart.notify.notifications import Notification
from plasmaart.platform import Platform
from plasmaart.stats import PlatformStats, platform_stats
from plasmaart.teams.service import Member, Membership, Seats
from plasmaart.web.dashboard import sections
from plasmaart.web.dashboard.charts import Chart, credits_chart
from plasmaart.web.dashboard.invitations import InvitationRow, invitation_rows
from plasmaart.web.pagination import audit_cursor, audit_position, parse_position, position_text
from plasmaart.web.presenters import describe_payment

KIND_TITLES = {
    "text-to-image": "Text to image",
    "text-to-video": "Text to video",
    "image-to-video": "Image to video",
}

RECENT_GENERATIONS = 6
GALLERY_PAGE = 24
HISTORY_PAGE = 25
# Reading the history for a model filter: batches of this size, at most this
# many of them per page, so a rare model cannot make one page scan forever.
HISTORY_BATCH = 200
HISTORY_BATCHES = 10
DEFAULT_RANGE_DAYS = 30
MAX_CHART_DAYS = 92
AUDIT_PAGE = 50


@dataclass(frozen=True)
class Frame:
    """What every signed-in page shows around its content."""

    user: User
    wallet_id: str
    catalog: Catalog  # in force now, scheduled changes that took effect included
    plan: PlanSpec
    balance: Balance
    unread: int
    banner: list[sections.ScheduledChange]
    support_email: str
    sandbox_billing: bool
    # settings.email_verification_required (docs/accounts.md)
    verification_required: bool = False

    @property
    def unverified(self) -> bool:
        """The address must be confirmed and is not: every page says so,
        with a button that mails a new link."""
        return self.verification_required and not self.user.email_verified

    @property
    def read_only(self) -> bool:
        """A suspended account: its pages show everything, and offer no write
        but canceling the subscription and logging out (web/auth.py)."""
        return self.user.status == "suspended"


def frame(conn: Connection, platform: Platform, user: User) -> Frame:
    wallet_id = platform.ledger.wallet_of(conn, "user", user.id)
    unread = platform.notifications.list(conn, user.id, limit=99, unread_only=True)
    return Frame(
        user=user,
        wallet_id=wallet_id,
        catalog=platform.catalogs.now(conn),
        plan=platform.billing.plans.plan_of(conn, wallet_id),
        balance=platform.ledger.balance(conn, wallet_id),
        unread=len(unread.items),
        banner=sections.scheduled_changes(conn, platform),
        support_email=platform.settings.support_email,
        sandbox_billing=platform.settings.billing == "sandbox",
        verification_required=platform.settings.email_verification_required,
    )


# -- home ---------------------------------------------------------------------


def home(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    subscription = platform.billing.plans.subscription(conn, page.wallet_id)
    recent = platform.generations.list(conn, page.user, limit=RECENT_GENERATIONS)
    return {
        "subscription": subscription,
        "renewal": renewal_text(subscription),
        "generations": recent,
        "lots": [lot for lot in page.balance.lots if lot.remaining > 0],
        "names": {m.id: m.name for m in page.catalog.models},
    }


def renewal_text(subscription: Subscription | None) -> str:
    """What happens at the end of the period, in words."""
    if subscription is None:
        return "No subscription: the Free plan, with credit packs when you need more."
    end = subscription.current_period_end.strftime("%B %d, %Y")
    if subscription.status == "past_due":
        return f"Payment failed: pay the renewal to keep your plan (period ended {end})."
    if subscription.status == "canceled":
        return "Canceled: you are on the Free plan."
    if subscription.cancel_at_period_end:
        return f"Ends on {end}; then the Free plan."
    if subscription.stops_for_suspension:
        return (
            f"Ends on {end} without renewing, as the account is suspended; "
            "it renews as usual if the account is reinstated before then."
        )
    if subscription.pending_plan:
        return f"Changes to {subscription.pending_plan.title()} on {end}."
    return f"Renews on {end}."


# -- create -------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    spec: ModelSpec
    allowed: bool
    unlocked_by: PlanSpec | None

    @property
    def params(self) -> dict[str, Any]:
        """The model's request params as JSON data, for the form's script."""
        return {
            name: spec.model_dump(mode="json", exclude_none=True)
            for name, spec in self.spec.params.items()
        }


def create(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    groups: dict[str, list[ModelChoice]] = {kind: [] for kind in KIND_TITLES}
    for model in page.catalog.models:
        if not model.available:
            continue
        groups[model.kind].append(
            ModelChoice(
                spec=model,
                allowed=plan_allows_model(page.plan, model),
                unlocked_by=required_plan(page.catalog, model),
            )
        )
    first = next(
        (choice for choices in groups.values() for choice in choices if choice.allowed), None
    )
    return {
        "groups": [(KIND_TITLES[kind], choices) for kind, choices in groups.items() if choices],
        "selected": first,
        "teams": platform.teams.teams_of(conn, page.user.id),
        "sandbox_provider": platform.settings.provider == "sandbox",
    }


# -- generations --------------------------------------------------------------


def gallery(
    conn: Connection, platform: Platform, page: Frame, *, before: str | None, status: str | None
) -> dict[str, Any]:
    found = platform.generations.list(
        conn, page.user, limit=GALLERY_PAGE + 1, before=before, status=status
    )
    shown = found[:GALLERY_PAGE]
    managed = platform.generations.teams_managed_by(conn, page.user)
    return {
        "generations": shown,
        # Other members' team generations are the submitter's and the owner's to cancel.
        "cancelable": {
            g.id for g in shown if may_cancel(page.user.id, g.user_id, g.team_id, managed)
        },
        "next_before": found[GALLERY_PAGE - 1].id if len(found) > GALLERY_PAGE else None,
        "status": status,
        "statuses": GENERATION_STATUSES,
        "names": {m.id: m.name for m in page.catalog.models},
        "now": platform.clock.now(),
    }


# -- usage --------------------------------------------------------------------


@dataclass
class UsageFilter:
    since: date
    until: date  # inclusive, as people read a date range
    model: str | None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, time(0), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.until + timedelta(1), time(0), tzinfo=UTC)

    def query(self, **extra: str) -> dict[str, str]:
        params = {"since": self.since.isoformat(), "until": self.until.isoformat()}
        if self.model:
            params["model"] = self.model
        return {**params, **extra}


def _day(value: str | None, name: str, default: date, errors: dict[str, str]) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[name] = f"{value!r} is not a date (YYYY-MM-DD)"
        return default


def usage_filter(
    platform: Platform, since: str | None, until: str | None, model: str | None
) -> UsageFilter:
    today = platform.clock.now().date()
    errors: dict[str, str] = {}
    last = _day(until, "until", today, errors)
    first = _day(since, "since", last - timedelta(DEFAULT_RANGE_DAYS - 1), errors)
    if first > last:
        errors["until"] = "the end date must not come before the start date"
        first, last = last - timedelta(DEFAULT_RANGE_DAYS - 1), last
    known = {m.id for m in platform.catalogs.base.models}
    if model and model not in known:
        errors["model"] = f"no model {model!r}"
        model = None
    return UsageFilter(since=first, until=last, model=model or None, errors=errors)


def _position(cursor: str | None) -> queries.JournalPosition | None:
    found = parse_position(cursor) if cursor else None
    return None if found is None else queries.JournalPosition(*found)


def cursor_of(position: queries.JournalPosition) -> str:
    return position_text(position.id, position.created_at)


def history_page(
    conn: Connection, wallet_id: str, wanted: UsageFilter, cursor: str | None
) -> tuple[list[queries.GenerationLine], str | None]:
    """One page of the generation history, newest first, and the cursor of
    the next page (None on the last)."""
    rows: list[queries.GenerationLine] = []
    before = _position(cursor)
    for _ in range(HISTORY_BATCHES):
        batch = queries.generation_history(
            conn, wallet_id, wanted.start, wanted.end, limit=HISTORY_BATCH, before=before
        )
        rows += [line for line in batch if wanted.model in (None, line.model)]
        if len(rows) > HISTORY_PAGE or len(batch) < HISTORY_BATCH:
            break
        before = batch[-1].position
    else:
        # Batches ran out before the page filled: continue from the last one read.
        return rows[:HISTORY_PAGE], cursor_of(before) if before else None
    more = len(rows) > HISTORY_PAGE
    rows = rows[:HISTORY_PAGE]
    return rows, cursor_of(rows[-1].position) if more and rows else None


def usage_chart(conn: Connection, wallet_id: str, wanted: UsageFilter) -> Chart:
    """Credits per day by model over the filter's range (its last 92 days)."""
    first = max(wanted.since, wanted.until - timedelta(MAX_CHART_DAYS - 1))
    days = (wanted.until - first).days + 1
    credits: dict[tuple[date, str], int] = defaultdict(int)
    for offset in range(days):
        day = first + timedelta(offset)
        start = datetime.combine(day, time(0), tzinfo=UTC)
        for row in queries.usage(conn, wallet_id, start, start + timedelta(1), group_by="model"):
            if wanted.model in (None, row.key):
                credits[(day, row.key or "unknown")] += row.credits
    return credits_chart(first, days, dict(credits))


def usage(conn: Connection, page: Frame, wanted: UsageFilter, cursor: str | None) -> dict[str, Any]:
    rows, next_cursor = history_page(conn, page.wallet_id, wanted, cursor)
    return {
        "filter": wanted,
        "rows": rows,
        "next_cursor": next_cursor,
        "chart": usage_chart(conn, page.wallet_id, wanted),
        "models": [(m.id, m.name) for m in page.catalog.models],
        "names": {m.id: m.name for m in page.catalog.models},
        "csv_query": {
            "since": wanted.since.isoformat(),
            "until": (wanted.until + timedelta(1)).isoformat(),
        },
    }


# -- billing ------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentLine:
    payment: Payment
    description: str

    @property
    def receipt(self) -> str | None:
        """The receipt's number, for a payment that succeeded (a failed one has none)."""
        number = self.payment.receipt_number
        if self.payment.status != "succeeded" or number is None:
            return None
        return receipt_label(number)

    @property
    def receipt_url(self) -> str:
        return receipt_path(self.payment.id)


def plan_previews(
    conn: Connection, platform: Platform, page: Frame, subscription: Subscription | None
) -> dict[str, PlanChangePreview]:
    """What choosing each plan would charge and grant now, exactly as the
    change would apply it (``SubscriptionService.preview``): the numbers the plan
    cards show before the customer confirms. A plan the change would refuse
    (the plan one is on, anything while past due) has none."""
    if subscription is not None and subscription.status == "past_due":
        return {}
    customer = platform.billing.customer(conn, page.user.id)
    previews: dict[str, PlanChangePreview] = {}
    for plan in page.catalog.plans_by_price():
        if plan.price_cents == 0:
            continue
        try:
            previews[plan.id] = platform.billing.subscriptions.preview(conn, customer, plan.id)
        except DomainError:
            continue
    return previews


def included_models(catalog: Catalog, plan: PlanSpec) -> list[tuple[str, list[ModelSpec]]]:
    """The models ``plan`` includes, by the rule that gates submissions,
    grouped by kind (titled) in catalog order; kinds it has none of are left out."""
    groups: dict[str, list[ModelSpec]] = {kind: [] for kind in KIND_TITLES}
    for model in plan_models(catalog, plan):
        groups[model.kind].append(model)
    return [(KIND_TITLES[kind], models) for kind, models in groups.items() if models]


def billing(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    subscription = platform.billing.plans.subscription(conn, page.wallet_id)
    payments = platform.billing.payments.history(conn, page.user.id, limit=50)
    plans = page.catalog.plans_by_price()
    return {
        "previews": plan_previews(conn, platform, page, subscription),
        "plans": plans,
        # The caller's own card lists what their plan gives them now (a period
        # keeps the terms it started with); the others, what subscribing gives.
        "included": {
            plan.id: included_models(page.catalog, page.plan if plan.id == page.plan.id else plan)
            for plan in plans
        },
        "packs": page.catalog.credit_packs,
        "currency": page.catalog.currency.upper(),
        "subscription": subscription,
        "renewal": renewal_text(subscription),
        "subscribed": subscription is not None and subscription.status != "canceled",
        "payments": [PaymentLine(p, describe_payment(page.catalog, p)) for p in payments],
    }


# -- team ---------------------------------------------------------------------


@dataclass(frozen=True)
class TeamView:
    membership: Membership
    members: list[Member]
    seats: Seats
    invitations: list[InvitationRow]  # only the owner sees them


def team(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    views = []
    for membership in platform.teams.teams_of(conn, page.user.id):
        team_id = membership.team.id
        owner = membership.role == "owner"
        views.append(
            TeamView(
                membership=membership,
                members=platform.teams.members(conn, team_id, page.user.id, limit=200),
                seats=platform.teams.seats(conn, membership.team),
                invitations=(
                    invitation_rows(conn, platform, team_id, page.user.id) if owner else []
                ),
            )
        )
    studio = next((p for p in page.catalog.plans_by_price() if p.team_seats > 1), None)
    return {
        "teams": views,
        "owns_team": any(view.membership.role == "owner" for view in views),
        "can_create": page.plan.team_seats > 1,
        "team_plan": studio,
    }


# -- settings -----------------------------------------------------------------


def settings(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    keys = platform.credentials.list_api_keys(conn, page.user.id)
    watermark_plan = next((p for p in page.catalog.plans_by_price() if p.watermark_removable), None)
    return {
        "keys": keys,
        "pending_email": platform.addresses.pending_email(conn, page.user.id),
        "watermark_allowed": page.plan.watermark_removable,
        "watermark_plan": watermark_plan,
        "two_factor": platform.second_factor.status(conn, page.user),
    }


# -- notifications ------------------------------------------------------------


def notifications(
    conn: Connection, platform: Platform, page: Frame, cursor: str | None
) -> dict[str, Any]:
    found = platform.notifications.list(conn, page.user.id, limit=50, cursor=cursor)
    items: list[Notification] = found.items
    return {"notifications": items, "next_cursor": found.next_cursor}


# -- admin --------------------------------------------------------------------


# How many users the admin page lists (the newest that match its search).
ADMIN_USERS_SHOWN = 50


def admin(
    conn: Connection,
    platform: Platform,
    *,
    q: str | None = None,
    status: Status | None = None,
) -> dict[str, Any]:
    stats: PlatformStats = platform_stats(conn)
    catalog = platform.catalogs.now(conn)
    search = UserSearch(ADMIN_USERS_SHOWN, q=q, status=status)
    return {
        "users": platform.billing.plans.users_on_plans(conn, search),
        "stats": stats,
        "models": catalog.models,
        "plans": catalog.plans_by_price(),
        "unlocked_by": {m.id: required_plan(catalog, m) for m in catalog.models},
        "catalog_changes": sections.admin_catalog_changes(conn, platform),
        "abuse": sections.abuse_flags(conn, platform),
    }


# -- admin: the audit log -------------------------------------------------------


@dataclass(frozen=True)
class AuditForm:
    """The audit page's filter form: what was typed (shown back as typed), the
    filter it makes, and a message per field that could not be read."""

    values: dict[str, str]
    wanted: audit.AuditFilter
    errors: dict[str, str] = field(default_factory=dict)

    def query(self, **extra: str) -> dict[str, str]:
        return {**{k: v for k, v in self.values.items() if v}, **extra}


def _moment(value: str, name: str, errors: dict[str, str]) -> datetime | None:
    if not value:
        return None
    try:
        # A date is its midnight; a time without offset (as datetime-local
        # inputs send it) is UTC.
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        errors[name] = f"{value!r} is not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
    except OverflowError:
        errors[name] = f"{value!r} is out of range"
    return None


def audit_form(
    actor: str | None,
    subject: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
) -> AuditForm:
    values = {
        "actor": (actor or "").strip(),
        "subject": (subject or "").strip(),
        "action": (action or "").strip(),
        "since": (since or "").strip(),
        "until": (until or "").strip(),
    }
    errors: dict[str, str] = {}
    start = _moment(values["since"], "since", errors)
    end = _moment(values["until"], "until", errors)
    if start is not None and end is not None and end <= start:
        errors["until"] = "the end must come after the start"
        end = None
    wanted = audit.AuditFilter(
        actor=values["actor"] or None,
        target=values["subject"] or None,
        action=values["action"] or None,
        since=start,
        until=end,
    )
    return AuditForm(values=values, wanted=wanted, errors=errors)


@dataclass(frozen=True)
class AuditLine:
    entry: audit.AuditEntry
    actor_label: str | None  # the e-mail or team name behind the id, when known
    subject_label: str | None
    details: list[tuple[str, str]]


def _detail(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def admin_audit(conn: Connection, form: AuditForm, cursor: str | None) -> dict[str, Any]:
    """One page of the audit log, newest first, and the cursor of the next."""
    try:
        before = audit_position(cursor) if cursor else None
    except InvalidInput:
        before = None  # a mangled link: start from the newest entry
    found = audit.page(conn, form.wanted, limit=AUDIT_PAGE, before=before)
    names = audit.labels(conn, [e.actor for e in found.entries] + [e.target for e in found.entries])
    lines = [
        AuditLine(
            entry=entry,
            actor_label=names.get(entry.actor),
            subject_label=names.get(entry.target),
            details=[(key, _detail(value)) for key, value in sorted(entry.data.items())],
        )
        for entry in found.entries
    ]
    return {
        "form": form,
        "lines": lines,
        "next_cursor": audit_cursor(found.entries[-1].position) if found.more else None,
        "paged": before is not None,
    }

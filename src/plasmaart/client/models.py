"""What the API answers, as frozen dataclasses.

``decode`` builds them from JSON by their annotations: times become aware
datetimes, lists become tuples, and fields the client does not know yet are
ignored, so a server that adds fields never breaks an older client. Values
that are enums on the server (``status``, ``kind``, ...) are plain strings
here for the same reason.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from plasmaart.client.errors import UnexpectedResponse

T = TypeVar("T")


# -- accounts ----------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: str  # user | admin
    status: str  # active | suspended
    created_at: datetime


@dataclass(frozen=True)
class VerificationSent:
    """Sign-up while the server requires address verification (no session
    yet: open the mailed link, then log in), or a resend of the link.
    ``verification``: ``sent``, or ``already_verified`` (nothing sent)."""

    email: str
    verification: str


@dataclass(frozen=True)
class Subscription:
    plan: str
    status: str  # none | active | past_due | canceled
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool  # ends at the period end instead of renewing
    pending_plan: str | None
    cancel_reason: str | None = None  # requested | account_suspended
    # While past due: when the account falls to Free unless the renewal is
    # paid (only in the answers of the subscription's own calls).
    grace_ends_at: datetime | None = None


@dataclass(frozen=True)
class BalanceSummary:
    available: int
    held: int


@dataclass(frozen=True)
class TeamRef:
    id: str
    name: str
    role: str  # owner | member


@dataclass(frozen=True)
class AccountSettings:
    remove_watermark: bool


@dataclass(frozen=True)
class Me:
    id: str
    email: str
    role: str
    status: str
    plan: str
    subscription: Subscription
    balance: BalanceSummary
    teams: tuple[TeamRef, ...]
    settings: AccountSettings
    status_reason: str | None = None  # why the account is suspended
    support_email: str | None = None
    email_verified: bool = False  # whether the address is proven the owner's
    pending_email: str | None = None  # a change of address waiting for its link


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewApiKey(ApiKey):
    # The secret, shown only once. None when the server replayed a stored
    # answer (a retry after the first answer was lost): it never stores the
    # secret, so revoke that key and create another.
    key: str | None


# -- catalog -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelParam:
    type: str
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    default: Any = None
    label: str = ""  # what a form calls it; empty from a server that predates labels
    help: str = ""  # one sentence on what it does


@dataclass(frozen=True)
class ModelInputs:
    prompt: str
    max_prompt_chars: int
    image: str  # none | optional | required
    params: dict[str, ModelParam]


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    kind: str  # text-to-image | text-to-video | image-to-video
    credits: int
    max_outputs: int
    tier: str  # image | video-medium | video-premium
    inputs: ModelInputs
    available: bool
    required_plan: str | None
    early_access: bool
    upcoming_change: dict[str, Any] | None
    aliases: tuple[str, ...] = ()
    description: str = ""  # one line; empty from a server that predates descriptions


@dataclass(frozen=True)
class Concurrency:
    jobs: int
    video_jobs: int


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    price_cents: int
    currency: str
    monthly_credits: int
    rollover_cap: int
    model_tiers: tuple[str, ...]
    queue_class: str
    features: tuple[str, ...]
    team_seats: int
    concurrency: Concurrency
    early_access: bool = False
    commercial_license: bool = False
    watermark_removable: bool = False
    max_queued_jobs: int | None = None
    requests_per_minute: int | None = None
    # The ids of every model the plan includes (what a submission accepts);
    # ``features`` are the policy's words for it. Empty from an older server.
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreditPack:
    id: str
    credits: int
    price_cents: int
    currency: str
    expires_after_days: int | None = None


# -- credits -----------------------------------------------------------------


@dataclass(frozen=True)
class Lot:
    id: str
    source: str  # promo | subscription | rollover | adjustment | purchase
    granted: int
    remaining: int
    expires_at: datetime | None


@dataclass(frozen=True)
class NextExpiry:
    credits: int
    expires_at: datetime


@dataclass(frozen=True)
class Balance:
    available: int
    held: int
    lots: tuple[Lot, ...]
    next_expiry: NextExpiry | None


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    created_at: datetime
    kind: str  # grant | hold | capture | release | expire | rollover | refund | ...
    amount: int  # the signed change of ``available``
    credits: int
    balance_after: int
    generation_id: str | None
    model: str | None
    memo: str | None


@dataclass(frozen=True)
class UsageRow:
    key: str  # a model id or a UTC day, by ``group_by``
    generations: int
    outputs: int
    credits: int


# -- billing -----------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    """Under Stripe billing, subscribing and buying a pack answer a hosted
    checkout page to pay at; the purchase applies once Stripe confirms it."""

    checkout_url: str


@dataclass(frozen=True)
class SubscriptionPreview:
    """What subscribing or changing to ``plan`` charges and grants now."""

    plan: str
    change: str  # subscribe | upgrade | downgrade | resume
    amount_cents: int  # charged now
    currency: str
    credits_now: int  # granted now (an upgrade's expire at the period end)
    takes_effect: str  # now | period_end
    renews_at: datetime
    renews_amount_cents: int
    # An upgrade: pass it as ``prorate_at`` to ``change_plan`` to be charged
    # exactly these amounts (within 15 minutes).
    prorated_at: datetime | None


@dataclass(frozen=True)
class CreditPurchase:
    payment_id: str
    pack: str
    credits: int
    balance: int  # available credits right after the purchase
    expires_at: datetime | None


@dataclass(frozen=True)
class Payment:
    id: str
    created_at: datetime
    kind: str  # subscription | renewal | upgrade | pack
    status: str  # succeeded | failed
    description: str
    plan: str | None
    pack: str | None
    amount_cents: int
    currency: str
    credits: int
    period_start: datetime | None
    period_end: datetime | None
    failure_reason: str | None
    receipt_number: str | None = None
    receipt_url: str | None = None
    hosted_invoice_url: str | None = None


@dataclass(frozen=True)
class SpendLimit:
    """A wallet's own monthly spend limit (None: none), what it spent this
    calendar month (UTC; charged or still held) and when that resets."""

    monthly_credits: int | None
    spent: int
    resets_at: datetime


@dataclass(frozen=True)
class TopupRun:
    id: str
    status: str  # pending | succeeded | failed | action_required
    created_at: datetime
    finished_at: datetime | None
    pack: str
    credits: int
    amount_cents: int
    currency: str
    payment_id: str | None
    failure_reason: str | None
    action_url: str | None  # action_required: where the customer confirms


@dataclass(frozen=True)
class AutoTopup:
    """A wallet's auto top-up: buy ``pack`` when the available balance drops
    below ``threshold``, spending at most ``monthly_cap_cents`` a month."""

    wallet_id: str
    enabled: bool
    threshold: int
    pack: str | None
    monthly_cap_cents: int
    currency: str
    spent_this_month_cents: int
    failures: int  # in a row
    disabled_reason: str | None
    in_flight: bool
    last_run: TopupRun | None


@dataclass(frozen=True)
class ClockAdvance:
    """The sandbox test clock moved (admins, sandbox billing only), and what
    fell due: renewals, failed payments, downgrades, cancellations, grace
    periods ended, lots expired."""

    now: datetime
    offset_days: float
    renewed: int
    downgraded: int
    payment_failed: int
    canceled: int
    grace_ended: int
    expired_lots: int
    expired_credits: int


@dataclass(frozen=True)
class SandboxCard:
    user_id: str
    declines: bool
    requires_action: bool


# -- teams -------------------------------------------------------------------


@dataclass(frozen=True)
class Seats:
    used: int  # members plus pending invitations
    pending: int
    total: int


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    owner_id: str
    created_at: datetime
    seats: Seats


@dataclass(frozen=True)
class TeamMember:
    user_id: str
    email: str
    role: str  # owner | member
    monthly_credit_cap: int | None
    joined_at: datetime


@dataclass(frozen=True)
class Invitation:
    id: str
    team_id: str
    email: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class NewInvitation(Invitation):
    # The secret to accept with, shown only once (None on a replayed answer,
    # as with NewApiKey.key: resend that invitation for a new one).
    token: str | None
    # The link mailed to the address (it carries the token; None on a replay).
    url: str | None = None


@dataclass(frozen=True)
class InvitationPreview:
    """What an invitation's token opens: the team, who invited, the address
    invited and the invitation's ``status`` (pending, accepted, declined,
    revoked, expired)."""

    id: str
    team_id: str
    team_name: str
    inviter_email: str
    email: str
    status: str
    expires_at: datetime
    viewer_is_member: bool


# -- generations -------------------------------------------------------------

# A generation in one of these states changes no more.
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Output:
    id: str
    # A signed download link (valid about an hour), usually relative to the
    # server: ``download_output`` resolves and streams it.
    url: str
    content_type: str  # image/png, image/jpeg, image/webp, video/mp4
    width: int | None
    height: int | None
    duration_s: float | None
    watermarked: bool
    license: str  # personal | commercial


@dataclass(frozen=True)
class GenerationError:
    code: str
    message: str


@dataclass(frozen=True)
class Generation:
    id: str
    status: str  # queued | running | succeeded | failed | canceled
    model: str
    kind: str  # text-to-image | text-to-video | image-to-video
    prompt: str
    num_outputs: int
    credits_per_output: int
    credits_held: int
    credits_charged: int
    # The wallet's available balance right after this generation's last
    # ledger movement (its hold, then its capture or release).
    balance_after: int
    outputs: tuple[Output, ...]
    error: GenerationError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None
    team_id: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    license: str | None = None
    # Whether you may cancel it now (queued or running, and yours or your
    # team's as its owner); None from a server that does not say.
    can_cancel: bool | None = None

    @property
    def finished(self) -> bool:
        """Succeeded, failed or canceled: the status changes no more."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Quote:
    credits: int
    available: int
    available_after: int
    allowed: bool
    reason: str | None  # why not, when ``allowed`` is false


@dataclass(frozen=True)
class Upload:
    id: str
    url: str  # a signed link to the stored image
    content_type: str  # as found in the bytes: image/png, image/jpeg or image/webp
    width: int
    height: int


# -- notifications, admin, operations -----------------------------------------


@dataclass(frozen=True)
class Notification:
    id: str
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


@dataclass(frozen=True)
class AdminUser:
    id: str
    email: str
    role: str
    status: str
    status_reason: str | None
    plan: str
    available: int
    held: int
    created_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit log: who (``actor``) did what (``action``) to
    whom (``subject``), when and why."""

    id: int
    created_at: datetime
    actor: str
    action: str
    subject: str
    reason: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class CreditAdjustment:
    user_id: str
    amount: int
    available: int  # the user's available balance right after
    lot_id: str | None


@dataclass(frozen=True)
class Health:
    status: str


@dataclass(frozen=True)
class Readiness:
    status: str
    database: str
    migration: str | None


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of ``/v1/events``: ``type`` is
    ``balance.updated``, ``notification``, ``generation.updated`` or
    ``resync`` (events may have been missed: fetch the current state again);
    ``data`` is the decoded JSON."""

    id: str | None
    type: str
    data: Any


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None


# -- decoding ----------------------------------------------------------------


_FIELDS: dict[type[Any], tuple[tuple[str, Any, bool], ...]] = {}


def _fields(cls: type[Any]) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type, required) of each field of a dataclass."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = _read_fields(cls)
    return found


def _read_fields(cls: type[Any]) -> tuple[tuple[str, Any, bool], ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            field.name,
            hints[field.name],
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
        )
        for field in dataclasses.fields(cls)
    )


def _convert(kind: Any, value: Any, where: str) -> Any:
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _convert(inner[0], value, where)
    if value is None:
        raise UnexpectedResponse(f"{where} is null")
    if kind is datetime:
        if not isinstance(value, str):
            raise UnexpectedResponse(f"{where} is not a time: {value!r}")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise UnexpectedResponse(f"{where} is not an ISO 8601 time: {value!r}") from None
    if origin is tuple:
        if not isinstance(value, list):
            raise UnexpectedResponse(f"{where} is not a list")
        item = typing.get_args(kind)[0]
        return tuple(_convert(item, element, f"{where}[]") for element in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise UnexpectedResponse(f"{where} is not an object")
        item = typing.get_args(kind)[1]
        return {key: _convert(item, element, f"{where}.{key}") for key, element in value.items()}
    if dataclasses.is_dataclass(kind):
        return decode(typing.cast(type[Any], kind), value, where)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int, bool) and type(value) is not kind:
        raise UnexpectedResponse(f"{where} is not {kind.__name__}: {value!r}")
    return value


def decode(cls: type[T], value: Any, where: str | None = None) -> T:
    """A ``cls`` from a JSON object; unknown keys are ignored."""
    where = where or cls.__name__
    if not isinstance(value, dict):
        raise UnexpectedResponse(f"{where} is not a JSON object")
    known: dict[str, Any] = {}
    for name, kind, required in _fields(cls):
        if name in value:
            known[name] = _convert(kind, value[name], f"{where}.{name}")
        elif required:
            raise UnexpectedResponse(f"{where} lacks {name!r}")
    return cls(**known)


def decode_page(cls: type[T], value: Any) -> Page[T]:
    """``{"data": [...], "next_cursor": ...}``."""
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise UnexpectedResponse(f"a list of {cls.__name__} is not {{data, next_cursor}}")
    cursor = value.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise UnexpectedResponse("next_cursor is not a string")
    items = tuple(decode(cls, item, f"{cls.__name__}[]") for item in value["data"])
    return Page(items, cursor)

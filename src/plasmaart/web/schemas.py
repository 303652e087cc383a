"""Request and response models more than one router uses: ``StrictBody``,
the base of every request body, and the subscription as the API shows it
(``/v1/me`` and the billing endpoints); ``shape``, which fills a response
model from a record's fields of the same names."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plasmaart.billing.repository import Subscription

M = TypeVar("M", bound=BaseModel)


def shape(model: type[M], source: object, **computed: Any) -> M:
    """``model`` filled from ``source``'s attributes of the same names (nested
    models too), and the fields the answer computes or renames in ``computed``.
    A field found in neither is refused, as the model's constructor would."""
    values = {
        name: getattr(source, name)
        for name in model.model_fields
        if name not in computed and hasattr(source, name)
    }
    return model.model_validate({**values, **computed}, from_attributes=True)


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


class StrictBody(BaseModel):
    """Request bodies refuse fields they do not know, and NUL characters
    anywhere (PostgreSQL cannot store them in text, and no field needs one)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class SubscriptionOut(BaseModel):
    plan: str
    status: Literal["none", "active", "past_due", "canceled"]
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool = Field(
        description="The subscription ends at its period end instead of renewing"
    )
    cancel_reason: Literal["requested", "account_suspended"] | None = Field(
        description="Why it ends: you canceled it (`requested`), or the account is "
        "suspended (`account_suspended`: reinstating it before the period end renews it)"
    )
    pending_plan: str | None


def subscription_out(plan_id: str, subscription: Subscription | None) -> SubscriptionOut:
    """The subscription as the API shows it; ``status: none`` (on ``plan_id``) without one."""
    if subscription is None:
        return SubscriptionOut(
            plan=plan_id,
            status="none",
            current_period_start=None,
            current_period_end=None,
            cancel_at_period_end=False,
            cancel_reason=None,
            pending_plan=None,
        )
    return shape(
        SubscriptionOut,
        subscription,
        cancel_at_period_end=subscription.ends_at_period_end,
        cancel_reason=(
            "requested"
            if subscription.cancel_at_period_end
            else "account_suspended"
            if subscription.stops_for_suspension
            else None
        ),
    )

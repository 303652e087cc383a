"""Subscriptions and payments: plans over time, and the credits they grant.

``service.py`` is the plan lifecycle and the credit packs (every credit moved
through the ledger); ``backends.py`` the interface of where money comes from,
``sandbox.py`` its offline implementation, ``clock.py`` the sandbox's test
clock, ``tasks.py`` the worker's clock job, ``rules.py`` and ``periods.py``
the pure rules. ``docs/billing.md`` walks through it.
"""

from __future__ import annotations

from plasmaart.billing.backends import BillingBackend
from plasmaart.clock import Clock
from plasmaart.config import ConfigError, Settings


def create_backends(settings: Settings, clock: Clock) -> dict[str, BillingBackend]:
    """The billing backends by name: the sandbox always (the CLI subscribes
    through it), and the one the settings choose."""
    from plasmaart.billing.sandbox import SandboxBackend

    backends: dict[str, BillingBackend] = {"sandbox": SandboxBackend(clock)}
    if settings.billing != "sandbox":
        raise ConfigError(
            f"PLASMAART_BILLING={settings.billing}: this build has only the sandbox billing backend"
        )
    return backends

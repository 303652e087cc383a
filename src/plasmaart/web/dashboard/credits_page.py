"""The Credits page (``/credits``): the wallet's controls, one section each
(docs/credits.md, docs/dashboard.md): spend limits, auto top-up, balance
alerts and the expiry notice.

Each section is a template (``credits_<name>.html``, included by
``credits.html``) and a function here that reads what it shows, in the
page's read transaction. The forms write through the JSON API, as every
dashboard form does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from plasmaart.platform import Platform
from plasmaart.web.dashboard import credits_topup, limits_section
from plasmaart.web.dashboard.credits_alerts import alerts_section
from plasmaart.web.dashboard.views import Frame

Section = Callable[[Connection, Platform, Frame], dict[str, Any]]

# The sections' readers, in page order.
SECTIONS: tuple[Section, ...] = (limits_section.limits, credits_topup.topup, alerts_section)


def credits(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    """The page's context: every section's."""
    context: dict[str, Any] = {}
    for section in SECTIONS:
        context.update(section(conn, platform, page))
    return context

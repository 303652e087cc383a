"""The Credits page's balance alerts section (``credits_alerts.html``): the
wallet's alerts with their thresholds and armed or fired state, and the
expiry notice's window. Its form saves through ``PUT /v1/balance-alerts``
(``static/js/alerts.js``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from plasmaart.controls.alerts import MAX_ALERTS, MAX_EXPIRY_NOTICE_DAYS
from plasmaart.platform import Platform
from plasmaart.web.dashboard.views import Frame


def alerts_section(conn: Connection, platform: Platform, page: Frame) -> dict[str, Any]:
    owned = [m.team for m in platform.teams.teams_of(conn, page.user.id) if m.role == "owner"]
    return {
        "balance_alerts": platform.balance_alerts.read(conn, page.wallet_id),
        # A team spends its owner's wallet: the owner's alerts are the team's.
        "alerts_team": owned[0] if owned else None,
        "max_alerts": MAX_ALERTS,
        "max_expiry_notice_days": MAX_EXPIRY_NOTICE_DAYS,
    }

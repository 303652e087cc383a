"""The words of the notice that a failing webhook endpoint was turned off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plasmaart.outbox import Text
from plasmaart.webhooks.notices import EndpointDisabled


def endpoint_disabled(fact: EndpointDisabled) -> Text:
    return Text(
        "A webhook endpoint was turned off",
        f"Every delivery to your webhook endpoint {fact.url} has failed since "
        f"{fact.failing_since:%Y-%m-%d at %H:%M} UTC, so on "
        f"{fact.disabled_at:%Y-%m-%d at %H:%M} UTC, after {fact.failing_for_days} days of "
        "failures, we turned it off. Events are no longer sent to it, and the "
        "deliveries that were still being retried were stopped.\n\n"
        f"The last attempt failed with: {fact.last_error}\n\n"
        "Check that the address is right and that your server answers our POST "
        "requests with a 2xx status within 10 seconds. The endpoint's delivery log "
        "shows every attempt. Once your server is ready, enable the endpoint again "
        "on the Webhooks page, and send again from its log the deliveries you missed:\n\n"
        f"{fact.manage_url}",
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {
    EndpointDisabled: endpoint_disabled,
}

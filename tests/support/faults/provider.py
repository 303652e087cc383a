"""A provider that lies: the fake fal (``tests/support/fake_fal.py``) hangs,
answers 500, answers malformed JSON, delivers k of n outputs, or answers
after the job's deadline.

``ProviderLies(fake, rng)`` is the fault (kind ``"provider lies"``): each
``inject`` tells one lie, chosen at random among the five (``random_lie``), to
every request submitted for the next ``seconds`` (or ``requests``);
``heal`` makes the fake honest again at once: the mode ends, hangs answer, the
requests lying now are answered honestly from then on, so every job can end.
``fal_env(fake)`` is the environment that points ``plasmaart serve`` and
``plasmaart worker`` child processes at the fake (over loopback). What the
fake did for each request, to check "charged only for delivered outputs"
against, is ``fake.record()`` (``Served``: the lie, outputs asked and offered,
downloads served, webhook answers).

A single request can be told a lie of its own, whatever the mode, by a marker
in its prompt (``Lie(...).marker()``), which the platform passes to fal as is.
"""

from __future__ import annotations

import random
from collections import Counter

from tests.support.fake_fal import LIE_KINDS, STAGES, FakeFal, Lie


def random_lie(rng: random.Random, *, late_s: float = 2.0) -> Lie:
    """One of the five lies, its details drawn from ``rng``: where a hang, a
    500 or a malformed answer happens (submit, status or result) and whether
    it lasts (``times`` None) or passes after one or two answers; how many
    outputs a partial result offers (0 or 1); how late a late answer is."""
    kind = rng.choice(LIE_KINDS)
    return Lie(
        kind=kind,
        stage=rng.choice(STAGES),
        times=rng.choice((1, 2, None)),
        deliver=rng.choice((0, 1)),
        late_s=late_s,
        shape=rng.choice(("invalid", "wrong")),
    )


class ProviderLies:
    """The fake fal lies, one random lie per ``inject``, until ``heal``."""

    kind = "provider lies"

    def __init__(
        self,
        fake: FakeFal,
        rng: random.Random,
        *,
        seconds: float | None = 3.0,
        requests: int | None = None,
        late_s: float = 2.0,
        hang_s: float = 5.0,
    ) -> None:
        self.fake = fake
        self.rng = rng
        self.seconds = seconds
        self.requests = requests
        self.late_s = late_s
        # No hang outlasts this, even before ``heal``.
        fake.hang_s = hang_s
        # A platform process may be down when a webhook is sent: record, never raise.
        fake.strict_webhooks = False
        self.told: Counter[str] = Counter()  # lies injected, by kind

    def inject(self) -> None:
        lie = random_lie(self.rng, late_s=self.late_s)
        self.told[lie.kind] += 1
        self.fake.lie(lie, requests=self.requests, seconds=self.seconds)

    def heal(self) -> None:
        self.fake.honest()


def fal_env(
    fake: FakeFal,
    *,
    timeout_s: float = 1.0,
    webhook_url: str | None = None,
    poll_interval_s: float = 0.5,
) -> dict[str, str]:
    """The environment of child processes whose provider is ``fake``: a short
    client timeout (a hang costs ``timeout_s`` per call) and, with
    ``webhook_url`` (one API process's ``…/v1/webhooks/fal``), fal's
    webhooks, the polls between them every ``poll_interval_s``."""
    settings = fake.platform_settings()
    env = {
        "PLASMAART_PROVIDER": str(settings["provider"]),
        "FAL_KEY": str(settings["fal_key"]),
        "PLASMAART_FAL_BASE_URL": str(settings["fal_base_url"]),
        "PLASMAART_FAL_JWKS_URL": str(settings["fal_jwks_url"]),
        "PLASMAART_FAL_TIMEOUT_S": str(timeout_s),
    }
    if webhook_url is not None:
        env["PLASMAART_FAL_WEBHOOK_URL"] = webhook_url
        env["PLASMAART_FAL_POLL_INTERVAL_S"] = str(poll_interval_s)
    return env

"""Two corpora of account behaviour for fair use (docs/fair-use.md): normal
creator work, which must never be suspended (nor, here, even flagged), and
abuse, which must be caught.

Each scenario is a deterministic sequence of timed steps (a seeded
``random.Random`` where variety helps), replayed through the HTTP API by
``tests.support.fairuse_replay`` with a manual clock, so that ten hours of
use replay in seconds. ``expect`` is the outcome for the scenario's
``subject`` (for normal work: for every actor):

- ``clear``: no flag, no suspension;
- ``flagged``: an open flag for review, the account active (volume abuse by
  an account that paid);
- ``suspended``: suspended automatically (exploitation by anyone; volume
  abuse by an account that never paid).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal[
    "submit",  # POST /v1/generations (body), remembered as ``ref``
    "cancel",  # POST /v1/generations/{id}/cancel of the submission ``body["ref"]``
    "invalid",  # POST /v1/generations with a body the API refuses (422)
    "quote",  # POST /v1/quotes
    "work",  # the worker runs every queued job (an instant provider)
    "card",  # an admin makes the actor's sandbox card decline or not (``body["declines"]``)
    "buy",  # POST /v1/credit-purchases (``body["pack"]``), remembered as ``ref``
    "plan",  # PATCH /v1/subscription (``body["plan"]``)
    "late_in_period",  # the clock moves to two days before the period ends
    "period_end",  # the clock moves past the period end; the billing clock runs
    "dispute",  # the purchase ``body["ref"]`` is disputed (a chargeback)
]
Outcome = Literal["clear", "flagged", "suspended"]
Kind = Literal["normal", "abuse"]


@dataclass(frozen=True)
class Actor:
    name: str
    # A paid plan, subscribed (and paid) through the sandbox; None: Free.
    plan: str | None = None
    # Credits granted without any payment (a promotion): spendable, not paid.
    credits: int = 0
    # A member of this actor's team (who owns a Studio team), spending its wallet.
    team_of: str | None = None


@dataclass(frozen=True)
class Step:
    wait_s: float  # seconds after the previous step
    actor: str
    action: Action
    body: Mapping[str, Any] = field(default_factory=dict)
    ref: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Kind
    # The row of the confusion table: normal, exploitation, volume (never
    # paid) or volume (paying).
    family: str
    description: str
    actors: tuple[Actor, ...]
    steps: tuple[Step, ...]
    expect: Outcome
    # Whose outcome counts (None: every actor's).
    subject: str | None = None


IMAGE_MODELS = ("flux-schnell", "flux-dev", "seedream-v3", "sd3-medium", "flux-pro-v1.1")
PROMPTS = (
    "a lighthouse on a basalt cliff at dusk, volumetric fog, 35mm",
    "portrait of an elderly fisherman, rembrandt lighting, oil on canvas",
    "isometric cutaway of a cozy ramen shop at night, neon signs",
    "macro photo of dew on a spider web at sunrise",
    "a brutalist library interior with hanging plants, soft daylight",
    "cyberpunk alley in the rain, reflections, wide angle",
)


class Script:
    """Steps of one scenario, built in order."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._refs = 0

    def add(
        self, wait_s: float, actor: str, action: Action, body: Mapping[str, Any] | None = None
    ) -> str:
        self._refs += 1
        ref = f"{action}{self._refs}"
        self.steps.append(Step(wait_s, actor, action, dict(body or {}), ref))
        return ref

    def submit(
        self,
        wait_s: float,
        actor: str,
        model: str,
        prompt: str,
        *,
        seed: int | None = None,
        outputs: int = 1,
        **params: Any,
    ) -> str:
        body: dict[str, Any] = {"model": model, "prompt": prompt, "num_outputs": outputs}
        if seed is not None:
            params["seed"] = seed
        if params:
            body["params"] = params
        return self.add(wait_s, actor, "submit", body)

    def work(self, wait_s: float = 0.0) -> None:
        self.add(wait_s, "", "work")

    def done(self) -> tuple[Step, ...]:
        return tuple(self.steps)


# -- normal creator work --------------------------------------------------------------


def seed_sweep() -> Scenario:
    """The issue's case: a Studio creator sweeps 45 seeds of one prompt in
    ten minutes, the last third across five models."""
    s = Script()
    prompt = PROMPTS[0]
    for n in range(45):
        model = "flux-dev" if n < 30 else IMAGE_MODELS[n % 5]
        s.submit(13, "creator", model, prompt, seed=1000 + n, aspect_ratio="1:1")
        if n % 10 == 9:
            s.work()
    s.work()
    return Scenario(
        "seed_sweep",
        "normal",
        "normal",
        "45 submissions of one prompt in 10 minutes, new seed each, 5 models (Studio)",
        (Actor("creator", plan="studio"),),
        s.done(),
        "clear",
    )


def model_comparison() -> Scenario:
    """A Pro creator compares one prompt across every image model, three
    seeds each, and two video models, in five minutes."""
    s = Script()
    prompt = PROMPTS[2]
    for seed in (7, 8, 9):
        for model in (*IMAGE_MODELS, "imagen4-preview"):
            s.submit(12, "creator", model, prompt, seed=seed)
    s.submit(5, "creator", "pixverse-v4.5", prompt, seed=7)
    s.submit(5, "creator", "wan-pro", prompt, seed=7)
    s.work(30)
    return Scenario(
        "model_comparison",
        "normal",
        "normal",
        "one prompt on 6 image models x 3 seeds and 2 video models in 5 minutes (Pro)",
        (Actor("creator", plan="pro"),),
        s.done(),
        "clear",
    )


def batches_and_rerolls() -> Scenario:
    """A Starter creator sends batches of four-image requests in bursts (a
    script sending five at once), and re-rolls a prompt without a seed."""
    s = Script()
    rng = random.Random(3)
    for batch in range(10):
        prompt = PROMPTS[batch % len(PROMPTS)]
        for n in range(5):
            s.submit(
                0.4 if n else 120,
                "creator",
                "flux-schnell",
                prompt,
                seed=rng.randrange(2**32),
                outputs=4,
            )
        s.work(20)
    # Re-rolls without a seed: each gets a random seed from the provider;
    # 18 within ten minutes is below the 20 copies a request may have.
    for _ in range(18):
        s.submit(30, "creator", "flux-dev", PROMPTS[3])
        s.work()
    return Scenario(
        "batches_and_rerolls",
        "normal",
        "normal",
        "10 bursts of 5 four-image requests, then 18 seedless re-rolls in 9 minutes (Starter)",
        (Actor("creator", plan="starter"),),
        s.done(),
        "clear",
    )


def heavy_studio_day() -> Scenario:
    """Ten hours of a heavy Studio user: prompt iterations, sweeps of 16
    seeds, re-rolls, a few videos, a changed mind now and then (a quick
    cancel), typos (422s), a top-up pack when credits run low."""
    s = Script()
    rng = random.Random(11)
    base = "a weathered robot tending a rooftop garden"
    made: list[str] = []
    for hour in range(10):
        for task in range(6):  # a task every ten minutes or so
            prompt = f"{base}, variation {hour}-{task}, {rng.choice(PROMPTS)}"
            choice = rng.random()
            if choice < 0.35:  # a sweep of 16 seeds
                model = rng.choice(IMAGE_MODELS)
                for n in range(16):
                    made.append(s.submit(rng.uniform(2, 15), "creator", model, prompt, seed=n))
            elif choice < 0.7:  # edit-and-retry of a prompt, one model
                for n in range(rng.randint(4, 9)):
                    edited = f"{prompt}, take {n}"
                    made.append(s.submit(rng.uniform(20, 60), "creator", "flux-dev", edited))
            elif choice < 0.85:  # re-rolls without a seed
                for _ in range(rng.randint(3, 8)):
                    made.append(s.submit(rng.uniform(15, 40), "creator", "seedream-v3", prompt))
            else:  # a video
                model = rng.choice(("kling-video-v2.1", "hailuo-02-pro", "seedance-v1-pro"))
                made.append(s.submit(rng.uniform(30, 90), "creator", model, prompt, seed=task))
            if rng.random() < 0.2:  # a changed mind: cancel the last one at once
                s.add(rng.uniform(3, 20), "creator", "cancel", {"ref": made[-1]})
            if rng.random() < 0.15:  # a typo
                s.add(rng.uniform(5, 20), "creator", "invalid", {"model": "flux-dev", "prompt": ""})
            s.work(rng.uniform(30, 240))
        if hour == 5:
            s.add(10, "creator", "buy", {"pack": "pack-10000"})
    return Scenario(
        "heavy_studio_day",
        "normal",
        "normal",
        "10 hours: sweeps, prompt edits, re-rolls, videos, quick cancels, typos, a pack (Studio)",
        (Actor("creator", plan="studio"),),
        s.done(),
        "clear",
    )


def team_of_five() -> Scenario:
    """A Studio team of five working on one brief at once: each member sweeps
    seeds of the same prompts (the same request from two members is not a
    copy), with the team's credits."""
    s = Script()
    rng = random.Random(5)
    members = ("owner", "ana", "ben", "chloe", "dev")
    brief = (PROMPTS[4], PROMPTS[5])
    for round_ in range(8):
        for member in members:
            prompt = brief[round_ % 2]
            for n in range(5):
                s.submit(rng.uniform(1, 6), member, "flux-dev", prompt, seed=round_ * 5 + n)
        s.work(rng.uniform(20, 60))
    # Everyone re-renders the chosen frame with the same seed.
    for member in members:
        s.submit(3, member, "flux-pro-v1.1", brief[0], seed=42, outputs=4)
    s.work()
    members_ = tuple(Actor(name, team_of="owner") for name in members[1:])
    actors = (Actor("owner", plan="studio"), *members_)
    return Scenario(
        "team_of_five",
        "normal",
        "normal",
        "5 members of a Studio team, 205 submissions in 30 minutes, the same brief",
        actors,
        s.done(),
        "clear",
    )


def expired_card() -> Scenario:
    """A Starter creator's card declines twice; they fix it and buy a pack."""
    s = Script()
    s.add(0, "creator", "card", {"declines": True})
    s.add(10, "creator", "buy", {"pack": "pack-1000"})
    s.add(40, "creator", "buy", {"pack": "pack-1000"})
    s.add(300, "creator", "card", {"declines": False})
    s.add(20, "creator", "buy", {"pack": "pack-1000"})
    for n in range(10):
        s.submit(20, "creator", "flux-dev", PROMPTS[1], seed=n)
    s.work()
    return Scenario(
        "expired_card",
        "normal",
        "normal",
        "2 declined pack purchases, then a working card (Starter)",
        (Actor("creator", plan="starter"),),
        s.done(),
        "clear",
    )


def seasonal_upgrades() -> Scenario:
    """A creator on Starter upgrades for busy months and goes back after:
    twice in three months is not cycling."""
    s = Script()
    s.add(0, "creator", "period_end")
    s.add(0, "creator", "plan", {"plan": "pro"})  # early in the second month
    for n in range(10):
        s.submit(60, "creator", "kling-video-v2.1", PROMPTS[5], seed=n)
    s.work()
    s.add(3600, "creator", "plan", {"plan": "starter"})
    s.add(0, "creator", "period_end")
    s.add(0, "creator", "period_end")
    s.add(86_400, "creator", "plan", {"plan": "studio"})
    s.add(0, "creator", "late_in_period")
    s.add(0, "creator", "plan", {"plan": "starter"})
    s.add(0, "creator", "period_end")
    return Scenario(
        "seasonal_upgrades",
        "normal",
        "normal",
        "Starter, up to Pro for a month, back, up to Studio two months later, back",
        (Actor("creator", plan="starter"),),
        s.done(),
        "clear",
    )


def free_creator() -> Scenario:
    """A Free account with promotional credits tries the service at the Free
    plan's pace: a small seed sweep and a few re-rolls."""
    s = Script()
    for n in range(15):
        s.submit(9, "creator", "flux-schnell", PROMPTS[3], seed=n)
        if n % 3 == 2:
            s.work()
    for _ in range(6):
        s.submit(20, "creator", "flux-schnell", PROMPTS[0])
        s.work()
    return Scenario(
        "free_creator",
        "normal",
        "normal",
        "a Free account with promo credits: 15-seed sweep and 6 re-rolls",
        (Actor("creator", credits=200),),
        s.done(),
        "clear",
    )


# -- abuse ----------------------------------------------------------------------------

FLOOD = {"model": "flux-schnell", "prompt": "buy cheap followers now", "num_outputs": 1}


def identical_flood(paid: bool) -> Scenario:
    """A script sends one request again and again, one a second, ignoring
    every refusal, for five minutes."""
    s = Script()
    for n in range(300):
        s.add(1, "bot", "submit", FLOOD)
        if n % 30 == 29:
            s.work()
    who = "a Studio account" if paid else "a Free account on promo credits"
    return Scenario(
        f"identical_flood_{'paid' if paid else 'free'}",
        "abuse",
        "volume, paying" if paid else "volume, never paid",
        f"the same request once a second for 5 minutes, ignoring refusals ({who})",
        (Actor("bot", plan="studio") if paid else Actor("bot", credits=1000),),
        s.done(),
        "flagged" if paid else "suspended",
        subject="bot",
    )


def submit_cancel_churn(paid: bool) -> Scenario:
    """A script submits and cancels two seconds later, over and over."""
    s = Script()
    rng = random.Random(17)
    for _ in range(120):
        ref = s.submit(4, "bot", "flux-schnell", "probe", seed=rng.randrange(2**32))
        s.add(2, "bot", "cancel", {"ref": ref})
    who = "a Studio account" if paid else "a Free account on promo credits"
    return Scenario(
        f"submit_cancel_churn_{'paid' if paid else 'free'}",
        "abuse",
        "volume, paying" if paid else "volume, never paid",
        f"120 submissions each canceled 2 s later, in 12 minutes ({who})",
        (Actor("bot", plan="studio") if paid else Actor("bot", credits=1000),),
        s.done(),
        "flagged" if paid else "suspended",
        subject="bot",
    )


def invalid_input_storm() -> Scenario:
    """A fuzzer sends malformed requests, 400 in ten minutes."""
    s = Script()
    bodies = (
        {"model": "flux-schnell", "prompt": ""},
        {"model": "flux-schnell", "prompt": "x", "num_outputs": 99},
        {"model": "no-such-model", "prompt": "x"},
        {"model": "flux-schnell", "prompt": "x", "params": {"seed": -1}},
    )
    for n in range(400):
        s.add(1.5, "bot", "invalid", bodies[n % len(bodies)])
    return Scenario(
        "invalid_input_storm_free",
        "abuse",
        "volume, never paid",
        "400 malformed requests in 10 minutes, ignoring 429 (a Free account)",
        (Actor("bot", credits=100),),
        s.done(),
        "suspended",
        subject="bot",
    )


def quote_hammer() -> Scenario:
    """A script polls quotes as fast as it can for twenty minutes, ignoring 429."""
    s = Script()
    body = {"model": "flux-schnell", "prompt": "x"}
    for _ in range(2400):
        s.add(0.5, "bot", "quote", body)
    return Scenario(
        "rate_limit_hammer_free",
        "abuse",
        "volume, never paid",
        "2 quotes a second for 20 minutes, ignoring Retry-After (a Free account)",
        (Actor("bot", credits=100),),
        s.done(),
        "suspended",
        subject="bot",
    )


def card_testing(paid: bool) -> Scenario:
    """Stolen cards tried on the cheapest pack: most decline, one goes
    through now and then, 15 attempts in four minutes."""
    s = Script()
    for n in range(15):
        s.add(1, "bot", "card", {"declines": n % 6 != 5})
        s.add(15, "bot", "buy", {"pack": "pack-1000"})
    who = "a Starter account" if paid else "a Free account"
    return Scenario(
        f"card_testing_{'paid' if paid else 'free'}",
        "abuse",
        "exploitation",
        f"15 pack purchases in 4 minutes, 13 declined ({who})",
        (Actor("bot", plan="starter") if paid else Actor("bot"),),
        s.done(),
        "suspended",
        subject="bot",
    )


def chargebacks() -> Scenario:
    """Three packs bought (with stolen cards), spent at the Free plan's pace,
    then all three disputed with the bank."""
    s = Script()
    bought = [s.add(30, "bot", "buy", {"pack": "pack-1000"}) for _ in range(3)]
    for n in range(80):  # 32 credits each: 2,560 of the 3,000
        s.submit(7, "bot", "flux-pro-v1.1", f"product shot {n}", seed=n, outputs=4)
        if n % 5 == 4:
            s.work()
    for ref in bought:
        s.add(86_400, "bot", "dispute", {"ref": ref})
    return Scenario(
        "chargebacks_after_spending",
        "abuse",
        "exploitation",
        "3 packs bought and mostly spent, then all 3 disputed (a Free account)",
        (Actor("bot"),),
        s.done(),
        "suspended",
        subject="bot",
    )


def plan_cycling() -> Scenario:
    """Up to Studio two days before each period ends, straight back down to
    Starter, four periods running (buying credits at a cut rate)."""
    s = Script()
    for period in range(4):
        s.add(0, "bot", "late_in_period")
        s.add(5, "bot", "plan", {"plan": "studio"})
        for n in range(20):
            s.submit(3, "bot", "flux-pro-v1.1", f"bulk render {period}-{n}", seed=n)
        s.work()
        s.add(5, "bot", "plan", {"plan": "starter"})
        s.add(0, "bot", "period_end")
    return Scenario(
        "plan_cycling",
        "abuse",
        "exploitation",
        "upgrade Starter to Studio late in 4 periods running, downgrade at once each time",
        (Actor("bot", plan="starter"),),
        s.done(),
        "suspended",
        subject="bot",
    )


def normal_corpus() -> list[Scenario]:
    return [
        seed_sweep(),
        model_comparison(),
        batches_and_rerolls(),
        heavy_studio_day(),
        team_of_five(),
        expired_card(),
        seasonal_upgrades(),
        free_creator(),
    ]


def abuse_corpus() -> list[Scenario]:
    return [
        identical_flood(paid=False),
        identical_flood(paid=True),
        submit_cancel_churn(paid=False),
        submit_cancel_churn(paid=True),
        invalid_input_storm(),
        quote_hammer(),
        card_testing(paid=False),
        card_testing(paid=True),
        chargebacks(),
        plan_cycling(),
    ]


def corpus() -> Iterator[Scenario]:
    yield from normal_corpus()
    yield from abuse_corpus()

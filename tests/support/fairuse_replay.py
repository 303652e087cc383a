"""Replay the fair-use corpora (``tests.support.fairuse_corpus``) through the
HTTP API of a real platform, with a manual clock, and tell what became of
each account.

Time: every step first moves the manual clock by its ``wait_s``; the
rate-limit counters (``limits``' memory storage) read the same clock, so a
ten-hour day replays in seconds with the limits it would meet for real.
Jobs run in the real worker, on a provider that delivers at once (a tiny
picture or clip), so the queue moves as it would.

Run as a script, it replays both corpora on SQLite and prints the confusion
table of docs/fair-use.md:

    PYTHONPATH=src python -m tests.support.fairuse_replay
"""

from __future__ import annotations

import tempfile
import types
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import limits.storage.memory
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from plasmaart.billing.tasks import run_billing_clock
from plasmaart.bootstrap import bootstrap
from plasmaart.catalog import ModelSpec
from plasmaart.clock import ManualClock
from plasmaart.config import Settings
from plasmaart.db.tables import abuse_flags, abuse_signals
from plasmaart.generation.providers.base import ProviderOutput, ProviderRequest, ProviderStatus
from plasmaart.ledger.invariants import check_ledger
from plasmaart.ledger.tasks import expire_due_lots
from plasmaart.media import sandbox_render as render
from plasmaart.platform import Platform
from plasmaart.web.app import create_app
from plasmaart.worker import Worker
from tests.support.accounts import TestUser, make_user
from tests.support.fairuse_corpus import Actor, Outcome, Scenario, Step, corpus

ORDER: tuple[Outcome, ...] = ("clear", "flagged", "suspended")


@cache
def _tiny(kind: str) -> bytes:
    if kind == "text-to-image":
        return render.render_image("corpus", 1, 16, 16)
    return render.render_video("corpus", 1, 64, 36, 1.0)


class InstantProvider:
    """Delivers every request at once: a 16 px picture or a one-second clip."""

    name = "instant"

    def __init__(self) -> None:
        self._requests: dict[str, ProviderRequest] = {}

    def submit(self, request: ProviderRequest) -> str:
        self._requests[request.generation_id] = request
        return request.generation_id

    def status(self, model: ModelSpec, request_id: str) -> ProviderStatus:
        request = self._requests[request_id]
        image = model.kind == "text-to-image"
        output = ProviderOutput(
            "image/png" if image else "video/mp4",
            data=_tiny("text-to-image" if image else "video"),
            width=16 if image else 64,
            height=16 if image else 36,
            duration_s=None if image else 1.0,
        )
        return ProviderStatus("succeeded", outputs=(output,) * request.num_outputs)

    def cancel(self, model: ModelSpec, request_id: str) -> bool:  # noqa: ARG002
        return False

    def download(self, output: ProviderOutput) -> bytes:
        assert output.data is not None
        return output.data


@contextmanager
def limits_on(clock: ManualClock) -> Iterator[None]:
    """The rate-limit counters of ``limits``' memory storage read ``clock``."""
    import time

    shim = types.SimpleNamespace(time=lambda: clock.now().timestamp(), sleep=time.sleep)
    with mock.patch.object(limits.storage.memory, "time", shim):
        yield


@dataclass(frozen=True)
class ActorResult:
    outcome: Outcome
    signals: dict[str, int]
    # How many answers of each HTTP status the actor got.
    answers: dict[int, int]


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    actors: dict[str, ActorResult]

    @property
    def outcome(self) -> Outcome:
        """The subject's outcome; without a subject, the worst of all actors'."""
        if self.scenario.subject is not None:
            return self.actors[self.scenario.subject].outcome
        return max((a.outcome for a in self.actors.values()), key=ORDER.index)

    @property
    def signals(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for actor in self.actors.values():
            total.update(actor.signals)
        return dict(sorted(total.items()))


class Replay:
    def __init__(self, platform: Platform, client: TestClient, clock: ManualClock) -> None:
        self.platform = platform
        self.client = client
        self.clock = clock
        self.admin = make_user(platform, "replay-admin@example.com", admin=True)
        self.worker = Worker(platform, concurrency=1)
        self.worker.runner.provider = InstantProvider()
        self.worker.runner.sleep = lambda _seconds: None
        self.users: dict[str, TestUser] = {}
        self.teams: dict[str, str] = {}
        self.refs: dict[str, str] = {}
        self.answers: dict[str, Counter[int]] = {}

    def run(self, scenario: Scenario) -> Result:
        owners = [a for a in scenario.actors if a.team_of is None]
        for actor in owners + [a for a in scenario.actors if a.team_of is not None]:
            self._create(actor)
        with limits_on(self.clock):
            for step in scenario.steps:
                if step.wait_s:
                    self.clock.advance(timedelta(seconds=step.wait_s))
                self._step(scenario, step)
                # The signals of the step, written now rather than within the
                # second (fairuse/tasks.py), so the next step meets them.
                self.platform.fairuse.flush()
        return Result(scenario, {name: self._result(name) for name in self.users})

    # -- actors ------------------------------------------------------------

    def _create(self, actor: Actor) -> None:
        user = make_user(
            self.platform, f"{actor.name}@example.com", plan=actor.plan, credits=actor.credits
        )
        self.users[actor.name] = user
        self.answers[actor.name] = Counter()
        if actor.team_of is None:
            return
        owner = self.users[actor.team_of]
        with self.platform.db.write() as conn:
            accounts = self.platform.accounts
            if actor.team_of not in self.teams:
                team = self.platform.teams.create_team(conn, accounts.get(conn, owner.id), "Team")
                self.teams[actor.team_of] = team.id
            team_id = self.teams[actor.team_of]
            invitation = self.platform.teams.invite(conn, team_id, owner.id, user.email)
            self.platform.teams.accept_invitation(
                conn, invitation.token, accounts.get(conn, user.id)
            )

    def _result(self, name: str) -> ActorResult:
        user = self.users[name]
        with self.platform.db.read() as conn:
            status = self.platform.accounts.get(conn, user.id).status
            open_flags = conn.execute(
                select(func.count())
                .select_from(abuse_flags)
                .where(abuse_flags.c.user_id == user.id, abuse_flags.c.status != "resolved")
            ).scalar_one()
            kinds = conn.execute(
                select(abuse_signals.c.kind, func.count())
                .where(abuse_signals.c.user_id == user.id)
                .group_by(abuse_signals.c.kind)
            ).all()
        outcome: Outcome = (
            "suspended" if status == "suspended" else "flagged" if open_flags else "clear"
        )
        return ActorResult(
            outcome,
            {kind: int(count) for kind, count in kinds},
            dict(sorted(self.answers[name].items())),
        )

    # -- steps -------------------------------------------------------------

    def _step(self, scenario: Scenario, step: Step) -> None:
        if step.action == "work":
            self.worker.drain()
            return
        user = self.users[step.actor]
        actor = next(a for a in scenario.actors if a.name == step.actor)
        body: dict[str, Any] = dict(step.body)
        answer = None
        if step.action == "submit":
            if actor.team_of is not None:
                body["team_id"] = self.teams[actor.team_of]
            answer = self.client.post("/v1/generations", json=body, headers=user.auth)
            if answer.status_code == 201 and step.ref:
                self.refs[step.ref] = answer.json()["id"]
        elif step.action == "cancel":
            made = self.refs.get(body["ref"])
            if made is None:  # the submission was refused
                return
            answer = self.client.post(f"/v1/generations/{made}/cancel", headers=user.auth)
        elif step.action == "invalid":
            answer = self.client.post("/v1/generations", json=body, headers=user.auth)
        elif step.action == "quote":
            answer = self.client.post("/v1/quotes", json=body, headers=user.auth)
        elif step.action == "card":
            path = f"/v1/admin/users/{user.id}/billing/sandbox-card"
            done = self.client.post(path, json=body, headers=self.admin.auth)
            assert done.status_code == 200, done.text
        elif step.action == "buy":
            answer = self.client.post("/v1/credit-purchases", json=body, headers=user.auth)
            if answer.status_code == 201 and step.ref:
                self.refs[step.ref] = answer.json()["payment_id"]
        elif step.action == "plan":
            answer = self.client.patch("/v1/subscription", json=body, headers=user.auth)
        elif step.action in ("late_in_period", "period_end"):
            self._move_to_period(user, step.action == "period_end")
        elif step.action == "dispute":
            self._dispute(user, body["ref"])
        if answer is not None:
            self.answers[step.actor][answer.status_code] += 1

    def _move_to_period(self, user: TestUser, end: bool) -> None:
        with self.platform.db.read() as conn:
            subscription = self.platform.billing.plans.subscription(conn, user.wallet_id)
        assert subscription is not None
        end_at = subscription.current_period_end
        target = end_at + timedelta(minutes=1) if end else end_at - timedelta(days=2)
        if target > self.clock.now():
            self.clock.set(target)
        if end:
            run_billing_clock(self.platform.db, self.platform.billing)
            expire_due_lots(self.platform.db, self.platform.ledger)

    def _dispute(self, user: TestUser, ref: str) -> None:
        payment_id = self.refs.get(ref)
        if payment_id is None:
            return
        with self.platform.db.write() as conn:
            payments = self.platform.billing.payments.history(conn, user.id, limit=100)
            payment = next(p for p in payments if p.id == payment_id)
            self.platform.billing.clawbacks.claw_back(conn, payment, reason="dispute", actor="bank")


def replay(platform: Platform, clock: ManualClock, scenario: Scenario) -> Result:
    """Replay ``scenario`` against ``platform`` (a fresh database) over HTTP."""
    with TestClient(create_app(platform, embedded_worker=False)) as client:
        result = Replay(platform, client, clock).run(scenario)
    with platform.db.read() as conn:
        assert check_ledger(conn) == []
    return result


# -- the confusion table ------------------------------------------------------------


def confusion_table(results: Iterable[Result]) -> str:
    """Markdown: scenarios of each family by outcome, then one row each."""
    results = list(results)
    families: dict[str, Counter[Outcome]] = {}
    for result in results:
        families.setdefault(result.scenario.family, Counter())[result.outcome] += 1
    lines = [
        "| corpus | scenarios | clear | flagged | suspended |",
        "|---|---|---|---|---|",
    ]
    for family, counts in families.items():
        label = "normal work" if family == "normal" else f"abuse: {family}"
        lines.append(
            f"| {label} | {sum(counts.values())} | "
            + " | ".join(str(counts[outcome]) for outcome in ORDER)
            + " |"
        )
    lines += [
        "",
        "| scenario | what | expected | outcome | signals |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        scenario = result.scenario
        signals = ", ".join(f"{kind} {count}" for kind, count in result.signals.items()) or "-"
        lines.append(
            f"| `{scenario.name}` | {scenario.description} | {scenario.expect} | "
            f"{result.outcome} | {signals} |"
        )
    return "\n".join(lines)


def main() -> None:
    results = []
    for scenario in corpus():
        with tempfile.TemporaryDirectory() as folder:
            clock = ManualClock()
            settings = Settings(
                database_url=f"sqlite:///{Path(folder) / 'corpus.db'}", var_dir=Path(folder)
            )
            platform = bootstrap(settings, clock=clock, migrate=True)
            try:
                results.append(replay(platform, clock, scenario))
            finally:
                platform.close()
    print(confusion_table(results))  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()

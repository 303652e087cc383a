"""The authorization matrix's machinery: the callers, what each of them should
get from a route, the app's routes (to prove every one has a row), and a
snapshot of the whole database (to prove a refused request wrote nothing).

The table itself lives in ``tests/integration/test_authorization.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import select

from plasmaart.db.tables import metadata
from plasmaart.platform import Platform

Caller = Literal["anonymous", "owner", "other", "member", "admin"]
# The columns of the matrix, in the order a row lists its expectations.
CALLERS: tuple[Caller, ...] = ("anonymous", "owner", "other", "member", "admin")

# FastAPI's own pages: not APIRoutes, so not required, but public and listed.
DOCS_ROUTES = frozenset(
    {"GET /openapi.json", "GET /docs", "GET /docs/oauth2-redirect", "GET /redoc"}
)

# Authentication itself refreshes an API key's ``last_used_at`` (at most once
# an hour), refused request or not; every other column must stay as it was.
VOLATILE_COLUMNS = frozenset({("api_keys", "last_used_at")})


@dataclass(frozen=True)
class Refusal:
    """A problem+json answer: its status and its ``code``."""

    status: int
    code: str

    def __str__(self) -> str:
        return f"{self.status} {self.code}"


# What a caller should get: a success status, or a refusal.
Expect = int | Refusal

UNAUTHENTICATED = Refusal(401, "unauthenticated")
FORBIDDEN = Refusal(403, "forbidden")
NOT_FOUND = Refusal(404, "not_found")


@dataclass(frozen=True)
class Row:
    """One request and what each of the five callers should get from it.

    ``url`` is a ``str.format`` template over the world (``{w.team_id}``);
    without it the request goes to the route's own path. ``owner_as`` names
    the world's user who plays the owner column (the one whose resource it
    is: the invitee for an invitation's token). ``about_caller`` marks
    user-scoped answers, which must never carry the owner's identifiers to
    anyone else. ``check`` looks at a successful answer more closely.
    """

    route: str  # "METHOD /path/{param}", exactly as the app declares it
    expect: tuple[Expect, Expect, Expect, Expect, Expect]  # in CALLERS order
    url: str | None = None
    body: dict[str, Any] | None = None
    owner_as: str = "owner"
    about_caller: bool = False
    stream: bool = False
    check: Callable[[Any], None] | None = None
    # The one table a successful read may write: the request counted by a
    # rate limit kept in the database (``auth_throttle`` for an export).
    counted_in: str | None = None

    @property
    def method(self) -> str:
        return self.route.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.route.split(" ", 1)[1]

    def expected(self, caller: Caller) -> Expect:
        return self.expect[CALLERS.index(caller)]

    def target(self, world: object) -> str:
        return self.path if self.url is None else self.url.format(w=world)


@dataclass(frozen=True)
class AppRoute:
    key: str  # "METHOD /path/{param}"
    regex: re.Pattern[str]
    is_api: bool


def app_routes(app: FastAPI) -> Iterator[AppRoute]:
    """Every (method, path) the app routes, in the order it tries them. HEAD
    is left out where the route answers GET too (Starlette adds it)."""
    for context in iter_route_contexts(app.routes):
        methods = context.methods
        path = context.path_format
        if not methods or path is None:
            continue  # mounts and the like: no method of their own
        regex: re.Pattern[str] = context.path_regex
        is_api = isinstance(context.original_route, APIRoute)
        for method in sorted(methods):
            if method == "HEAD" and "GET" in methods:
                continue
            yield AppRoute(f"{method} {path}", regex, is_api)


def route_of(routes: list[AppRoute], method: str, url: str) -> str | None:
    """The route that answers ``method url``: the first whose path and method match."""
    path = url.split("?", 1)[0]
    for route in routes:
        route_method, _ = route.key.split(" ", 1)
        if route_method == method and route.regex.match(path):
            return route.key
    return None


def coverage_problems(app: FastAPI, rows: Iterable[Row], world: object) -> list[str]:
    """What keeps the matrix from being complete and honest: routes without a
    row, rows naming a route the app does not have, rows whose request lands
    on another route than the one they name."""
    routes = list(app_routes(app))
    declared = {route.key for route in routes}
    required = {route.key for route in routes if route.is_api or route.key in DOCS_ROUTES}
    rows = list(rows)
    covered = {row.route for row in rows}
    problems = [
        f"no authorization row for {key}: add one to tests/integration/test_authorization.py"
        for key in sorted(required - covered)
    ]
    problems += [
        f"row for {key}, which the app does not route (renamed or removed?)"
        for key in sorted(covered - declared)
    ]
    for row in rows:
        if row.route not in declared:
            continue
        url = row.target(world)
        landed = route_of(routes, row.method, url)
        if landed != row.route:
            problems.append(f"row {row.route}: {row.method} {url} is routed to {landed}")
    return problems


Snapshot = dict[str, list[tuple[Any, ...]]]


def snapshot(platform: Platform, *, settle: bool = True) -> Snapshot:
    """Every row of every table, in a stable order (volatile columns left out),
    once the abuse signals queued so far are written (fair use writes them
    off the request path; a request's signals count as its writes).
    ``settle=False`` reads the rows as they are, queued signals unwritten."""
    if settle:
        platform.fairuse.flush()
    state: Snapshot = {}
    with platform.db.read() as conn:
        for table in metadata.sorted_tables:
            columns = [
                column
                for column in table.columns
                if (table.name, column.name) not in VOLATILE_COLUMNS
            ]
            rows = conn.execute(select(*columns)).all()
            state[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return state


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """The tables whose rows differ, with the rows that appeared and went."""
    found = []
    for table, rows in before.items():
        now = after[table]
        if rows != now:
            added = [row for row in now if row not in rows]
            removed = [row for row in rows if row not in now]
            found.append(f"{table}: +{added} -{removed}")
    return found

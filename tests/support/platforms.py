"""A platform for a test, as ``tests/conftest.py``'s ``platform`` fixture builds
it, for tests that need it with other settings (Stripe billing, the fal
provider) or a second one on the same database (another process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from plasmaart.bootstrap import bootstrap
from plasmaart.clock import Clock
from plasmaart.config import Settings
from plasmaart.platform import Platform
from plasmaart.web.app import create_app


def settings_for(database_url: str, var_dir: Path, **overrides: Any) -> Settings:
    """The settings of a test platform: its database, its own ``var_dir``, and
    ``overrides`` (field names of ``Settings``) over the defaults."""
    return Settings(database_url=database_url, var_dir=var_dir, **overrides)


@contextmanager
def running_platform(settings: Settings, clock: Clock) -> Iterator[Platform]:
    """A platform on an already migrated database, closed at the end."""
    built = bootstrap(settings, clock=clock, migrate=False)
    try:
        yield built
    finally:
        built.close()


@contextmanager
def api_client(platform: Platform) -> Iterator[TestClient]:
    """The HTTP API of ``platform``, without the embedded worker."""
    with TestClient(create_app(platform, embedded_worker=False)) as test_client:
        yield test_client

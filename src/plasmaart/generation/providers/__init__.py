"""Where media is made: one ``Provider`` interface, a sandbox and fal.ai."""

from __future__ import annotations

from plasmaart.clock import Clock
from plasmaart.config import ConfigError, Settings
from plasmaart.generation.providers.base import Provider


def create_provider(settings: Settings, clock: Clock) -> Provider:
    """The provider the settings choose (the sandbox by default)."""
    if settings.provider == "fal":
        from plasmaart.generation.providers.fal.client import FalProvider

        if not settings.fal_key:
            raise ConfigError("FAL_KEY: required when PLASMAART_PROVIDER=fal")
        return FalProvider(
            settings.fal_key,
            base_url=settings.fal_base_url,
            jwks_url=settings.fal_jwks_url,
            timeout=settings.fal_timeout_s,
        )
    from plasmaart.generation.providers.sandbox import SandboxProvider

    return SandboxProvider(settings.var_dir / "sandbox", clock)

"""The one Settings class. Nothing else in the package reads ``os.environ``.

Values come, highest priority first, from the constructor, the environment
(``PLASMAART_*`` plus the conventional ``DATABASE_URL``, ``REDIS_URL``,
``FAL_KEY``, ``STRIPE_SECRET_KEY``, ``STRIPE_WEBHOOK_SECRET``), an optional TOML
file named by ``PLASMAART_CONFIG_FILE``, and the defaults, which give the
embedded one-machine setup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "PLASMAART_"
# Fields read from a conventional variable rather than PLASMAART_<NAME>.
_PLAIN_ENV = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "fal_key": "FAL_KEY",
    "stripe_secret_key": "STRIPE_SECRET_KEY",
    "stripe_webhook_secret": "STRIPE_WEBHOOK_SECRET",
}


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    database_url: str = Field(
        default="sqlite:///var/plasmaart.db",
        validation_alias=AliasChoices("DATABASE_URL", "PLASMAART_DATABASE_URL", "database_url"),
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "PLASMAART_REDIS_URL", "redis_url")
    )
    fal_key: str | None = Field(
        default=None, validation_alias=AliasChoices("FAL_KEY", "PLASMAART_FAL_KEY", "fal_key")
    )
    stripe_secret_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "STRIPE_SECRET_KEY", "PLASMAART_STRIPE_SECRET_KEY", "stripe_secret_key"
        ),
    )
    stripe_webhook_secret: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "STRIPE_WEBHOOK_SECRET", "PLASMAART_STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret"
        ),
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    var_dir: Path = Path("var")
    catalog_file: Path | None = None
    provider: Literal["sandbox", "fal"] = "sandbox"
    billing: Literal["sandbox", "stripe"] = "sandbox"
    storage_dir: Path | None = None
    # Where media lives: the local folder (media_dir) or an S3-compatible bucket.
    storage: Literal["local", "s3"] = "local"
    # validate_default: the bucket check must run when the variable is unset.
    s3_bucket: str | None = Field(default=None, validate_default=True)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    # Signs expiring download URLs. None: generated once and kept in
    # <var_dir>/secret_key. plasmaart.media.signing.signing_secret checks the
    # length, so that a refusal never echoes the secret as validation errors do.
    secret_key: SecretStr | None = None
    embedded_worker: bool = True
    # Generation jobs one worker process runs at once.
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    # None: migrate at start-up on SQLite (the embedded setup), not on PostgreSQL,
    # where operators run ``plasmaart migrate`` once per deploy.
    auto_migrate: bool | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one JSON object per line (for log collectors); text: for a terminal.
    log_format: Literal["json", "text"] = "json"
    support_email: str = "neonstudioscontact@gmail.com"
    # Purchased credits never expire unless the operator sets a lifetime.
    purchased_credits_expire_days: int | None = Field(default=None, ge=1)
    payment_grace_days: int = Field(default=7, ge=0)
    notice_days: int = Field(default=14, ge=0)
    # How often the worker's clock looks for lots past their expiry.
    clock_interval_s: float = Field(default=30.0, gt=0)
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    db_pool_size: int = Field(default=10, ge=1)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _s3_needs_a_bucket(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("storage") == "s3" and not value:
            raise ValueError(f"required when {ENV_PREFIX}STORAGE=s3")
        return value

    @property
    def media_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.var_dir / "media"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(ENV_PREFIX + "CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def env_name(field: str) -> str:
    """The environment variable an operator sets for ``field``."""
    if field.upper() in _PLAIN_ENV.values() or field.startswith(ENV_PREFIX):
        return field
    return _PLAIN_ENV.get(field, ENV_PREFIX + field.upper())


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning a validation error into one naming each variable."""
    config_file = os.environ.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{ENV_PREFIX}CONFIG_FILE: no such file: {config_file}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            lines.append(f"{env_name(field)}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None

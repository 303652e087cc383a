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
    # fal's queue API and the keys its webhooks are signed with (tests point
    # both at a local fake).
    fal_base_url: str = "https://queue.fal.run"
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # This server's public address of POST /v1/webhooks/fal. Set, fal calls it
    # when a request finishes and the worker polls at once; between webhooks it
    # polls every fal_poll_interval_s instead of every 0.25 s.
    fal_webhook_url: str | None = None
    fal_poll_interval_s: float = Field(default=5.0, gt=0, le=300)
    # How long one call to fal (submit, status, result, cancel, a file's download)
    # may wait for its answer; past it the call is retried like a 5xx.
    fal_timeout_s: float = Field(default=30.0, gt=0, le=600)
    billing: Literal["sandbox", "stripe"] = "sandbox"
    # Where the Stripe client sends its API calls (tests point it at a local fake).
    stripe_api_base: str = "https://api.stripe.com"
    # Where Stripe sends the customer back after Checkout or the customer
    # portal. None: the public address (public_url, else host and port).
    stripe_return_url: str | None = None
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
    # json: one JSON object per line (for log collectors); text: lines for a
    # person; auto: text when standard error is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"
    support_email: str = "neonstudioscontact@gmail.com"
    # The seller named on receipts (docs/billing.md#receipts): the operator's
    # company and its postal address; None: "PlasmaArt", and no address.
    company_name: str | None = Field(default=None, max_length=200)
    company_address: str | None = Field(default=None, max_length=500)
    # Purchased credits never expire unless the operator sets a lifetime.
    purchased_credits_expire_days: int | None = Field(default=None, ge=1)
    payment_grace_days: int = Field(default=7, ge=0)
    notice_days: int = Field(default=14, ge=0)
    # Notifications (docs/notifications.md): e-mail goes out over SMTP when
    # smtp_host is set; otherwise notifications are in-app only.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    # None: the support address.
    smtp_from: str | None = None
    smtp_starttls: bool = True
    # The address people reach this server at, used in every link that
    # leaves it (mail, webhooks, signed links). None: http://<host>:<port>.
    public_url: str | None = None
    # Whether a new account must prove its address before it may pay, join a
    # team or create API keys (docs/accounts.md). None: when mail can be
    # delivered (smtp_host set); without SMTP mail is only written to
    # <var_dir>/mail, so verification is off unless this turns it on.
    require_email_verification: bool | None = None
    # Outbound webhooks (docs/webhooks.md) may be delivered to private,
    # loopback and link-local addresses: off in production (SSRF), on in tests.
    webhooks_allow_private: bool = False
    # A balance falling below this many credits is notified (once per crossing); 0: never.
    low_balance_credits: int = Field(default=50, ge=0)
    # Lots expiring within this many days are notified (once per lot).
    expiry_notice_days: int = Field(default=3, ge=1)
    # How often the worker's clock looks for lots past their expiry.
    clock_interval_s: float = Field(default=30.0, gt=0)
    # An Idempotency-Key whose first request is still "running" after this long
    # was left by a process that died; a retry then runs again (handlers that
    # write key their rows by it too, so the re-run cannot do the work twice).
    idempotency_takeover_s: float = Field(default=30.0, gt=0)
    # A worker renews the lease of each running job while it polls the
    # provider; a job whose lease ran out (its worker died) is taken over.
    job_lease_s: float = Field(default=60.0, ge=2)
    # A job claimed more often than this (its workers kept dying or failing
    # on it) is ended, charged only for the outputs already stored.
    max_job_attempts: int = Field(default=5, ge=1, le=100)
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    # Fair use (docs/fair-use.md): an abuse score at or over the first flags
    # the account for review, at or over the second suspends it (an account
    # that paid: only its exploitation score suspends it).
    fairuse_flag_score: int = Field(default=30, ge=1)
    fairuse_suspend_score: int = Field(default=100, ge=1)
    # A rate-limit refusal becomes an abuse signal at most this often per
    # account, so that a flood of refused requests is not a flood of writes.
    fairuse_rate_limit_signal_interval_s: int = Field(default=10, ge=0)
    # A generation canceled this soon after its submission counts as churn.
    fairuse_churn_cancel_within_s: int = Field(default=60, ge=0)
    # Copies of one request (model, prompt, params with the seed, outputs,
    # input image) an account may submit within 10 minutes before each
    # further copy counts as a flood; a seed sweep is not copies.
    fairuse_identical_prompts_allowed: int = Field(default=20, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    # PostgreSQL: the longest a connection attempt, a statement or a commit
    # waits for the server, and a request for a free pooled connection; past
    # it the request answers 503 `unavailable` (docs/reliability.md).
    db_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # SQLite: concurrent writes (Database.run_write) go through one writer
    # thread that commits them together, each in its own savepoint
    # (docs/configuration.md#group-commit). No effect on PostgreSQL.
    group_commit: bool = True
    # Production (docs/deployment.md). API processes `serve` starts on one
    # port (`serve --workers N`); each has its own connections and caches.
    web_workers: int = Field(default=1, ge=1, le=64)
    # On SIGTERM an API process stops accepting, lets requests in flight
    # finish for this long, and ends open event streams with a retry hint.
    shutdown_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # On SIGTERM a worker takes no new job and lets its running jobs finish
    # for this long; what is still running then is handed back to the queue.
    worker_drain_s: float = Field(default=60.0, ge=0, le=3600)
    # Addresses (IPs or CIDR networks, comma-separated; "*" for any) whose
    # X-Forwarded-For / X-Forwarded-Proto are believed: the reverse proxy.
    # Empty: only 127.0.0.1, as uvicorn does by default.
    trusted_proxies: str = "127.0.0.1"
    # How often a worker runs `ledger verify` and records the result for
    # /metrics (docs/deployment.md#monitoring); 0: never.
    ledger_verify_interval_s: float = Field(default=3600.0, ge=0)
    # Where `backup` and `restore` find pg_dump / pg_restore / psql (None:
    # PATH, then Debian's /usr/lib/postgresql/<version>/bin, newest first).
    pg_bin_dir: Path | None = None

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("public_url")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        # uvicorn would take a mistyped address as a name no peer ever has,
        # and a network with host bits set matches nothing.
        import ipaddress

        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if entries == ["*"]:
            return "*"
        if "*" in entries:
            raise ValueError("mixes * with addresses: set either * or a list of addresses")
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=True)
            except ValueError:
                try:
                    network = ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP address or network (a comma-separated list, or *)"
                    ) from None
                raise ValueError(f"{entry!r} has host bits set (did you mean {network}?)") from None
        return ",".join(entries) or "127.0.0.1"

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str | None) -> str | None:
        # The rate-limit store (limits' storage_from_string) speaks these.
        if value is not None and not value.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError("must start with redis://, rediss:// or redis+unix://")
        return value

    @field_validator("fairuse_suspend_score")
    @classmethod
    def _suspend_over_flag(cls, value: int, info: ValidationInfo) -> int:
        flag = info.data.get("fairuse_flag_score")
        if flag is not None and value < flag:
            raise ValueError(f"must be at least {ENV_PREFIX}FAIRUSE_FLAG_SCORE ({flag})")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _s3_needs_a_bucket(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("storage") == "s3" and not value:
            raise ValueError(f"required when {ENV_PREFIX}STORAGE=s3")
        return value

    @property
    def public_base_url(self) -> str:
        """This server's public address, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def email_verification_required(self) -> bool:
        if self.require_email_verification is not None:
            return self.require_email_verification
        return bool(self.smtp_host)

    @property
    def mail_dir(self) -> Path:
        """Where mail is written as ``.eml`` files when no SMTP server is set."""
        return self.var_dir / "mail"

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
    if field in _PLAIN_ENV.values() or field.startswith(ENV_PREFIX):
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

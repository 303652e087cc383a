"""The ``plasmaart`` command: a thin entry point over the same services as the API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import typer

from plasmaart import logs
from plasmaart.accounts import audit
from plasmaart.accounts.service import Status
from plasmaart.bootstrap import Platform, bootstrap
from plasmaart.catalog import CatalogError, load_catalog, render_catalog
from plasmaart.config import ConfigError, load_settings
from plasmaart.errors import DomainError

app = typer.Typer(
    help="PlasmaArt: generative AI for credits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
credits_app = typer.Typer(help="Move credits.", no_args_is_help=True)
catalog_app = typer.Typer(help="The catalog of models, plans and packs.", no_args_is_help=True)
ledger_app = typer.Typer(help="The credit ledger.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(credits_app, name="credits")
app.add_typer(catalog_app, name="catalog")
app.add_typer(ledger_app, name="ledger")

CLI_ACTOR = "cli"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _platform(*, migrate: bool | None = None) -> Iterator[Platform]:
    """The platform for one command; a bad setting or catalog ends it with exit
    code 2 and the message, a refused operation with exit code 1."""
    try:
        settings = load_settings()
        logs.configure(settings.log_level, json_lines=settings.log_format == "json")
        platform = bootstrap(settings, migrate=migrate)
    except (ConfigError, CatalogError) as exc:
        _fail(str(exc), code=2)
    try:
        yield platform
    except DomainError as exc:
        errors = exc.extra.get("errors")
        if errors and len(errors) > 1:
            lines = [f"{e['field']}: {e['message']}" for e in errors]
            _fail("\n  ".join(["invalid input:", *lines]))
        _fail(exc.detail)
    finally:
        platform.close()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (PLASMAART_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PLASMAART_PORT)")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="No embedded worker")] = False,
) -> None:
    """Serve the API and dashboard, with an embedded worker unless --no-worker."""
    import uvicorn

    from plasmaart.web.app import create_app

    with _platform() as platform:
        settings = platform.settings
        api = create_app(platform, embedded_worker=False if no_worker else None)
        uvicorn.run(
            api,
            host=host or settings.host,
            port=port or settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,  # keep our structured logging
            # Open event streams would otherwise hold a SIGTERM shutdown forever.
            timeout_graceful_shutdown=5,
        )


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Jobs at once (PLASMAART_WORKER_CONCURRENCY)"),
    ] = None,
) -> None:
    """Run a worker in the foreground until SIGTERM (any number may run)."""
    from plasmaart.worker import Worker

    with _platform() as platform:
        Worker(platform, concurrency).run_until_signalled()


@app.command()
def migrate() -> None:
    """Apply the database migrations."""
    with _platform(migrate=True) as platform:
        typer.echo(f"database migrated ({platform.db.dialect})")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="E-mail address")],
    password: Annotated[
        str, typer.Option(help="At least 10 characters", prompt=True, hide_input=True)
    ],
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role")] = False,
    plan: Annotated[str | None, typer.Option(help="Subscribe (sandbox billing) to PLAN")] = None,
) -> None:
    """Create a user; --plan subscribes them so the plan's credits are granted."""
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.create_user(
            conn, email, password, role="admin" if admin else "user"
        )
        if plan:
            wallet = platform.ledger.wallet_of(conn, "user", user.id)
            platform.billing.subscribe_paid(
                conn, user_id=user.id, wallet_id=wallet, plan_id=plan, backend="sandbox"
            )
        audit.record(
            conn,
            actor=CLI_ACTOR,
            action="user.create",
            target=user.id,
            reason=None,
            now=platform.clock.now(),
            data={"email": user.email, "role": user.role, "plan": plan},
        )
    typer.echo(f"created {user.role} {user.email} ({user.id})" + (f" on {plan}" if plan else ""))


def _set_status(email: str, status: Status, reason: str | None) -> None:
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        platform.accounts.set_status(conn, user, status, actor=CLI_ACTOR, reason=reason)
        if status == "suspended":
            platform.generations.cancel_queued_of(conn, user.id, f"account suspended: {reason}")
    typer.echo(f"{user.email} is now {status}")


@users_app.command("suspend")
def users_suspend(
    email: str, reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")]
) -> None:
    """Suspend a user."""
    _set_status(email, "suspended", reason)


@users_app.command("reinstate")
def users_reinstate(email: str) -> None:
    """Reinstate a suspended user."""
    _set_status(email, "active", None)


@credits_app.command("grant")
def credits_grant(
    email: str,
    amount: int,
    reason: Annotated[str, typer.Option(help="Why (kept in the journal and audit log)")],
    expires_at: Annotated[
        datetime | None, typer.Option(help="When they expire (UTC); default never")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Idempotency key, to retry safely")] = None,
) -> None:
    """Grant AMOUNT credits to a user.

    A negative AMOUNT (written after `--`: `credits grant EMAIL -- -50 --reason R`)
    adjusts down, never below zero.
    """
    idempotency_key = key or f"cli:{uuid.uuid4()}"
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        wallet = platform.ledger.wallet_of(conn, "user", user.id)
        result = platform.ledger.adjust(
            conn,
            wallet,
            amount,
            reason=reason,
            expires_at=expires_at,
            idempotency_key=f"admin:{idempotency_key}",
        )
        audit.record(
            conn,
            actor=CLI_ACTOR,
            action="credits.adjust",
            target=user.id,
            reason=reason,
            now=platform.clock.now(),
            data={"amount": amount, "expires_at": expires_at, "key": idempotency_key},
        )
    typer.echo(f"{amount:+d} credits for {user.email}; available now {result.balance_after}")


@catalog_app.command("show")
def catalog_show() -> None:
    """Print the models, plans and credit packs as tables."""
    try:
        catalog = load_catalog(load_settings().catalog_file)
    except (ConfigError, CatalogError) as exc:
        _fail(str(exc), code=2)
    typer.echo(render_catalog(catalog))


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Recompute every balance from the journal and lots; exit 1 on any difference."""
    from plasmaart.ledger.invariants import check_ledger

    with _platform() as platform, platform.db.read() as conn:
        problems = check_ledger(conn)
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("the books balance")


def main() -> None:
    app(prog_name="plasmaart")


if __name__ == "__main__":  # pragma: no cover
    main()

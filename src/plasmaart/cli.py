"""The ``plasmaart`` command: a thin entry point over the same services as the API."""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType

from plasmaart import logs
from plasmaart.accounts.service import EmailTaken, Role, Status
from plasmaart.bootstrap import bootstrap
from plasmaart.catalog import Catalog, CatalogError, load_catalog, render_catalog
from plasmaart.config import ConfigError, load_settings
from plasmaart.db.migrate import DatabaseNotReady
from plasmaart.errors import DomainError
from plasmaart.platform import Platform


def _plain_help(params: list[Any]) -> None:
    """Help as an operator reads it: a flag shows no value to give (Typer
    prints ``<bool>`` beside it), an argument is named in capitals (EMAIL, as
    in the docs, not ``{email}``)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _plain_help(params)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


_NEGATIVE_NUMBER = re.compile(r"-\d+")


class _SignedArguments(_Command):
    """A command whose last argument may be a negative number, written as is
    (``credits grant EMAIL -50``): the parser would read ``-50`` as the short
    options -5 and -0, so such a number is passed after ``--`` for it, unless
    it is the value of an option or the command line already has ``--``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" not in args:
            takes_value = {
                name
                for param in self.params
                if isinstance(param, TyperOption) and not param.is_flag
                for name in param.opts
            }
            kept: list[str] = []
            numbers: list[str] = []
            for index, arg in enumerate(args):
                value_of_option = index > 0 and args[index - 1] in takes_value
                if _NEGATIVE_NUMBER.fullmatch(arg) and not value_of_option:
                    numbers.append(arg)
                else:
                    kept.append(arg)
            if numbers:
                args = [*kept, "--", *numbers]
        rest: list[str] = super().parse_args(ctx, args)
        return rest


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _plain_help(params)
        return params


class _Typer(typer.Typer):
    """A Typer whose commands and groups print the help above."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or _Command, **kwargs)


app = _Typer(
    help="PlasmaArt: generative AI for credits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
users_app = _Typer(help="Manage users.", no_args_is_help=True)
credits_app = _Typer(help="Move credits.", no_args_is_help=True)
catalog_app = _Typer(help="The catalog of models, plans and packs.", no_args_is_help=True)
ledger_app = _Typer(help="The credit ledger.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(credits_app, name="credits")
app.add_typer(catalog_app, name="catalog")
app.add_typer(ledger_app, name="ledger")

CLI_ACTOR = "cli"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _platform(
    *,
    migrate: bool | None = None,
    buffered_logs: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Iterator[Platform]:
    """The platform for one command; a bad setting or catalog ends it with exit
    code 2 and the message, a refused operation with exit code 1.
    ``buffered_logs``: the long-running commands log through a queue
    (plasmaart/logs.py), drained when the command ends. ``overrides``:
    settings a command's options set (``serve --port``)."""
    try:
        settings = load_settings()
        if overrides:
            settings = settings.model_copy(update=overrides)
        logs.configure(settings.log_level, json_lines=settings.log_format, buffered=buffered_logs)
        platform = bootstrap(settings, migrate=migrate, require_schema=True)
    except (ConfigError, CatalogError) as exc:
        logs.shutdown()
        _fail(str(exc), code=2)
    except DatabaseNotReady as exc:
        logs.shutdown()
        _fail(str(exc))
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
        logs.shutdown()  # the queued lines, when buffered, are written now


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (PLASMAART_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PLASMAART_PORT)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="API processes on the port (PLASMAART_WEB_WORKERS)"),
    ] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="No embedded worker")] = False,
) -> None:
    """Serve the API and dashboard, with an embedded worker unless --no-worker.
    With --workers N (N > 1) this process supervises N API processes:
    SIGTERM stops them gracefully, SIGHUP restarts them one by one."""
    from plasmaart import serving
    from plasmaart.doctor import support_address_warning
    from plasmaart.web.app import create_app

    # The address it listens on is the default start of the links it mails.
    listen = {name: value for name, value in (("host", host), ("port", port)) if value}
    with _platform(buffered_logs=True, overrides=listen) as platform:
        settings = platform.settings
        warning = support_address_warning(settings, host=host or settings.host)
        if warning:
            logging.getLogger("plasmaart.cli").warning(warning)
        _hear_other_processes(platform)
        count = workers or settings.web_workers
        if count == 1:
            api = create_app(platform, embedded_worker=False if no_worker else None)
            serving.serve_one(api, settings, host=host or settings.host, port=port or settings.port)
            return
    # Several processes: the platform above checked the settings and migrated;
    # each API process builds its own. They share one folder of HTTP metrics,
    # so that whichever answers a scrape reports them all.
    from plasmaart.web.metrics import prepare_processes

    prepare_processes(settings, count)
    address = (host or settings.host, port or settings.port)
    try:
        sock = serving.bind(*address)
    except OSError as exc:
        _fail(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}")
    logs.configure(settings.log_level, json_lines=settings.log_format)
    try:
        code = serving.Supervisor(
            sock,
            settings,
            workers=count,
            env=serving.child_environment(host=host, port=port),
            embedded_worker=settings.embedded_worker and not no_worker,
        ).run()
    finally:
        logs.shutdown()
    if code:
        raise typer.Exit(code)


def _hear_other_processes(platform: Platform) -> None:
    """On a SQLite file, bind the socket through which this process hears
    the others (events, wake-ups, cache invalidations): refuse to start
    without it rather than run deaf to them."""
    peers = platform.db.peers
    if peers is None:
        return
    try:
        peers.start()
    except OSError as exc:
        _fail(
            f"cannot open this process's socket in {peers.folder} "
            f"({exc.strerror or exc}): the API and worker processes of a SQLite "
            "database tell each other of events through it; make the folder "
            "beside the database writable"
        )


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Jobs at once (PLASMAART_WORKER_CONCURRENCY)"),
    ] = None,
) -> None:
    """Run a worker in the foreground until SIGTERM (any number may run).
    SIGTERM or SIGINT drains it: no new job, the running ones finish within
    PLASMAART_WORKER_DRAIN_S, the rest are handed back to the queue."""
    from plasmaart.worker import Worker

    with _platform(buffered_logs=True) as platform:
        _hear_other_processes(platform)
        Worker(platform, concurrency).run_until_signalled()


@app.command()
def migrate() -> None:
    """Apply the database migrations."""
    with _platform(migrate=True) as platform:
        typer.echo(f"database migrated ({platform.db.dialect})")


@app.command()
def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the findings as JSON, for scripts")
    ] = False,
) -> None:
    """Check this setup and every service it names: one table of findings and fixes.

    Checks the catalog, the database (reachable, migrated, its clock), Redis,
    the media storage, SMTP, Stripe's keys, fal, the public URL and the
    trusted proxies, at once, within a few seconds. Exit code 0: nothing
    wrong (warnings allowed); 1: an error; 2: bad configuration.
    """
    import shutil

    from plasmaart.doctor import diagnose, render_json, render_table, summary

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), code=2)
    findings = diagnose(settings)
    if as_json:
        typer.echo(render_json(findings))
    else:
        typer.echo(render_table(findings, shutil.get_terminal_size((120, 24)).columns))
        typer.echo(summary(findings))
    if any(finding.level == "error" for finding in findings):
        raise typer.Exit(1)


# Asked for (twice, hidden) when not given, so it stays out of the shell's history.
PasswordOption = Annotated[
    str | None,
    typer.Option(
        help="At least 10 characters; asked for (twice) if not given",
        prompt=True,
        confirmation_prompt=True,
        hide_input=True,
    ),
]


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="E-mail address")],
    password: PasswordOption = None,
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role")] = False,
    plan: Annotated[str | None, typer.Option(help="Subscribe (sandbox billing) to PLAN")] = None,
) -> None:
    """Create a user; --plan subscribes them so the plan's credits are granted.

    To make an existing user an admin: plasmaart users set-role EMAIL admin
    """
    role: Role = "admin" if admin else "user"
    with _platform() as platform, platform.db.write() as conn:
        try:
            user = platform.accounts.create_user(
                conn, email, password or "", role=role, actor=CLI_ACTOR, plan=plan
            )
        except EmailTaken as taken:
            hint = f"; to change their role: plasmaart users set-role {email} {role}"
            _fail(taken.detail + hint)
        if plan:
            wallet = platform.ledger.wallet_of(conn, "user", user.id)
            platform.billing.subscriptions.subscribe_paid(
                conn, user_id=user.id, wallet_id=wallet, plan_id=plan, backend="sandbox"
            )
    typer.echo(f"created {user.role} {user.email} ({user.id})" + (f" on {plan}" if plan else ""))


def _set_status(email: str, status: Status, reason: str | None) -> None:
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        if status == "suspended":
            platform.suspensions.suspend(conn, user.id, actor=CLI_ACTOR, reason=reason or "")
        else:
            platform.suspensions.reinstate(conn, user.id, actor=CLI_ACTOR)
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


@users_app.command("set-role")
def users_set_role(
    email: str,
    role: Annotated[Literal["admin", "user"], typer.Argument(help="admin or user")],
) -> None:
    """Give an existing user the admin role, or take it back (audit-logged).

    Example: plasmaart users set-role ada@example.com admin
    """
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        was = user.role
        platform.accounts.set_role(conn, user, role, actor=CLI_ACTOR)
    typer.echo(f"{user.email} is now {role}" + (" (unchanged)" if was == role else ""))


@users_app.command("set-password")
def users_set_password(email: str, password: PasswordOption = None) -> None:
    """Set a user's password (asked for twice) and end their sessions.

    Signed-in browsers must log in again; API keys keep working (revoke them
    from the dashboard if they may have leaked too).
    """
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        platform.accounts.set_password(conn, user, password or "", actor=CLI_ACTOR)
    typer.echo(f"password of {user.email} changed; their sessions are ended")


@users_app.command("disable-2fa")
def users_disable_2fa(
    email: str,
    reason: Annotated[
        str, typer.Option(help="Why, and how you made sure it is them (kept in the audit log)")
    ],
) -> None:
    """Turn off a user's two-factor authentication (audit-logged; the user is
    told by mail).

    For an owner who lost both their phone and their recovery codes: make sure
    it is them before you do it. They then log in with their password alone
    and can turn two-factor on again from Settings.
    """
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        platform.second_factor.reset(conn, user, actor=CLI_ACTOR, reason=reason)
    typer.echo(f"two-factor of {user.email} is off; they log in with their password alone")


@credits_app.command("grant", cls=_SignedArguments)
def credits_grant(
    email: str,
    amount: int,
    reason: Annotated[str, typer.Option(help="Why (kept in the journal and audit log)")],
    expires_at: Annotated[
        datetime | None, typer.Option(help="When they expire (UTC); default never")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Idempotency key, to retry safely")] = None,
) -> None:
    """Grant AMOUNT credits to a user; a negative AMOUNT adjusts down, never
    below zero.

    Example: plasmaart credits grant ada@example.com -50 --reason "refund reversed"
    """
    idempotency_key = key or f"cli:{uuid.uuid4()}"
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    with _platform() as platform, platform.db.write() as conn:
        user = platform.accounts.get_by_email(conn, email)
        result = platform.accounts.adjust_credits(
            conn,
            user.id,
            amount,
            reason=reason,
            expires_at=expires_at,
            idempotency_key=f"admin:{idempotency_key}",
            actor=CLI_ACTOR,
            key=idempotency_key,
        )
    typer.echo(f"{amount:+d} credits for {user.email}; available now {result.balance_after}")


FileOption = Annotated[
    bool,
    typer.Option(
        "--file",
        help="The catalog file as loaded, without the announced changes (reads no database)",
    ),
]


def _catalog(file: bool) -> Catalog:
    """The catalog in force (the file with the announced changes that have
    taken effect, as the API serves it), or with ``file`` the file alone."""
    if file:
        try:
            return load_catalog(load_settings().catalog_file)
        except (ConfigError, CatalogError) as exc:
            _fail(str(exc), code=2)
    with _platform() as platform, platform.db.read() as conn:
        return platform.catalogs.now(conn)


@catalog_app.command("show")
def catalog_show(file: FileOption = False) -> None:
    """Print the models, plans and credit packs in force as tables."""
    typer.echo(render_catalog(_catalog(file)))


@catalog_app.command("pricing")
def catalog_pricing(file: FileOption = False) -> None:
    """Print the pricing page (Markdown) for the catalog in force: models,
    plans, packs and the credit rules, as docs/pricing.md is made (from the
    packaged file: ``--file``)."""
    from plasmaart.catalog.pricing import render_pricing

    catalog = _catalog(file)
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), code=2)
    page = render_pricing(
        catalog,
        purchased_credits_expire_days=settings.purchased_credits_expire_days,
        payment_grace_days=settings.payment_grace_days,
        notice_days=settings.notice_days,
    )
    typer.echo(page, nl=False)


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Recompute every balance from the journal and lots; exit 1 on any difference.

    The result is recorded in ledger_checks, as the workers' scheduled runs are
    (/metrics shows the newest)."""
    from sqlalchemy.exc import SQLAlchemyError

    from plasmaart.ledger.verification import LedgerVerification, default_checked_by

    with _platform() as platform:
        verification = LedgerVerification(
            platform.db,
            platform.job_clock,
            interval_s=platform.settings.ledger_verify_interval_s,
            checked_by=default_checked_by("cli"),
        )
        result = verification.check()
        try:
            verification.record(result)
        except SQLAlchemyError as exc:
            typer.echo(f"warning: result not recorded: {type(exc).__name__}", err=True)
        problems = result.problems
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("the books balance")


@app.command()
def backup(
    path: Annotated[
        Path, typer.Argument(help="The archive to write (.tar; .tar.gz compresses); must not exist")
    ],
) -> None:
    """Back up the database and the media folder into one archive, while the
    platform runs (docs/deployment.md#backups).

    SQLite is copied with its online backup API, PostgreSQL with pg_dump;
    media in an S3 bucket stay there. Exit code 0: written; 1: refused or
    failed (no archive is left at PATH); 2: bad configuration.
    """
    from plasmaart.backup import BackupError, back_up

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), code=2)
    try:
        back_up(settings, path, say=typer.echo)
    except (BackupError, DatabaseNotReady) as exc:
        _fail(str(exc))


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(help="An archive written by plasmaart backup")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database that is not empty")
    ] = False,
) -> None:
    """Restore a backup into the configured database and media storage, then
    run `ledger verify`. Stop the API and the workers first.

    Refuses an archive that does not match its checksums, of the other
    database dialect, or from a newer PlasmaArt, and a database that is not
    empty unless --force. An older archive is migrated to this version.
    Exit code 0: restored and the books balance; 1: refused, failed, or the
    books do not balance; 2: bad configuration.
    """
    from plasmaart.backup import BackupError, restore_backup

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), code=2)
    try:
        restore_backup(settings, path, force=force, say=typer.echo)
    except (BackupError, DatabaseNotReady) as exc:
        _fail(str(exc))
    ledger_verify()


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="Model id, e.g. flux-schnell")],
    prompt: Annotated[str, typer.Option(help="What to make")],
    outputs: Annotated[int, typer.Option(min=1, help="How many outputs")] = 1,
    param: Annotated[
        list[str] | None,
        typer.Option(help='Model parameter key=value, repeatable; JSON values (seed=7, x={"a":1})'),
    ] = None,
    team: Annotated[str | None, typer.Option(help="Team id: the team's wallet pays")] = None,
    out: Annotated[
        Path, typer.Option(file_okay=False, help="Folder for the files (made if missing)")
    ] = Path(),
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Submit, print the id, exit")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait at most")] = 600.0,
    url: Annotated[
        str, typer.Option(envvar="PLASMAART_URL", help="The server")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="PLASMAART_API_KEY", help="Your API key")
    ] = None,
) -> None:
    """Generate on a PlasmaArt server through its API, and download the outputs.

    Progress goes to stderr; the summary and the files written to stdout. Exit
    code 0: succeeded; 1: refused, failed, canceled or still running at
    --timeout; 2: bad usage or configuration.
    """
    # The client (httpx) is for this command only: the server never loads it.
    from plasmaart.client import (
        ApiError,
        Client,
        GenerationTimeout,
        InvalidInputError,
        PlasmaArtError,
        TransportError,
    )
    from plasmaart.client.console import (
        TextProgress,
        describe,
        describe_unreachable,
        parse_params,
    )

    if not api_key:
        _fail("no API key: pass --api-key or set PLASMAART_API_KEY", code=2)
    if not url.startswith(("http://", "https://")):
        _fail(f"--url must be an http:// or https:// address, not {url!r}", code=2)
    try:
        params = parse_params(param or [])
    except ValueError as exc:
        _fail(str(exc), code=2)
    progress = TextProgress(sys.stderr)
    try:
        with Client(url, api_key) as client, progress:
            generation = client.generate(
                model,
                prompt,
                num_outputs=outputs,
                team_id=team,
                params=params or None,
                wait=not no_wait,
                timeout=timeout,
                on_update=progress,
            )
            if no_wait:
                typer.echo(generation.id)
                return
            if generation.status != "succeeded":
                _fail(describe(generation))
            saved = client.download_outputs(generation, out)
    except GenerationTimeout as exc:
        stuck = exc.generation
        _fail(
            f"{stuck.id} is still {stuck.status} after {timeout:g} s; it carries on on the server"
        )
    except ApiError as exc:
        lines = [str(exc)]
        if isinstance(exc, InvalidInputError):
            lines += [f"  {problem.field}: {problem.message}" for problem in exc.errors]
        if exc.request_id:
            lines.append(f"  request id {exc.request_id}")
        _fail("\n".join(lines))
    except TransportError as exc:
        _fail(describe_unreachable(url, exc, progress.last.id if progress.last else None))
    except PlasmaArtError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        carries_on = f"; {progress.last.id} carries on on the server" if progress.last else ""
        _fail(f"interrupted{carries_on}", code=130)
    typer.echo(
        f"{generation.id} succeeded: {generation.model}, "
        f"{len(generation.outputs)} output{'s' if len(generation.outputs) != 1 else ''}"
    )
    typer.echo(
        f"charged {generation.credits_charged} credits; balance {generation.balance_after} credits"
    )
    for path in saved:
        typer.echo(f"saved {path}")


def main() -> None:
    app(prog_name="plasmaart")


if __name__ == "__main__":  # pragma: no cover
    main()

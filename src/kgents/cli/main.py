"""The ``kgents`` command: ``serve``, ``db``, ``tenant``, ``key``, ``usage``, ``metering`` and
friends."""

from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from kgents import __version__
from kgents.cli.admin import key_app, tenant_app
from kgents.cli.chat import ask, chat
from kgents.cli.common import (
    DataDirOption,
    console,
    error_console,
    load_settings,
    progress_bar,
    run,
)
from kgents.cli.http_server import uvicorn_limits
from kgents.cli.metering import metering_app
from kgents.cli.nats import nats_app
from kgents.cli.serve_start import in_use, print_banner
from kgents.cli.typer_app import Typer
from kgents.cli.usage import usage
from kgents.data_dir import prepare_data_dir
from kgents.errors import KgentsError
from kgents.metering.meters import load_meters
from kgents.store.engine import Migration, database_url, pending_migrations, upgrade_database
from kgents.tenancy.admin_token import load_or_create_admin_token, masked

app = Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
app.add_typer(db_app, name="db")
app.add_typer(nats_app, name="nats")
app.add_typer(metering_app, name="metering")
app.command("usage")(usage)
app.command()(chat)
app.command()(ask)


def _print_version(shown: bool) -> None:
    if shown:
        console.print(f"kgents {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """kgents: conversations with K-gent over streaming, metered APIs."""


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(envvar="KGENTS_HOST", show_default="127.0.0.1", help="Bind address."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="KGENTS_PORT", show_default="8000", help="Port.")
    ] = None,
    data_dir: DataDirOption = None,
    log_format: Annotated[
        str,
        typer.Option(
            envvar="KGENTS_LOG_FORMAT",
            help="Logs on stderr: auto (JSON lines unless stderr is a terminal), json or text.",
        ),
    ] = "auto",
    log_level: Annotated[
        str, typer.Option(envvar="KGENTS_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    workers: Annotated[
        str | None,
        typer.Option(
            envvar="KGENTS_WORKERS",
            show_default="1",
            help="API processes on this host and port: a number, or auto (one per CPU).",
        ),
    ] = None,
) -> None:
    """Run the API server (embedded SQLite and nats-server unless configured otherwise)."""
    from kgents.api.app import create_app
    from kgents.cli.processes import serve_workers, worker_count
    from kgents.observability.logging import LOG_FORMATS, configure_logging

    if log_format not in LOG_FORMATS:
        raise typer.BadParameter("must be auto, json or text", param_hint="--log-format")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("must be debug, info, warning or error", param_hint="--log-level")

    try:
        settings = load_settings(data_dir, host=host, port=port, workers=workers)
    except ValidationError as exc:
        if not any(error["loc"][:1] == ("workers",) for error in exc.errors()):
            raise
        raise typer.BadParameter(
            "must be a number from 1 to 256, or auto", param_hint="--workers"
        ) from exc
    try:
        load_meters(settings.meters_file)  # checked here too, so a bad file is one clear line
    except KgentsError as exc:
        error_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(code=1) from None
    busy = in_use(settings)
    if busy is not None:
        error_console.print(f"[red]error[/red]: {busy}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)
    prepare_data_dir(settings)
    token = load_or_create_admin_token(settings)
    if token.path is not None:
        # Never the whole token: this output ends up in service and container logs.
        state = "created" if token.created else "kept"
        console.print(
            f"[bold]Admin token[/bold] {masked(token.value)} {state} in {token.path} (mode 0600)",
            highlight=False,
            soft_wrap=True,
        )
    if token.created:
        console.print(
            '  Use it as: curl -H "Authorization: Bearer $(cat '
            f'{token.path})" http://{settings.host}:{settings.port}/v1/tenants',
            highlight=False,
            soft_wrap=True,
        )
    print_banner(console, settings)
    configure_logging(level=log_level, fmt=LOG_FORMATS[log_format])
    if worker_count(settings.workers) > 1:
        try:
            serve_workers(settings, log_level=log_level, log_format=log_format)
        except KgentsError as exc:
            error_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
            raise typer.Exit(code=1) from None
        return
    uvicorn.run(
        create_app(settings, serving=True),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn's records go through the structured handler
        access_log=False,  # the request observer logs each request, with its request id
        timeout_graceful_shutdown=15,
        **uvicorn_limits(settings),
    )


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None) -> None:
    """Apply all database migrations, with progress per revision."""
    settings = load_settings(data_dir)
    prepare_data_dir(settings)
    url = database_url(settings)
    shown = url.render_as_string(hide_password=True)
    pending = run(pending_migrations(url))
    applied: list[Migration] = []
    if pending:
        with progress_bar() as bar:
            task = bar.add_task(_migrating(pending[0]), total=len(pending))

            def on_applied(migration: Migration) -> None:
                applied.append(migration)
                upcoming = pending[len(applied)] if len(applied) < len(pending) else None
                description = _migrating(upcoming) if upcoming else "Committing"
                bar.update(task, advance=1, description=description)

            upgrade_database(url, on_applied=on_applied)
        # Listed only now: the revisions commit together, at the end.
        for migration in applied:
            console.print(f"applied {migration.revision}: {migration.title}", highlight=False)
    console.print(f"database at {shown} is up to date")


def _migrating(migration: Migration) -> str:
    return f"Migrating: {migration.revision} {migration.title[:50]}"

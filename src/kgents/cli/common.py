"""Options shared by every command, and running async service code from a command."""

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from kgents.config import Settings
from kgents.errors import KgentsError

T = TypeVar("T")

console = Console()
error_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="KGENTS_DATA_DIR",
        help="Data directory (SQLite database, JetStream store, admin token).",
        show_default="./.kgents",
    ),
]


def load_settings(data_dir: Path | None, **overrides: Any) -> Settings:
    """Settings from the environment, with the command's options on top."""
    values = {key: value for key, value in overrides.items() if value is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def progress_bar() -> Progress:
    """A progress bar for long operations, on stderr so stdout keeps only the results; it
    disappears when done (and is not drawn at all when stderr is not a terminal)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=error_console,
        transient=True,
    )


def run(coroutine: Awaitable[T]) -> T:
    """Run async code; a domain error becomes a clean message and exit code 1."""

    async def main() -> T:
        return await coroutine

    try:
        return asyncio.run(main())
    except KgentsError as exc:
        error_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(code=1) from None

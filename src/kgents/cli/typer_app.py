"""``Typer``: the Typer app of every ``kgents`` command, with help that reads as people expect.

Typer's own help shows a flag as ``--all <bool>`` (as if it took a value) and a required
argument as ``{name}``; here a flag is just ``--all`` and an argument is ``NAME``.
"""

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType


class _ReadableHelp:
    """Flags without a value type, arguments named in capitals (``[NAME]`` when optional)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
            elif isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = (param.name or "value").upper()
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        required: dict[str, str] = {
            f"{{{param.metavar}}}": str(param.metavar)
            for param in self.get_params(ctx)
            if isinstance(param, TyperArgument) and param.required
        }
        return [required.get(piece, piece) for piece in pieces]


class Command(_ReadableHelp, TyperCommand):
    pass


class Group(_ReadableHelp, TyperGroup):
    pass


class Typer(typer.Typer):
    """``typer.Typer`` whose commands and groups are ``Command`` and ``Group``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(cls=Group, **options)

    def command(
        self, name: str | None = None, **options: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        options.setdefault("cls", Command)
        return super().command(name, **options)

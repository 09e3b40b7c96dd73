"""Help screens in the conventions of other command-line tools: ``RECIPE``, ``PATH``, ``FLOAT``.

typer prints its own type placeholders (``{recipe}`` in the usage line, ``<bool>`` beside every
flag, ``<list[str]>`` beside a repeatable option). :class:`Typer` makes every command of the
app a :class:`PlainCommand`, which names each value in capitals the way ``--help`` of git,
pip or optimum-cli does, and shows nothing beside a flag.

Example:
    >>> app = Typer()
    >>> @app.command()
    ... def hello(name: str = typer.Argument(...), loud: bool = typer.Option(False, "--loud")):
    ...     pass
    >>> from typer.testing import CliRunner
    >>> text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    >>> "NAME" in text and "{name}" not in text and "<bool>" not in text
    True
"""

from __future__ import annotations

from typing import Any

import click
import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

__all__ = ["Typer", "PlainCommand", "PlainGroup", "plain_metavar"]


_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH"}


def plain_metavar(param: click.Parameter) -> str:
    """What ``--help`` shows for ``param``'s value: ``""`` for a flag, else a capitalised word
    (the argument's name, or the type's: PATH, FLOAT, INTEGER, TEXT)."""
    if isinstance(param, TyperArgument):
        return (param.name or "value").upper()
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if getattr(param, "is_flag", False) or annotation is bool:
        return ""
    label = param.display_type(None).strip("<>") if hasattr(param, "display_type") else ""
    label = label.removeprefix("list[").removesuffix("]")  # a repeatable option: one value
    return _WORDS.get(label, label.upper() or "VALUE")


def _plain_params_(params: list[click.Parameter]) -> list[click.Parameter]:
    """Set each parameter's metavar once; typer's help then shows it instead of its type."""
    for param in params:
        if getattr(param, "_plain", False):
            continue
        if param.metavar is None:
            param.metavar = plain_metavar(param)
        shown = param.metavar or None
        # typer shows an argument's type beside its name, whatever its metavar: show nothing.
        param.display_type_rich = (  # type: ignore[attr-defined]
            lambda ctx, shown=shown, argument=isinstance(param, TyperArgument):
            None if argument else shown)
        param._plain = True  # type: ignore[attr-defined]
    return params


class PlainCommand(TyperCommand):
    """A typer command whose help and usage line show plain capitalised metavars."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _plain_params_(super().get_params(ctx))  # --help is added here, not in __init__

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or "") + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class PlainGroup(TyperGroup):
    """The app itself: its own options (``--version``, completion) without ``<bool>``."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _plain_params_(super().get_params(ctx))


class Typer(typer.Typer):
    """``typer.Typer`` whose commands are :class:`PlainCommand`\\ s (unless one names its own
    class) and whose group is a :class:`PlainGroup`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", PlainGroup)
        super().__init__(**kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or PlainCommand, **kwargs)

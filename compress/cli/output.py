"""How the ``compress`` command talks: the result on stdout, logs and progress on stderr.

Every command takes the same three flags:

* ``--json``: stdout holds one JSON object, the command's result, and nothing else (an error
  too: ``{"ok": false, "exit_code": 2, "error": "..."}``); logs stay on stderr.
* ``--quiet``: errors only. Check-like commands (apply, validate, gate) print nothing on
  success; commands whose output *is* the result (init, schema, report, list, compare,
  inspect) still print it.
* ``--verbose``: debug logs.

Progress bars are drawn on stderr only when it is a terminal (and not with ``--quiet``): the
library reports progress through :mod:`compress.progress` and never draws.

Example:
    >>> out = Output("validate", json_out=True)  # doctest: +SKIP
    >>> out.result({"ok": True})  # doctest: +SKIP
    {"ok": true}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer

from compress.errors import CompressError, InputError
from compress.progress import ProgressEvent, progress_to

__all__ = ["Output", "ProgressBars", "JsonOption", "QuietOption", "VerboseOption",
           "stderr_is_terminal"]

log = logging.getLogger("compress.cli.app")

JsonOption = typer.Option(False, "--json", help="Print the result as one JSON object on stdout "
                          "and nothing else there (logs go to stderr).")
QuietOption = typer.Option(False, "--quiet", "-q", help="Only errors (and the result, for "
                           "commands that print one).")
VerboseOption = typer.Option(False, "--verbose", "-v", help="Debug logs on stderr.")


def stderr_is_terminal() -> bool:
    """Is stderr a terminal? (Progress bars and colour logs only then; tests patch this.)"""
    return sys.stderr.isatty()


class ProgressBars:
    """A :mod:`compress.progress` listener drawing one rich bar per running task."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.progress = Progress("[progress.description]{task.description}", BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
        task = self.tasks.get(event.task)
        if task is None:
            task = self.tasks[event.task] = self.progress.add_task(event.task, total=event.total)
        self.progress.update(task, completed=event.completed, total=event.total,
                             description=f"{event.task} {event.message}".rstrip())
        if event.done:
            self.progress.remove_task(self.tasks.pop(event.task))
            if not self.tasks:
                self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks.clear()


class Output:
    """One command's output channels, set up from its ``--json/--quiet/--verbose`` flags.

    Creating it configures the ``compress`` logger (stderr; debug with ``verbose``, errors
    only with ``quiet``). Raises :class:`typer.Exit` (2) when both ``quiet`` and ``verbose``
    are given.
    """

    def __init__(self, command: str, *, json_out: bool = False, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.command, self.json, self.quiet, self.verbose = command, json_out, quiet, verbose
        self.tty = stderr_is_terminal()
        # Under torchrun / accelerate launch rank 0 speaks for the run; the other ranks only
        # log warnings and exit with the same code.
        self.silent = int(os.environ.get("RANK", "0") or 0) != 0
        self._console: Any = None
        if quiet and verbose:
            raise self.fail(InputError("give --quiet or --verbose, not both"))
        self._setup_logging()
        from compress import __version__

        log.debug("compress %s, python %s, command %s", __version__, sys.version.split()[0],
                  command)

    @property
    def console(self) -> Any:
        """A rich console on stderr (a terminal one when stderr is a terminal)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, force_terminal=True if self.tty else None)
        return self._console

    def _setup_logging(self) -> None:
        level = logging.DEBUG if self.verbose else logging.ERROR if self.quiet else logging.INFO
        if self.silent:
            level = max(level, logging.WARNING)
        handler: logging.Handler
        if self.tty:
            from rich.logging import RichHandler

            # The bars' console: log lines then print above a running bar, not through it.
            handler = RichHandler(console=self.console, show_path=False, rich_tracebacks=False)
            fmt = "%(message)s"
        else:
            handler = logging.StreamHandler(sys.stderr)
            fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
        root = logging.getLogger("compress")
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False

    @contextlib.contextmanager
    def progress(self) -> Iterator[None]:
        """Draw the library's progress inside the block, when stderr is a terminal."""
        if not self.tty or self.quiet:
            yield
            return
        bars = ProgressBars(self.console)
        try:
            with progress_to(bars):
                yield
        finally:
            bars.close()

    def text(self, message: str, nl: bool = True) -> None:
        """Human-readable output on stdout: not with ``--json`` or ``--quiet``."""
        if not (self.json or self.quiet or self.silent):
            typer.echo(message, nl=nl)

    def product(self, message: str, nl: bool = True) -> None:
        """What the command exists to print (a recipe, a schema): not with ``--json``."""
        if not (self.json or self.silent):
            typer.echo(message, nl=nl)

    def note(self, message: str) -> None:
        """A side note on stderr ("wrote gates.xml"): not with ``--quiet``."""
        if not (self.quiet or self.silent):
            typer.echo(message, err=True)

    def problem(self, message: str) -> None:
        """A failed check: on stdout among the other lines, on stderr with --json/--quiet."""
        if not self.silent:
            typer.echo(message, err=self.json or self.quiet)

    def result(self, data: Any) -> None:
        """The ``--json`` result: one JSON object on stdout (only with ``--json``)."""
        if self.json and not self.silent:
            typer.echo(json.dumps(data, indent=2, default=str))

    def fail(self, err: CompressError) -> typer.Exit:
        """Report ``err`` (one sentence on stderr; with --json also on stdout); the exit."""
        kind = "error" if isinstance(err, InputError) else "check failed"
        if self.silent:  # every rank of a launch fails alike; rank 0 says it
            return typer.Exit(err.exit_code)
        typer.echo(f"{kind}: {err}", err=True)
        if self.json:
            typer.echo(json.dumps({"ok": False, "exit_code": err.exit_code, "kind": kind,
                                   "error": str(err)}, indent=2))
        return typer.Exit(err.exit_code)

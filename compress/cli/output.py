"""How the ``compress`` command talks: the result on stdout, logs and progress on stderr.

Every command takes the same three flags:

* ``--json``: stdout holds one JSON object, the command's result, and nothing else (an error
  too: ``{"ok": false, "exit_code": 2, "error": "..."}``); logs stay on stderr.
* ``--quiet``: errors only. Check-like commands (apply, validate, gate) print nothing on
  success; commands whose output *is* the result (init, schema, report, list, compare,
  inspect) still print it.
* ``--verbose``: debug logs.

Progress goes to stderr (not with ``--quiet``): bars on a terminal, timed log lines elsewhere
(see :mod:`compress.cli.progress`); the library reports it through :mod:`compress.progress`
and never draws. The progress bars and load reports of transformers, datasets and tqdm are
silenced unless ``--verbose``.

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
from compress.progress import progress_to

__all__ = ["Output", "JsonOption", "QuietOption", "VerboseOption", "stderr_is_terminal",
           "progress_interval", "silence_third_party"]

log = logging.getLogger("compress.cli.app")

JsonOption = typer.Option(False, "--json", help="Print the result as one JSON object on stdout "
                          "and nothing else there (logs go to stderr).")
QuietOption = typer.Option(False, "--quiet", "-q", help="Only errors (and the result, for "
                           "commands that print one).")
VerboseOption = typer.Option(False, "--verbose", "-v", help="Debug logs on stderr.")


def stderr_is_terminal() -> bool:
    """Is stderr a terminal? (Progress bars and colour logs only then; tests patch this.)"""
    return sys.stderr.isatty()


def progress_interval() -> float:
    """Seconds between two progress lines of one phase when stderr is not a terminal
    (``COMPRESS_PROGRESS_INTERVAL``, default 15)."""
    try:
        return max(0.0, float(os.environ.get("COMPRESS_PROGRESS_INTERVAL", "15")))
    except ValueError:
        return 15.0


# Environment switches read when each library is imported (compress imports them lazily,
# after the command's flags are known); for one already imported, its own API below.
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TQDM_DISABLE": "1"}


def silence_third_party() -> None:
    """No progress bars, load-report tables or info chatter from transformers, datasets,
    huggingface_hub and tqdm: compress reports its own progress (``--verbose`` keeps them)."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_error()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


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
        if not verbose:
            silence_third_party()
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
        """Show the library's progress inside the block: bars on a terminal, timed log lines
        elsewhere; nothing with ``--quiet`` or on a rank other than 0."""
        from compress.cli.progress import ProgressBars, ProgressLog

        if self.quiet or self.silent:
            yield
            return
        if not self.tty:
            lines = ProgressLog(logging.getLogger("compress.progress").info,
                                interval=progress_interval(), heartbeat=True)
            try:
                with progress_to(lines):
                    yield
            finally:
                lines.close()
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

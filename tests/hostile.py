"""Shared checks for the hostile-input corpus (``tests/**/test_hostile_*.py``, marker ``hostile``).

Every case of the corpus asserts the same promises of the README, whatever layer it reaches:

* the exit code (2 for bad input, 1 for a failed check) and exactly one ``error:`` sentence, no
  traceback (:func:`error_line`);
* no file written outside the run folder and the cache (:class:`Tree`, a before/after listing);
* no code executed that the caller did not name (:data:`MARKER_NAME`: a hostile input tries to
  create this file; :func:`assert_no_marker` fails when it exists).

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     before = Tree(Path(d))
    ...     _ = (Path(d) / "runs").mkdir()
    ...     _ = (Path(d) / "runs" / "x.txt").write_text("x")
    ...     before.new_files(allowed=["runs"])
    []
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

__all__ = ["MARKER_NAME", "Tree", "error_line", "invoke", "assert_no_marker", "assert_refused"]

MARKER_NAME = "CODE_RAN"  # a hostile input's payload writes {TMP}/CODE_RAN

_runner = CliRunner()


def invoke(args: list[str], cwd: Path | None = None) -> Any:
    """``compress ARGS`` in-process (click's Result), from ``cwd`` when given."""
    from compress.cli.app import app

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return _runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def error_line(result: Any) -> str:
    """The single ``error:`` line on stderr; fails on tracebacks and uncaught exceptions."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.output, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def assert_refused(result: Any, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, one sentence containing every fragment; returns the sentence."""
    assert result.exit_code == code, result.output
    line = error_line(result)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_no_marker(folder: Path) -> None:
    """Fail when a hostile payload managed to create ``folder / MARKER_NAME``."""
    assert not (folder / MARKER_NAME).exists(), "hostile input executed code"


class Tree:
    """The files under ``root`` now, to compare with the files there later."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.before = self._files()

    def _files(self) -> set[Path]:
        return {p.relative_to(self.root) for p in self.root.rglob("*") if not p.is_dir()}

    def new_files(self, allowed: list[str] = ()) -> list[str]:  # type: ignore[assignment]
        """Files created since, outside the ``allowed`` top-level entries (run folder, cache)."""
        new = self._files() - self.before
        return sorted(str(p) for p in new if p.parts[0] not in allowed)


hostile = pytest.mark.hostile

"""The three exception classes of compress, and the exit code each maps to.

* :class:`InputError` - the user gave something unusable (recipe, path, model, data). Exit 2.
* :class:`CheckFailed` - a proof or gate failed: pruning equivalence, export parity, a quality
  gate. The run's outputs up to that point stay on disk, marked as failed. Exit 1.
* :class:`CompressError` - base class; anything else the library raises on purpose.
"""

from __future__ import annotations

__all__ = ["CompressError", "InputError", "CheckFailed", "exit_code_for"]


class CompressError(Exception):
    """Base class of every error compress raises on purpose."""

    exit_code = 1


class InputError(CompressError, ValueError):
    """Bad user input: the message is one sentence that says what is wrong and how to fix it."""

    exit_code = 2


class CheckFailed(CompressError):
    """A correctness check (equivalence, parity) or a quality gate failed."""

    exit_code = 1


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the CLI exit code (0 ok, 1 check/gate failed, 2 bad input)."""
    if isinstance(exc, CompressError):
        return exc.exit_code
    return 1

"""Progress of long loops, reported to whoever listens: the library never draws anything.

The library calls :func:`report_progress` from its loops (fine-tuning, for now). Nothing
happens unless a listener was installed with :func:`progress_to` around the call: the
``compress`` command installs one that draws a progress bar on a terminal, and the Python API
takes ``progress=`` (``compress.apply(..., progress=print)``).

A context variable, not a parameter: the loops sit several calls below ``apply`` and
``prune``, and a listener is a display choice that no stage in between should have to carry.
Each thread and asyncio task sees its own listener.

Example:
    >>> events = []
    >>> with progress_to(events.append):
    ...     report_progress("fine-tune", 3, 10, "loss 0.25")
    >>> events[0].task, events[0].completed, events[0].total, events[0].fraction
    ('fine-tune', 3, 10, 0.3)
    >>> report_progress("fine-tune", 4, 10)  # no listener: nothing happens
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ProgressEvent", "ProgressFn", "progress_to", "report_progress"]


@dataclass(frozen=True)
class ProgressEvent:
    """One update of a task: ``completed`` of ``total`` units (``done`` on its last update)."""

    task: str
    completed: int
    total: int
    message: str = ""
    done: bool = False

    @property
    def fraction(self) -> float:
        return self.completed / self.total if self.total else 1.0


ProgressFn = Callable[[ProgressEvent], None]

_listener: ContextVar[ProgressFn | None] = ContextVar("compress_progress", default=None)


@contextlib.contextmanager
def progress_to(listener: ProgressFn | None) -> Iterator[None]:
    """Send the progress reported inside the block to ``listener`` (``None``: to nobody)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report_progress(task: str, completed: int, total: int, message: str = "", *,
                    done: bool = False) -> None:
    """Tell the listener, if any, that ``task`` reached ``completed`` of ``total``."""
    listener = _listener.get()
    if listener is not None:
        listener(ProgressEvent(task, completed, total, message, done))

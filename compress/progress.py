"""Progress of a run, reported to whoever listens: the library never draws anything.

The library reports each phase of a run (baseline evaluation, width search, each step's
prune, fine-tune and evaluation, export, timing; ``inspect --sensitivity``) with
:func:`report_phase`, and the steps inside long loops with :func:`report_progress`. Nothing
happens unless a listener was installed with :func:`progress_to` around the call: the
``compress`` command installs one that draws progress bars on a terminal and writes timed log
lines otherwise, and the Python API takes ``progress=`` (``compress.apply(..., progress=print)``).

A context variable, not a parameter: the loops sit several calls below ``apply`` and
``prune``, and a listener is a display choice that no stage in between should have to carry.
Each thread and asyncio task sees its own listener.

Example:
    >>> events = []
    >>> with progress_to(events.append):
    ...     report_progress("fine-tune", 3, 10, "loss 0.25")
    ...     with report_phase("export") as phase:
    ...         phase.result = "model.onnx, parity 1.9e-06"
    >>> events[0].task, events[0].completed, events[0].total, events[0].fraction
    ('fine-tune', 3, 10, 0.3)
    >>> [(e.task, e.done, e.message) for e in events[1:]]
    [('export', False, ''), ('export', True, 'model.onnx, parity 1.9e-06')]
    >>> report_progress("fine-tune", 4, 10)  # no listener: nothing happens
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ProgressEvent", "ProgressFn", "Phase", "progress_to", "report_progress",
           "report_phase"]


@dataclass(frozen=True)
class ProgressEvent:
    """One update of a task: ``completed`` of ``total`` units (``total`` 0: not counted, e.g.
    a search of unknown length); ``done`` on its last update, whose ``message`` is then the
    task's result in words."""

    task: str
    completed: int
    total: int
    message: str = ""
    done: bool = False

    @property
    def fraction(self) -> float:
        if self.total:
            return self.completed / self.total
        return 1.0 if self.done else 0.0


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


@dataclass
class Phase:
    """A running phase (see :func:`report_phase`): ``advance`` it; set ``result`` to say, in
    a few words, what it found or did (its last event's message)."""

    task: str
    total: int = 0
    completed: int = 0
    result: str = ""

    def advance(self, n: int = 1, message: str = "") -> None:
        self.completed += n
        report_progress(self.task, self.completed, self.total, message)


@contextlib.contextmanager
def report_phase(task: str, total: int = 0) -> Iterator[Phase]:
    """Report the start and the end of ``task`` (also when it fails: a listener's bar ends);
    ``total`` units when it is counted (``phase.advance()``), else 0."""
    phase = Phase(task, total)
    report_progress(task, 0, total)
    try:
        yield phase
    finally:
        report_progress(task, phase.completed, total, phase.result, done=True)

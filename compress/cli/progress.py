"""How ``compress`` shows the library's progress events (:mod:`compress.progress`) on stderr.

On a terminal, :class:`ProgressBars` draws one rich line per running phase (a bar with a
real ETA when the phase is counted, a spinner when it is not) and prints one line when each
phase ends, with its result and how long it took. Elsewhere (CI, a pipe, a file),
:class:`ProgressLog` writes plain timed log lines: one when a phase ends, and while a phase
runs at most one every ``interval`` seconds, so a long fine-tune in CI shows where it is and
when it will end without flooding the log.

Example:
    >>> from compress.progress import ProgressEvent
    >>> lines = []
    >>> show = ProgressLog(lines.append, interval=0.0, clock=iter([0, 30, 60]).__next__)
    >>> show(ProgressEvent("step 1/1 fine-tune", 0, 40))
    >>> show(ProgressEvent("step 1/1 fine-tune", 20, 40, "loss 0.412"))
    >>> show(ProgressEvent("step 1/1 fine-tune", 40, 40, done=True))
    >>> print("\\n".join(lines))
    step 1/1 fine-tune: 20/40 (50%), loss 0.412, 0:00:30 elapsed, ETA 0:00:30
    step 1/1 fine-tune: done in 0:01:00 (40/40, loss 0.412)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.progress import ProgressEvent

__all__ = ["ProgressBars", "ProgressLog", "eta", "clock_time"]

Clock = Callable[[], float]


def clock_time(seconds: float) -> str:
    """``H:MM:SS``, like rich's and tqdm's columns.

    Example:
        >>> clock_time(75.4), clock_time(3725)
        ('0:01:15', '1:02:05')
    """
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def eta(elapsed: float, done_units: int, left_units: int) -> float | None:
    """Seconds left at the average rate so far; None until a unit is done.

    The average over the whole phase, not a moving window: fine-tuning steps come at a steady
    rate, and a window shorter than the time between two updates would show no estimate at
    all (rich's column did: ``-:--:--`` for a whole fine-tune on a slow CPU).

    Example:
        >>> eta(30.0, 20, 20), eta(5.0, 0, 40)
        (30.0, None)
    """
    if done_units <= 0 or elapsed <= 0:
        return None
    return elapsed / done_units * left_units


@dataclass
class _Task:
    started: float
    first: int  # units already done when it started (a resumed fine-tune)
    message: str = ""
    last_line: float = 0.0
    last: ProgressEvent | None = None  # the latest event, for a heartbeat line


class _Tasks:
    """Start time, starting count and last message of each running task."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.running: dict[str, _Task] = {}

    def update(self, event: ProgressEvent) -> tuple[_Task, float, float | None]:
        """The task's state, seconds since its start and seconds left (None: unknown)."""
        now = self.clock()
        task = self.running.get(event.task)
        if task is None:
            task = self.running[event.task] = _Task(now, event.completed, last_line=now)
        if event.message:
            task.message = event.message  # a step without a loss keeps the last one shown
        task.last = event
        elapsed = now - task.started
        left = eta(elapsed, event.completed - task.first, event.total - event.completed) \
            if event.total else None
        return task, elapsed, left

    def end(self, event: ProgressEvent) -> None:
        self.running.pop(event.task, None)


def _count(event: ProgressEvent) -> str:
    if not event.total:
        return f"{event.completed} done" if event.completed else ""
    return f"{event.completed}/{event.total} ({event.fraction:.0%})"


def done_line(event: ProgressEvent, task: _Task, elapsed: float) -> str:
    """``width search: done in 0:00:04 (ratio 0.4219 removes 50.1% of MACs)``."""
    count = f"{event.completed}/{event.total}" if event.total else ""
    what = event.message or ", ".join(p for p in (count, task.message) if p)
    return f"{event.task}: done in {clock_time(elapsed)}" + (f" ({what})" if what else "")


class ProgressLog:
    """A listener that writes timed plain lines through ``write`` (a logger's ``info``).

    With ``heartbeat``, a background thread also writes a line for a phase that sent nothing
    for ``interval`` seconds (an export or one slow step): a CI log is never silent for long.
    Call :meth:`close` when done."""

    def __init__(self, write: Callable[[str], Any], *, interval: float = 15.0,
                 clock: Clock = time.monotonic, heartbeat: bool = False) -> None:
        self.write, self.interval = write, interval
        self.tasks = _Tasks(clock)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._beats: threading.Thread | None = None
        if heartbeat and interval > 0:
            self._beats = threading.Thread(target=self._beat, daemon=True,
                                           name="compress-progress")
            self._beats.start()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            task, elapsed, left = self.tasks.update(event)
            if event.done:
                self.tasks.end(event)
                self.write(done_line(event, task, elapsed))
                return
            if elapsed == 0 or task.started + elapsed - task.last_line < self.interval:
                return  # the start itself, or too soon after the last line
            self._line(event, task, elapsed, left)

    def _line(self, event: ProgressEvent, task: _Task, elapsed: float,
              left: float | None) -> None:
        task.last_line = task.started + elapsed
        parts = [p for p in (_count(event), task.message, f"{clock_time(elapsed)} elapsed") if p]
        if left is not None:
            parts.append(f"ETA {clock_time(left)}")
        self.write(f"{event.task}: " + ", ".join(parts))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            with self._lock:
                now = self.tasks.clock()
                for task in list(self.tasks.running.values()):
                    if task.last is not None and now - task.last_line >= self.interval:
                        elapsed = now - task.started
                        done = task.last.completed - task.first
                        left = eta(elapsed, done, task.last.total - task.last.completed) \
                            if task.last.total else None
                        self._line(task.last, task, elapsed, left)

    def close(self) -> None:
        """Stop the heartbeat thread (if any)."""
        self._stop.set()
        if self._beats is not None:
            self._beats.join()


class ProgressBars:
    """A listener drawing one rich line per running task on ``console``: a bar, the count and
    a real ETA for a counted task, a spinner and the elapsed time for the others; each task's
    end is printed as a line that stays."""

    def __init__(self, console: Any, *, clock: Clock = time.monotonic) -> None:
        self.console = console
        self.progress: Any = None
        self.ids: dict[str, Any] = {}
        self.tasks = _Tasks(clock)

    def _start(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        # The count as text: "3/40", or "3" for a phase of unknown length (not "3/?").
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 BarColumn(), TextColumn("{task.fields[count]}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                                 console=self.console, transient=True)
        self.progress.start()

    def __call__(self, event: ProgressEvent) -> None:
        task, elapsed, left = self.tasks.update(event)
        if self.progress is None:
            self._start()
        if event.task not in self.ids:
            self.ids[event.task] = self.progress.add_task(event.task, total=event.total or None,
                                                          eta="", count="")
        description = f"{event.task} {task.message}".rstrip()
        self.progress.update(self.ids[event.task], completed=event.completed,
                             total=event.total or None, description=description,
                             eta="" if left is None else f"ETA {clock_time(left)}",
                             count=f"{event.completed}/{event.total}" if event.total else
                             str(event.completed or ""))
        if event.done:
            self.tasks.end(event)
            self.progress.remove_task(self.ids.pop(event.task))
            self.console.print(f"[green]✓[/green] {_escape(done_line(event, task, elapsed))}",
                               highlight=False)
            if not self.ids:
                self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.ids.clear()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)

"""Stopping a run on SIGINT (Ctrl-C) and SIGTERM: at once, or after the current batch.

:func:`stop_on_signals` turns both signals into :class:`KeyboardInterrupt`; inside a
:func:`deferred_stop` block (a fine-tune that can checkpoint) the first signal only asks to
stop (:func:`stop_requested`), and the block stops after its current batch once it saved
where it was. A second signal stops at once.

Example:
    >>> with stop_on_signals(), deferred_stop():
    ...     stop_requested() is None
    True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["stop_on_signals", "deferred_stop", "stop_requested"]


class _Stop:
    """The pending stop request (a signal number) and how many deferred_stop blocks are open."""

    signal: int | None = None
    deferring = 0


_STOP = _Stop()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`KeyboardInterrupt`, or only ask to stop (see
    :func:`stop_requested`) while a :func:`deferred_stop` block is open and nothing is pending.

    Outside the main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        # No logging here: a handler that writes could re-enter a stream mid-write.
        if _STOP.deferring and _STOP.signal is None:
            _STOP.signal = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    _STOP.signal = None
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _STOP.signal = None


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """A block that polls :func:`stop_requested` (after each batch) instead of being cut off."""
    _STOP.deferring += 1
    try:
        yield
    finally:
        _STOP.deferring -= 1


def stop_requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _STOP.signal

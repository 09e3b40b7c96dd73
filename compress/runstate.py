"""Run folders that never lie: a status file written last, guarded reuse, resumable steps.

* ``status.json`` says ``running``, ``done``, ``failed`` or ``interrupted`` (with a reason). It
  is written when a run starts and rewritten when it ends, ``done`` only after every artifact.
* A finished folder is never overwritten unless asked; an unfinished one is resumed or
  replaced only when asked.
* After each pruning step, ``steps/NN/`` holds the model (safetensors + manifest), the pruner's
  state and the RNG states; ``steps/NN/state.json`` is written last, so a step folder without
  it is not trusted. Within a step's fine-tune, :mod:`compress.checkpoint` saves more.
* SIGINT (Ctrl-C) and SIGTERM stop a run (:func:`stop_on_signals`): at once, or inside a
  :func:`deferred_stop` block (a fine-tune that can checkpoint) after the current batch, once
  the fine-tune has saved where it stopped. A second signal stops at once.

Example:
    >>> status = read_status(Path("runs/quickstart"))  # doctest: +SKIP
    >>> status["state"]  # doctest: +SKIP
    'done'
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.errors import InputError
from compress.fsutil import write_text_atomic

__all__ = ["STATES", "read_status", "write_status", "prepare_run_dir", "recipe_digest",
           "changed_keys", "last_finished_step", "rng_state", "restore_rng_state",
           "sampler_generator", "stop_on_signals", "deferred_stop", "stop_requested"]

STATES = ("running", "done", "failed", "interrupted")


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "status.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return {"state": "failed", "reason": "status.json is unreadable"}


def write_status(run_dir: Path, state: str, reason: str | None = None, **extra: Any) -> None:
    assert state in STATES, state
    body = {"state": state, "reason": reason,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
    write_text_atomic(run_dir / "status.json", json.dumps(body, indent=2) + "\n")


def recipe_digest(recipe_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe_dict, sort_keys=True).encode()).hexdigest()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def prepare_run_dir(run_dir: Path, recipe_dict: dict[str, Any], *, overwrite: bool,
                    resume: bool) -> bool:
    """Check that ``run_dir`` may be used; return True when an earlier run is to be resumed."""
    if overwrite and resume:
        raise InputError("choose one of --overwrite (start over) and --resume (continue)")
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == run_dir else f"is inside {str(parent)!r}, a file"
            raise InputError(f"--out {str(run_dir)!r} {where}, not a folder; choose another "
                             f"--out")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise InputError(f"nothing to resume in {str(run_dir)!r}: the folder is empty or "
                             f"missing; run without --resume")
        return False
    status = read_status(run_dir)
    if overwrite:
        shutil.rmtree(run_dir)
        return False
    if status is None:
        raise InputError(f"{str(run_dir)!r} exists and is not a compress run folder; choose "
                         f"another --out or pass --overwrite")
    if status["state"] == "done":
        raise InputError(f"{str(run_dir)!r} holds a finished run; pass --overwrite to replace "
                         f"it or choose another --out")
    if not resume:
        raise InputError(f"{str(run_dir)!r} holds an unfinished run ({status['state']}); pass "
                         f"--resume to continue it or --overwrite to start over")
    stored = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    keys = changed_keys(stored, recipe_dict)
    if keys:
        raise InputError(f"cannot resume {str(run_dir)!r}: the recipe changed since the run "
                         f"started ({', '.join(keys[:5])}); restore them or use --overwrite")
    return True


def last_finished_step(run_dir: Path) -> int:
    """The highest step whose folder has its state.json (0 when none finished)."""
    done = [int(p.parent.name) for p in (run_dir / "steps").glob("*/state.json")
            if p.parent.name.isdigit()]
    return max(done, default=0)


def sampler_generator(loader: Any) -> torch.Generator | None:
    """The generator that orders a training loader's batches (its sampler's), if it has one."""
    return getattr(getattr(loader, "sampler", None), "generator", None)


def rng_state(sampler_generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Every random state a fine-tune consumes, as tensors (saved with safetensors)."""
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.tensor(list(_numpy_words()), dtype=torch.int64),
             "python": torch.tensor(list(_python_words()), dtype=torch.int64)}
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor],
                      sampler_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.random.get_state()
    np.random.set_state((keys[0], state["numpy"][:-1].numpy().astype(np.uint32),
                         int(state["numpy"][-1]), keys[3], keys[4]))
    random.setstate((3, tuple(int(w) for w in state["python"].tolist()), None))
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _numpy_words() -> list[int]:
    _, keys, pos, _, _ = np.random.get_state()
    return [int(k) for k in keys] + [int(pos)]


def _python_words() -> list[int]:
    version, internal, _ = random.getstate()
    assert version == 3
    return [int(w) for w in internal]


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

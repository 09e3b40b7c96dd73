"""Mid-fine-tune checkpoints: the exact position of a fine-tune, saved and continued.

A step's fine-tune saves a :class:`Snapshot` every ``finetune.checkpoint_every`` passes over
the training data, and when SIGINT/SIGTERM asks the run to stop (after the current batch), into
``steps/NN/finetune-SSSSSS/`` (``SSSSSS``: optimizer steps taken in that fine-tune):

* ``model.safetensors``: the weights as trained (pruned ones zero);
* ``weights.safetensors``: the patience best weights and the divergence rollback weights;
* ``optimizer.pt``: optimizer and LR schedule state (read back with ``weights_only=True``);
* ``rng.safetensors``: the random states now, and before the current pass's loader iterator;
* ``pruner.safetensors``: the pruner's tensors (masks), when it has any;
* ``state.json``: the :class:`Position`, the patience state and the run's context (pruning
  step, pruner state, step record, finished rows).

The folder is written under a temp name and renamed, so a kill leaves a whole snapshot or none;
the step's older snapshots are removed after. Continuing mid-pass rebuilds the pass's loader
from the random state it started with and skips the batches already trained on, so the
continued fine-tune sees exactly the batches and random numbers the uninterrupted one did.

Example:
    >>> ckpt = FinetuneCheckpoint(Path("runs/x/steps/02"), every=1)  # doctest: +SKIP
    >>> stats = finetune_(model, loader, spec, device, checkpoint=ckpt)  # doctest: +SKIP
    >>> latest_snapshot(Path("runs/x/steps/02")).position.passes  # doctest: +SKIP
    3
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.finetune.patience import BestWeights, Monitor
from compress.fsutil import save_tensors_atomic, write_text_atomic, writing
from compress.rng import restore_rng_state, rng_state, sampler_generator
from compress.signals import deferred_stop, stop_requested

__all__ = ["Position", "Snapshot", "FinetuneCheckpoint", "write_snapshot", "read_snapshot",
           "damaged_snapshot", "latest_snapshot", "latest_snapshot_dir", "remove_snapshots"]

log = logging.getLogger(__name__)

_PREFIX = "finetune-"


@dataclass
class Position:
    """Where a fine-tune is; with the weights, optimizer and random states, enough to go on."""

    step: int = 0  # optimizer steps taken, over all attempts
    samples: int = 0
    last_loss: float | None = None
    lr: float = 0.0  # peak learning rate of the current attempt
    start: int = 0  # optimizer step at which the current attempt began (its LR schedule's 0)
    divergence: list[Any] | None = None  # [reason, step] of the first divergence
    passes: int = 0  # full passes over the training data finished
    batch: int = 0  # batches of the current pass already trained on
    seconds: float = 0.0  # wall time spent up to the snapshot


@dataclass
class Snapshot:
    """One saved fine-tune position; ``context`` and ``tensors`` are the caller's."""

    position: Position
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # {"optimizer": state dict, "scheduler": state dict}
    rng: dict[str, torch.Tensor]
    pass_rng: dict[str, torch.Tensor]
    monitor: dict[str, Any] | None = None
    best: dict[str, torch.Tensor] | None = None
    initial: dict[str, torch.Tensor] | None = None
    context: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class FinetuneCheckpoint:
    """How one step's fine-tune saves itself into ``folder``, and where it resumes from.

    ``every``: passes over the training data between snapshots (0: only when stopped by a
    signal). ``context`` (JSON-safe) and ``tensors`` are stored with every snapshot.
    """

    def __init__(self, folder: Path, every: int, *, context: dict[str, Any] | None = None,
                 tensors: dict[str, torch.Tensor] | None = None,
                 resume: Snapshot | None = None) -> None:
        self.folder, self.every, self.resume = folder, every, resume
        self.context, self.tensors = context or {}, tensors or {}
        self._pass_rng: dict[str, torch.Tensor] = {}

    def due(self, passes: int) -> bool:
        return self.every > 0 and passes % self.every == 0

    deferring = staticmethod(deferred_stop)
    stop_requested = staticmethod(stop_requested)

    def open_pass(self, loader: Iterable[Any], snapshot: Snapshot | None) -> Iterator[Any]:
        """A new pass over ``loader``; continuing ``snapshot``'s pass when given."""
        generator = sampler_generator(loader)
        if snapshot is not None and snapshot.position.batch == 0:  # saved between passes
            restore_rng_state(snapshot.rng, generator)
        if snapshot is None or snapshot.position.batch == 0:
            # Making the iterator draws random numbers (the loader's base seed): after this.
            self._pass_rng = rng_state(generator)
            return iter(loader)
        # Mid-pass: the pass's order comes from the random state before its iterator was made;
        # the batches trained on already are skipped, then the random state is the snapshot's.
        restore_rng_state(snapshot.pass_rng, generator)
        self._pass_rng = snapshot.pass_rng
        batches = iter(loader)
        for _ in range(snapshot.position.batch):
            next(batches)
        restore_rng_state(snapshot.rng, generator)
        return batches

    def save(self, position: Position, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, loader: Iterable[Any], monitor: Monitor | None,
             initial: BestWeights | None) -> Path:
        snapshot = Snapshot(
            position, model.state_dict(),
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            rng_state(sampler_generator(loader)), self._pass_rng,
            monitor.state() if monitor is not None else None,
            monitor.best.state if monitor is not None else None,
            initial.state if initial is not None else None, self.context, self.tensors)
        path = write_snapshot(self.folder, snapshot)
        log.info("checkpoint after %d optimizer steps (%d passes): %s", position.step,
                 position.passes, path)
        return path


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Copies: safetensors refuses tensors that share storage (tied weights).
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_tensors_atomic(_cpu(tensors), path)


def _prefixed(parts: dict[str, dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, tensors in parts.items() for k, v in (tensors or {}).items()}


def _unprefixed(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}


def write_snapshot(folder: Path, snapshot: Snapshot) -> Path:
    """Write ``snapshot`` into ``folder/finetune-SSSSSS/`` at once; remove older ones. A full
    or read-only disk is an InputError naming the snapshot; no temp folder is left."""
    final = folder / f"{_PREFIX}{snapshot.position.step:06d}"
    if (final / "state.json").is_file():  # saved already (a signal right after a pass)
        return final
    with writing(final):
        _write_snapshot(folder, final, snapshot)
    return final


def _write_snapshot(folder: Path, final: Path, snapshot: Snapshot) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob(f".{_PREFIX}*.tmp"), final]:  # left by a kill mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder / f".{_PREFIX}{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        _save_tensors(snapshot.model, tmp / "model.safetensors")
        _save_tensors(_prefixed({"best": snapshot.best, "initial": snapshot.initial}),
                      tmp / "weights.safetensors")
        _save_tensors(_prefixed({"now": snapshot.rng, "pass": snapshot.pass_rng}),
                      tmp / "rng.safetensors")
        if snapshot.tensors:
            _save_tensors(snapshot.tensors, tmp / "pruner.safetensors")
        buffer = io.BytesIO()
        torch.save(snapshot.optimizer, buffer)
        with open(tmp / "optimizer.pt", "wb") as f:
            f.write(buffer.getvalue())
            os.fsync(f.fileno())
        state = {"position": asdict(snapshot.position), "monitor": snapshot.monitor,
                 "best": snapshot.best is not None, "initial": snapshot.initial is not None,
                 "context": snapshot.context}
        write_text_atomic(tmp / "state.json", json.dumps(state))  # last: marks it whole
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in folder.glob(f"{_PREFIX}*"):  # the newest one is all a resume needs
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)


_NUMBER = (int, float)
_POSITION_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,), "samples": (int,), "last_loss": (*_NUMBER, type(None)), "lr": _NUMBER,
    "start": (int,), "divergence": (list, type(None)), "passes": (int,), "batch": (int,),
    "seconds": _NUMBER}
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "position": (dict,), "monitor": (dict, type(None)), "best": (bool,), "initial": (bool,),
    "context": (dict,)}


def damaged_snapshot(path: Path, problem: str) -> InputError:
    """The one sentence for a snapshot that cannot be continued from."""
    return InputError(f"the fine-tune snapshot {str(path)!r} {problem}; remove that folder to "
                      f"redo the step's fine-tune from the last finished step, or pass "
                      f"--overwrite to start over")


def _wrong_key(body: Any, types: dict[str, tuple[type, ...]]) -> str | None:
    if not isinstance(body, dict):
        return "is not a JSON object"
    for key, kinds in types.items():
        value = body.get(key)
        if key not in body or not isinstance(value, kinds) or (
                isinstance(value, bool) and bool not in kinds):
            return f"has no valid {key!r}"
    return None


def read_snapshot(path: Path) -> Snapshot:
    """The snapshot in ``path``; anything unreadable or of the wrong shape (damaged files,
    state.json not JSON or wrong-typed, tensors missing) is an InputError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise damaged_snapshot(path, "has a state.json that is not readable JSON") from None
    problem = _wrong_key(state, _STATE_TYPES) or _wrong_key(state["position"], _POSITION_TYPES)
    if problem is not None or set(state["position"]) - set(_POSITION_TYPES):
        raise damaged_snapshot(path, f"has a state.json that {problem or 'has unknown keys'}")
    name = "model.safetensors"
    try:
        model = load_file(str(path / name))
        name = "weights.safetensors"
        weights = load_file(str(path / name))
        name = "rng.safetensors"
        rng = load_file(str(path / name))
        name = "pruner.safetensors"
        pruner = load_file(str(path / name)) if (path / name).is_file() else {}
        name = "optimizer.pt"
        optimizer = torch.load(path / name, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is damage
        what = "is missing" if isinstance(err, FileNotFoundError) else "is not readable"
        kind = "" if isinstance(err, (OSError, SafetensorError)) else f" ({type(err).__name__})"
        raise damaged_snapshot(path, f"is damaged: {name} {what}{kind}") from None
    parts = {"now": _unprefixed(rng, "now"), "pass": _unprefixed(rng, "pass"),
             "best": _unprefixed(weights, "best"), "initial": _unprefixed(weights, "initial")}
    needed = ["now"] + [k for k in ("best", "initial") if state[k]]
    if not model or not isinstance(optimizer, dict) or \
            not all(parts[k] for k in needed):
        raise damaged_snapshot(path, "is damaged: tensors it records are missing")
    return Snapshot(
        Position(**state["position"]), model, optimizer, parts["now"], parts["pass"],
        state["monitor"], parts["best"] if state["best"] else None,
        parts["initial"] if state["initial"] else None, state["context"], pruner)


def latest_snapshot_dir(folder: Path) -> Path | None:
    """The newest whole snapshot's folder in a step folder, or None."""
    found = sorted(p for p in folder.glob(f"{_PREFIX}*") if (p / "state.json").is_file())
    return found[-1] if found else None


def latest_snapshot(folder: Path) -> Snapshot | None:
    """The newest whole snapshot in a step folder, or None."""
    path = latest_snapshot_dir(folder)
    return read_snapshot(path) if path is not None else None


def remove_snapshots(folder: Path) -> None:
    """Drop a step's snapshots once the step itself is saved (they are large)."""
    for path in folder.glob(f"{_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)

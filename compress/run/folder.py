"""The run folder: its status, its guarded reuse, its step checkpoints, and resuming from them.

One module owns the folder's on-disk format:

* ``status.json`` says ``running``, ``done``, ``failed`` or ``interrupted`` (with a reason) and
  names the run's owner (:mod:`compress.run.owner`: ``running`` with the owner gone reads
  ``interrupted (owner gone)``). It is written when a run starts and rewritten when it ends,
  ``done`` only after every artifact.
* A run holds the folder's lock from :meth:`RunFolder.open_` to :meth:`RunFolder.close`; a
  second writer is refused. A finished folder is never overwritten unless asked; an unfinished
  one is resumed or replaced only when asked.
* After each pruning step, ``steps/NN/`` holds the model (safetensors + manifest), the pruner's
  state and the RNG states; ``steps/NN/state.json`` is written last, so a step folder without
  it is not trusted. In a step's fine-tune :mod:`compress.finetune.checkpoint` saves snapshots in
  the same ``steps/NN/`` (``finetune-*``); :meth:`RunFolder.resume_point` reads both back.

Example:
    >>> import tempfile
    >>> folder = RunFolder(Path(tempfile.mkdtemp()) / "run")
    >>> folder.open_({"name": "demo"}, overwrite=False, resume=False)
    False
    >>> read_status(folder.path)["state"], folder.last_finished_step(), folder.step_dir(3).name
    ('running', 0, '03')
    >>> folder.close()
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from compress.errors import InputError
from compress.finetune.checkpoint import (
    FinetuneCheckpoint,
    damaged_snapshot,
    latest_snapshot,
    latest_snapshot_dir,
    remove_snapshots,
)
from compress.fsutil import save_tensors_atomic, write_text_atomic
from compress.jsonio import read_json_object
from compress.pruning.base import Pruner, StepRecord
from compress.pruning.group_widths import GroupRatios
from compress.rng import restore_rng_state, rng_state
from compress.run.loop import ResumePoint
from compress.run.owner import RunLock, claim, entries, this_process

__all__ = ["STATES", "RunFolder", "read_run_file", "read_status", "write_status", "prepare_run_dir",
           "recipe_digest", "changed_keys", "last_finished_step"]

STATES = ("running", "done", "failed", "interrupted")


def read_run_file(path: Path, keys: dict[str, type] | None = None) -> dict[str, Any]:
    """The JSON object in the run file ``path``, with ``keys`` of those types; any other
    content (missing, not bounded JSON, not an object, a key missing or wrong-typed) is an
    InputError naming the file: everything this module reads back goes through here."""
    body = read_json_object(path, label="the run file ", hint=_DAMAGED_HINT)
    wrong = [k for k, kind in (keys or {}).items() if not isinstance(body.get(k), kind)]
    if wrong:
        raise _damaged(path, f"has no valid {wrong[0]!r}")
    return body


_DAMAGED_HINT = ("the folder was not written by compress or was damaged: pass --overwrite to "
                 "start over or choose another --out")


def _damaged(path: Path, problem: str) -> InputError:
    return InputError(f"the run file {str(path)!r} {problem}; {_DAMAGED_HINT}")


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json`` (None when there is none), its ``state`` one of :data:`STATES`."""
    path = run_dir / "status.json"
    if not path.is_file():
        return None
    status = read_run_file(path, {"state": str})
    if status["state"] not in STATES:
        raise _damaged(path, f"has no valid 'state' (one of {', '.join(STATES)})")
    return status


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
                    resume: bool, lock: RunLock) -> bool:
    """Check that ``run_dir`` may be used and take its ``lock`` (held on return, released on
    a refusal); return True when an earlier run is to be resumed."""
    if overwrite and resume:
        raise InputError("choose one of --overwrite (start over) and --resume (continue)")
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == run_dir else f"is inside {str(parent)!r}, a file"
            raise InputError(f"--out {str(run_dir)!r} {where}, not a folder; choose another "
                             f"--out")
    if not entries(run_dir):
        if resume:
            raise InputError(f"nothing to resume in {str(run_dir)!r}: the folder is empty or "
                             f"missing; run without --resume")
        claim(run_dir, lock, read_status, create=True)
        return False
    if not overwrite and read_status(run_dir) is None:  # before a lock file is put there
        raise _foreign(run_dir)
    claim(run_dir, lock, read_status)
    try:
        return _reuse(run_dir, recipe_dict, overwrite=overwrite, resume=resume)
    except BaseException:
        lock.release()
        raise


def _foreign(run_dir: Path) -> InputError:
    return InputError(f"{str(run_dir)!r} exists and is not a compress run folder; choose "
                      f"another --out or pass --overwrite")


def _reuse(run_dir: Path, recipe_dict: dict[str, Any], *, overwrite: bool, resume: bool) -> bool:
    """Under the lock: clear the folder (``overwrite``) or check it may be resumed."""
    if overwrite:
        for entry in entries(run_dir):  # not the lock file: a second writer would lock anew
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return False
    status = read_status(run_dir)  # again: the owner refused a moment ago may have finished
    if status is None:
        raise _foreign(run_dir)
    if status["state"] == "done":
        raise InputError(f"{str(run_dir)!r} holds a finished run; pass --overwrite to replace "
                         f"it or choose another --out")
    if not resume:
        # Under our lock a 'running' folder has no live owner.
        state = "interrupted (owner gone)" if status["state"] == "running" else status["state"]
        raise InputError(f"{str(run_dir)!r} holds an unfinished run ({state}); pass "
                         f"--resume to continue it or --overwrite to start over")
    keys = changed_keys(read_run_file(run_dir / "recipe.json"), recipe_dict)
    if keys:
        raise InputError(f"cannot resume {str(run_dir)!r}: the recipe changed since the run "
                         f"started ({', '.join(keys[:5])}); restore them or use --overwrite")
    return True


def last_finished_step(run_dir: Path) -> int:
    """The highest step whose folder has its state.json (0 when none finished)."""
    done = [int(p.parent.name) for p in (run_dir / "steps").glob("*/state.json")
            if p.parent.name.isdigit()]
    return max(done, default=0)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A step's safetensors file; missing or damaged is an InputError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        problem = "is missing" if isinstance(err, FileNotFoundError) else "is not readable"
        raise _damaged(path, problem) from None


class RunFolder:
    """One run's folder: opened once, then written step by step, and read back to resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RunLock(path)
        self.owner = this_process()

    def step_dir(self, step: int) -> Path:
        return self.path / "steps" / f"{step:02d}"

    def block_dir(self, step: int) -> Path:
        """Where step ``step`` keeps its finished blocks while it runs."""
        return self.step_dir(step) / "blocks"

    def last_finished_step(self) -> int:
        return last_finished_step(self.path)

    def open_(self, recipe_dict: dict[str, Any], *, overwrite: bool, resume: bool) -> bool:
        """Create (or reopen with ``resume``) the folder, locked and marked running; True when
        resuming. Call :meth:`close` when the run ends."""
        resuming = prepare_run_dir(self.path, recipe_dict, overwrite=overwrite, resume=resume,
                                   lock=self.lock)
        try:
            if not resuming:
                write_text_atomic(self.path / "recipe.json", json.dumps(recipe_dict, indent=2))
            self._write("running", None, recipe_sha256=recipe_digest(recipe_dict))
        except BaseException:
            self.close()
            raise
        return resuming

    def close(self) -> None:
        """Release the folder's lock (the run has written its last status)."""
        self.lock.release()

    def _write(self, state: str, reason: str | None, **extra: Any) -> None:
        write_status(self.path, state, reason, owner=self.owner.to_dict(), **extra)

    def finished(self, **extra: Any) -> None:
        """Mark the run done: every artifact is written."""
        self._write("done", None, **extra)

    def stopped(self, state: str, message: str, **extra: Any) -> None:
        """Mark the run ``failed`` or ``interrupted``, naming its last finished step."""
        self._write(state, message, last_finished_step=self.last_finished_step(), **extra)

    def interrupted(self) -> None:
        """Mark the run interrupted, naming the fine-tune snapshot a resume will continue."""
        snapshot = latest_snapshot_dir(self.step_dir(self.last_finished_step() + 1))
        self.stopped("interrupted", "interrupted by a signal; continue with --resume",
                     finetune_checkpoint=str(snapshot) if snapshot else None)

    def save_step(self, step: int, row: dict[str, Any], pruner: Pruner,
                  rows: list[dict[str, Any]], sampler: torch.Generator | None,
                  write_model: Callable[[Path], dict[str, Any] | None]) -> None:
        """Checkpoint a finished step: ``write_model(step_dir)`` writes the model (returning
        export details for the row, or None), then the RNG and pruner states; ``row`` joins
        ``rows``. ``state.json`` is written last."""
        step_dir = self.step_dir(step)
        (step_dir / "state.json").unlink(missing_ok=True)
        exported = write_model(step_dir)
        if exported is not None:
            row["export"] = exported
        row["checkpoint"] = str(step_dir)
        rows.append(row)
        save_tensors_atomic(rng_state(sampler), step_dir / "rng.safetensors")
        if tensors := pruner.get_tensors():
            save_tensors_atomic(tensors, step_dir / "pruner.safetensors")
        state = {"step": step, "pruner": pruner.get_state(), "rows": rows}
        # Written last: a step folder without state.json is never resumed from.
        write_text_atomic(step_dir / "state.json", json.dumps(state))
        remove_snapshots(step_dir)  # the fine-tune's own checkpoints are superseded
        shutil.rmtree(self.block_dir(step), ignore_errors=True)  # and so are its blocks

    def finetune_checkpoint(self, step: int, pruner: Pruner, record: StepRecord,
                            rows: list[dict[str, Any]], every: float) -> FinetuneCheckpoint:
        """How step ``step``'s fine-tune checkpoints itself inside ``steps/NN/``."""
        context = {"step": step, "pruner": pruner.get_state(), "record": asdict(record),
                   "rows": rows}
        return FinetuneCheckpoint(self.step_dir(step), every, context=context,
                                  tensors=pruner.get_tensors())

    def save_ratios(self, ratios: list[float], plan: dict[str, Any] | None = None) -> None:
        """Keep the per-step channel ratios (a MACs or latency target's plan) for a resume,
        with what a latency target's planner recorded for the report (``plan``)."""
        (self.path / "steps").mkdir(parents=True, exist_ok=True)
        kept = [r.to_json() if isinstance(r, GroupRatios) else r for r in ratios]
        body = {"ratios": kept, **({"latency_plan": plan} if plan else {})}
        write_text_atomic(self.path / "steps" / "ratios.json", json.dumps(body, default=float))

    def saved_latency_plan(self) -> dict[str, Any] | None:
        """The latency planner's record :meth:`save_ratios` kept, or None."""
        path = self.path / "steps" / "ratios.json"
        if not path.is_file():
            return None
        plan = read_run_file(path, {"ratios": list}).get("latency_plan")
        if plan is not None and not isinstance(plan, dict):
            raise _damaged(path, "has no valid 'latency_plan'")
        return plan

    def saved_ratios(self) -> list[float] | None:
        """What :meth:`save_ratios` kept (a latency plan's per-group ratios too), or None."""
        path = self.path / "steps" / "ratios.json"
        if not path.is_file():
            return None
        try:
            kept = read_run_file(path, {"ratios": list})["ratios"]
            return [GroupRatios.from_json(r) for r in kept]
        except ValueError:
            raise _damaged(path, "'ratios' is not a list of channel ratios") from None

    def resume_point(self, sampler: torch.Generator | None) -> ResumePoint | None:
        """Where to go on: inside the fine-tune after the last finished step, or after it.

        None when no step finished but the first one left finished blocks: the run starts
        over, and that step reuses them."""
        step = self.last_finished_step()
        for finished in range(1, step + 1):  # a kill between state.json and their removal
            remove_snapshots(self.step_dir(finished))
            shutil.rmtree(self.block_dir(finished), ignore_errors=True)
        partial = latest_snapshot(self.step_dir(step + 1))
        if partial is not None:
            context, where = partial.context, latest_snapshot_dir(self.step_dir(step + 1))
            try:
                record = StepRecord(**context["record"])
                assert isinstance(context["pruner"], dict) and isinstance(context["rows"], list)
            except (KeyError, TypeError, AssertionError):
                raise damaged_snapshot(where, "has a state.json whose 'context' is not the "
                                       "run's") from None
            return ResumePoint(step=step, pruner_state=context["pruner"],
                               pruner_tensors=partial.tensors, model_state=partial.model,
                               rows=context["rows"], restore_rng=lambda: None,
                               finetune=partial, record=record, source=where,
                               ratios=self.saved_ratios())
        if step == 0 and any(self.block_dir(1).glob("*.safetensors")):
            return None
        if step == 0:
            raise InputError(f"nothing to resume in {str(self.path)!r}: no pruning step "
                             f"finished; start over with --overwrite")
        step_dir = self.step_dir(step)
        state = read_run_file(step_dir / "state.json", {"pruner": dict, "rows": list})
        rng = _load_tensors(step_dir / "rng.safetensors")
        tensors = step_dir / "pruner.safetensors"
        return ResumePoint(step=step, pruner_state=state["pruner"],
                           pruner_tensors=_load_tensors(tensors) if tensors.is_file() else {},
                           model_state=_load_tensors(step_dir / "model.safetensors"),
                           rows=state["rows"], source=step_dir, ratios=self.saved_ratios(),
                           restore_rng=lambda: restore_rng_state(rng, sampler))

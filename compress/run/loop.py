"""The schedule loop: (prune step -> fine-tune -> evaluate)* on a model, in place.

Shared by ``compress apply`` (through :mod:`compress.run.pipeline`) and the ``compress.prune`` API.
Each pruning step proves itself (see :mod:`compress.pruning.base`);
this loop adds the fine-tuning, the evaluation and one row per step for the report.

Example:
    >>> rows = run_schedule_(model, example=x[:1], probe=x, pruning=spec.pruning,
    ...                      schedule=spec.schedule, finetune=spec.finetune, train=loader,
    ...                      evaluate_fn=my_eval, device=torch.device("cpu"))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.finetune.checkpoint import FinetuneCheckpoint, Snapshot
from compress.finetune.distributed import Processes
from compress.finetune.finetune import finetune_
from compress.measure.counts import count_macs_params
from compress.progress import report_phase
from compress.pruning import build_pruner
from compress.pruning.base import Pruner, StepRecord
from compress.pruning.calibrated import Calibration
from compress.pruning.masks import load_state_
from compress.pruning.params_plan import plan_pruning
from compress.recipe.pruning import PruningSpec, ScheduleSpec
from compress.recipe.stages import FinetuneSpec
from compress.schedules import plan_targets
from compress.signals import stop_requested

__all__ = ["run_schedule_", "StepCallback", "CheckpointFactory", "ResumePoint", "CALIBRATION_HINT"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, nn.Module, dict[str, Any], Pruner], None]
# (step, pruner, record of the step's pruning) -> how that step's fine-tune checkpoints itself
CheckpointFactory = Callable[[int, Pruner, StepRecord], FinetuneCheckpoint]


@dataclass
class ResumePoint:
    """Where an interrupted run stopped: after ``step``, with everything needed to go on.

    With ``finetune`` (a snapshot taken inside step ``step + 1``'s fine-tune) and ``record``
    (what that step's pruning did), the run continues that fine-tune: ``pruner_state``,
    ``pruner_tensors`` and ``model_state`` are then the snapshot's, and ``restore_rng`` is
    left to the fine-tune, which restores the snapshot's random states itself.
    """

    step: int
    pruner_state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    rows: list[dict[str, Any]]
    restore_rng: Callable[[], None]
    pruner_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    finetune: Snapshot | None = None
    record: StepRecord | None = None
    source: Path | None = None  # the checkpoint folder, for messages
    ratios: list[float] | None = None  # the interrupted run's MACs search result, if any


# What the recipe's user is told to do; the Python API names its own argument instead.
CALIBRATION_HINT = "provide them (the recipe's calibration section)"


def run_schedule_(model: nn.Module, *, example: torch.Tensor, probe: torch.Tensor,
                  pruning: PruningSpec, schedule: ScheduleSpec, finetune: FinetuneSpec,
                  train: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
                  evaluate_fn: Callable[[nn.Module], dict[str, float]],
                  device: torch.device,
                  val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                  teacher: nn.Module | None = None,
                  on_step: StepCallback | None = None,
                  resume: ResumePoint | None = None,
                  checkpoints: CheckpointFactory | None = None,
                  dist: Processes | None = None,
                  on_ratios: Callable[[list[float]], None] | None = None,
                  calibration: list[torch.Tensor] | None = None,
                  block_checkpoints: Callable[[int], Path] | None = None,
                  latency: Any = None) -> tuple[list[dict[str, Any]], Pruner]:
    """Prune ``model`` in place step by step, fine-tuning and evaluating after each step.

    Returns one row per step and the pruner (call its ``finalize_`` before export).
    ``on_step(step, model, row, pruner)`` runs after each step (checkpoints, per-step export);
    ``checkpoints`` gives each step's fine-tune its :class:`FinetuneCheckpoint`.
    With ``resume``, the finished steps are replayed (not recomputed) and the run goes on from
    the next one, or from inside its fine-tune. A SIGINT/SIGTERM that asked to stop during a
    fine-tune that finished anyway stops the run after ``on_step`` (KeyboardInterrupt).
    ``dist``: the processes of a multi-process launch, which fine-tune together.
    ``on_ratios(ratios)`` receives the per-step channel ratios (a MACs target's search result)
    to keep for a resume, which then reuses them instead of searching again.
    ``calibration``: the calibration batches, for criteria that read them (wanda, sparsegpt,
    activation) and for depth pruning, which ranks blocks on them;
    ``block_checkpoints(step)`` is the folder where such a step keeps its finished blocks, so
    that a killed step resumes from them.
    ``latency``: the planner of a latency target (see
    :func:`~compress.pruning.planning.channel_ratios`). A params target picks its width/depth
    mix on the calibration samples; the first step's row records every candidate it scored
    (``params_target``).
    """
    base_macs, base_params = count_macs_params(model, example)
    targets = plan_targets(schedule, pruning.final_target())
    searched: dict[str, Any] | None = None  # a params target's candidates
    by_params = pruning.target is not None and pruning.target.params is not None
    if (resume is not None and resume.ratios is not None and len(resume.ratios) == len(targets)
            and not by_params):  # a params target's choice is not in the ratios: redone
        ratios = list(resume.ratios)  # the search is deterministic: its result was kept
    else:
        pruning, ratios, searched = plan_pruning(model, example, pruning, targets, latency,
                                                 calibration)
        if on_ratios is not None:
            on_ratios(ratios)
    pruner = build_pruner(model, example, pruning, ratios)
    if pruner.needs_grad and train is None:
        raise InputError(f"importance {pruning.importance!r} needs gradients; provide "
                         f"training data")
    calibrated = getattr(pruner, "needs_calibration", False)  # optional in a Pruner
    if calibrated and not calibration:
        raise InputError(f"importance {pruning.importance!r} needs calibration samples; "
                         f"{CALIBRATION_HINT}")
    rows: list[dict[str, Any]] = []
    done = 0
    if resume is not None:
        try:
            pruner.restore_(resume.pruner_state, resume.pruner_tensors)
            load_state_(model, resume.model_state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"cannot resume from {str(resume.source)!r}: its saved model or "
                             f"pruner state does not fit the recipe's model "
                             f"({_first_line(err)}); pass --overwrite to start over") from None
        rows, done = list(resume.rows), resume.step
        resume.restore_rng()
        log.info("resumed after step %d of %d%s", done, len(targets),
                 "" if resume.finetune is None else
                 f", inside step {done + 1}'s fine-tune after optimizer step "
                 f"{resume.finetune.position.step}")
    for i, (target, ratio) in enumerate(zip(targets, ratios), start=1):
        if i <= done:
            continue
        snapshot = resume.finetune if resume is not None and i == done + 1 else None
        if snapshot is not None:
            assert resume is not None and resume.record is not None
            record = resume.record  # the step's pruning is in the restored pruner already
        else:
            if pruner.needs_grad:
                assert train is not None
                pruner.accumulate_gradients(
                    itertools.islice(train, pruning.calibration_batches), device)
            # Needed (wanda, sparsegpt) or wanted (depth pruning ranks blocks on them).
            if calibration and hasattr(pruner, "use_calibration"):
                pruner.use_calibration(Calibration(  # type: ignore[attr-defined]
                    calibration, block_checkpoints(i) if block_checkpoints else None))
            with report_phase(f"step {i}/{len(targets)} prune") as phase:
                record = pruner.step_(ratio, probe)
                phase.result = (f"removed {record.removed} {record.unit} in {record.groups} "
                                f"groups; max |zeroed - removed| {record.describe_proof()}")
        stats = None
        if train is not None:
            ckpt = checkpoints(i, pruner, record) if checkpoints is not None else None
            if ckpt is not None:
                ckpt.resume = snapshot
            stats = finetune_(model, train, finetune, device, step=i, val_loader=val,
                              teacher=teacher, description=f"step {i}/{len(targets)} fine-tune",
                              checkpoint=ckpt, dist=dist)
        with report_phase(f"step {i}/{len(targets)} evaluation") as phase:
            metrics = evaluate_fn(model)
            if metrics.get("accuracy") is not None:
                phase.result = f"top-1 {metrics['accuracy']:.2f} %"
        macs, params = count_macs_params(model, example)
        row = _row(i, target, ratio, record, stats, metrics, macs, params, base_macs, base_params)
        if i == 1 and searched is not None:
            row["params_target"] = searched
        rows.append(row)
        log.info("step %d/%d: target %.3f, MACs -%.1f%%, accuracy %s", i, len(targets), target,
                 100 * row["macs_reduction"],
                 "n/a" if metrics.get("accuracy") is None else f"{metrics['accuracy']:.2f}%")
        if on_step is not None:
            on_step(i, model, row, pruner)
        if stop_requested():
            raise KeyboardInterrupt(f"signal {stop_requested()} (stopped after step {i})")
    return rows, pruner


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _row(step: int, target: float, ratio: float, record: StepRecord, stats: Any,
         metrics: dict[str, float], macs: int, params: int, base_macs: int,
         base_params: int) -> dict[str, Any]:
    return {
        "step": step, "target": target, "ratio": ratio,
        "macs": macs, "params": params,
        "macs_reduction": 1 - macs / base_macs, "params_reduction": 1 - params / base_params,
        "accuracy": metrics.get("accuracy"), "loss": metrics.get("loss"),
        **({"perplexity": metrics["perplexity"]} if "perplexity" in metrics else {}),
        "finetune_epochs": stats.epochs if stats else 0.0,
        "finetune_steps": stats.steps if stats else 0,
        "finetune_s": stats.seconds if stats else 0.0,
        "stopped_early": getattr(stats, "stopped_early", False),
        "divergences": getattr(stats, "divergences", 0),
        "lr_final": getattr(stats, "lr_final", None),
        "val_history": list(getattr(stats, "evaluations", []) or []),
        "groups": record.groups, "removed": record.removed, "removed_unit": record.unit,
        "max_abs_diff": record.max_abs_diff, "proof": record.proof, "layers": record.layers,
        "proof_tolerance": record.tolerance, "proof_passes": record.passes,
        **({"protected": record.protected} if record.protected else {}),
        **({"note": record.note} if record.note else {}),
    }

"""The schedule loop: (prune step -> fine-tune -> evaluate)* on a model, in place.

Shared by ``compress apply`` (through :mod:`compress.pipeline`) and the ``compress.prune`` API.
Each pruning step proves itself (see :mod:`compress.pruning` / :mod:`compress.sparsity`);
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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.finetune import finetune_
from compress.pruners import Pruner, StepRecord, build_pruner
from compress.pruning import IMPORTANCE, count_macs_params, solve_ratios_for_macs
from compress.recipe import FinetuneSpec, PruningSpec, ScheduleSpec
from compress.schedules import plan_targets

__all__ = ["run_schedule_", "StepCallback", "ResumePoint"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, nn.Module, dict[str, Any], Pruner], None]


@dataclass
class ResumePoint:
    """Where an interrupted run stopped: after ``step``, with everything needed to go on."""

    step: int
    pruner_state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    rows: list[dict[str, Any]]
    restore_rng: Callable[[], None]


def _channel_ratios(model: nn.Module, example: torch.Tensor, pruning: PruningSpec,
                    targets: list[float]) -> list[float]:
    """Per-step ratios for the pruner: MACs targets are turned into channel ratios by search."""
    if pruning.target is None:
        return list(targets)
    return solve_ratios_for_macs(model, example, pruning, targets)


def run_schedule_(model: nn.Module, *, example: torch.Tensor, probe: torch.Tensor,
                  pruning: PruningSpec, schedule: ScheduleSpec, finetune: FinetuneSpec,
                  train: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
                  evaluate_fn: Callable[[nn.Module], dict[str, float]],
                  device: torch.device,
                  val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                  teacher: nn.Module | None = None,
                  on_step: StepCallback | None = None,
                  resume: ResumePoint | None = None) -> tuple[list[dict[str, Any]], Pruner]:
    """Prune ``model`` in place step by step, fine-tuning and evaluating after each step.

    Returns one row per step and the pruner (call its ``finalize_`` before export).
    ``on_step(step, model, row, pruner)`` runs after each step (checkpoints, per-step export).
    With ``resume``, the finished steps are replayed (not recomputed) and the run goes on from
    the next one.
    """
    base_macs, base_params = count_macs_params(model, example)
    if pruning.kind == "structured" and IMPORTANCE.get(pruning.importance).needs_grad \
            and train is None:
        raise InputError(f"importance {pruning.importance!r} needs gradients; provide "
                         f"training data")
    targets = plan_targets(schedule, pruning.final_target())
    ratios = _channel_ratios(model, example, pruning, targets)
    pruner = build_pruner(model, example, pruning, ratios)
    needs_grad = pruning.kind == "structured" and IMPORTANCE.get(pruning.importance).needs_grad
    rows: list[dict[str, Any]] = []
    done = 0
    if resume is not None:
        if not hasattr(pruner, "restore_"):
            raise InputError(f"resuming is supported for structured pruning only, not "
                             f"{pruning.kind!r}; start over with --overwrite")
        pruner.restore_(resume.pruner_state)
        model.load_state_dict(resume.model_state, strict=True)
        rows, done = list(resume.rows), resume.step
        resume.restore_rng()
        log.info("resumed after step %d of %d", done, len(targets))
    for i, (target, ratio) in enumerate(zip(targets, ratios), start=1):
        if i <= done:
            continue
        if needs_grad:
            assert train is not None
            pruner.accumulate_gradients(itertools.islice(train, pruning.calibration_batches),
                                        device)
        record = pruner.step_(ratio, probe)
        stats = None
        if train is not None:
            stats = finetune_(model, train, finetune, device, step=i, val_loader=val,
                              teacher=teacher, description=f"step {i}/{len(targets)} fine-tune")
        metrics = evaluate_fn(model)
        macs, params = count_macs_params(model, example)
        row = _row(i, target, ratio, record, stats, metrics, macs, params, base_macs, base_params)
        rows.append(row)
        log.info("step %d/%d: target %.3f, MACs -%.1f%%, accuracy %s", i, len(targets), target,
                 100 * row["macs_reduction"],
                 "n/a" if metrics.get("accuracy") is None else f"{metrics['accuracy']:.2f}%")
        if on_step is not None:
            on_step(i, model, row, pruner)
    return rows, pruner


def _row(step: int, target: float, ratio: float, record: StepRecord, stats: Any,
         metrics: dict[str, float], macs: int, params: int, base_macs: int,
         base_params: int) -> dict[str, Any]:
    return {
        "step": step, "target": target, "ratio": ratio,
        "macs": macs, "params": params,
        "macs_reduction": 1 - macs / base_macs, "params_reduction": 1 - params / base_params,
        "accuracy": metrics.get("accuracy"), "loss": metrics.get("loss"),
        "finetune_epochs": stats.epochs if stats else 0.0,
        "finetune_steps": stats.steps if stats else 0,
        "finetune_s": stats.seconds if stats else 0.0,
        "stopped_early": getattr(stats, "stopped_early", False),
        "divergences": getattr(stats, "divergences", 0),
        "lr_final": getattr(stats, "lr_final", None),
        "val_history": list(getattr(stats, "evaluations", []) or []),
        "groups": record.groups, "removed": record.removed, "removed_unit": record.unit,
        "max_abs_diff": record.max_abs_diff, "layers": record.layers,
    }

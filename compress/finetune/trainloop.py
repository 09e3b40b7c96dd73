"""The fine-tune's training loop: optimizer steps over passes of the data, a divergence's
rollback and single restart, snapshots and stops between batches.

:func:`compress.finetune.finetune.finetune_` sets a fine-tune up (budget, patience monitor, rollback
weights, loss) as a :class:`Fit` and calls :func:`fit`; this module only trains. Its state is
a :class:`~compress.finetune.checkpoint.Position` plus the optimizer, schedule and random
states, which is what a :class:`~compress.finetune.checkpoint.FinetuneCheckpoint` saves and
continues.

Example:
    >>> pos = fit(Fit(model, loader, spec, device, total=100, loss_of=ce, monitor=None,
    ...               initial=None, pruning_step=1, description="fine-tune",
    ...               checkpoint=None, started=time.perf_counter()), None)  # doctest: +SKIP
    >>> pos.step, pos.passes  # doctest: +SKIP
    (100, 3)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import CheckFailed
from compress.finetune.checkpoint import FinetuneCheckpoint, Position, Snapshot
from compress.finetune.divergence import Divergence, diverged_twice, loss_divergence, weights_finite
from compress.finetune.gpu import autocast, grad_scaler
from compress.finetune.patience import BestWeights, Monitor
from compress.progress import report_progress
from compress.recipe.stages import FinetuneSpec

__all__ = ["Fit", "fit", "build_optimizer"]

log = logging.getLogger("compress.finetune.finetune")  # one logger for the whole fine-tune


def build_optimizer(model: nn.Module, spec: FinetuneSpec, *,
                    lr: float | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW; no weight decay on biases and norm parameters.

    ``lr`` replaces ``spec.lr`` (the lowered rate after a divergence).
    """
    lr = spec.lr if lr is None else lr
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum,
                               nesterov=spec.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


@dataclass
class Fit:
    """What stays fixed during one fine-tune (every attempt of it)."""

    model: nn.Module
    loader: DataLoader
    spec: FinetuneSpec
    device: torch.device
    total: int  # optimizer steps in the budget
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    monitor: Monitor | None
    initial: BestWeights | None
    pruning_step: int
    description: str
    checkpoint: FinetuneCheckpoint | None
    started: float  # perf_counter at the start, less the time before a resume


def fit(plan: Fit, snapshot: Snapshot | None) -> Position:
    """Train, restarting once after a divergence; continue ``snapshot`` when given."""
    pos = snapshot.position if snapshot is not None else Position(lr=plan.spec.lr)
    report_progress(plan.description, pos.step, plan.total)
    deferring = plan.checkpoint.deferring() if plan.checkpoint is not None \
        else contextlib.nullcontext()
    try:
        with deferring:  # a signal stops after the current batch, once a snapshot is saved
            while True:
                diverged = _train(plan, pos, snapshot)
                snapshot = None
                if diverged is None or not _roll_back(plan, pos, diverged):
                    return pos
    finally:
        # Also after an error: a listener's bar for this task must end.
        report_progress(plan.description, pos.step, plan.total, done=True)


def _roll_back(plan: Fit, pos: Position, diverged: Divergence) -> bool:
    """Undo a divergence (a second one raises); True when budget is left for a restart."""
    monitor = plan.monitor
    if monitor is not None and monitor.best.state is not None:
        monitor.best.load_into(plan.model)
        where = f"evaluation {monitor.rule.best_index}'s weights"
    else:
        assert plan.initial is not None
        plan.initial.load_into(plan.model)
        where = "the weights the fine-tune started from"
    if pos.divergence is not None:
        raise CheckFailed(diverged_twice(plan.pruning_step, Divergence(*pos.divergence),
                                         diverged, pos.lr))
    pos.divergence = [diverged.reason, diverged.step]
    pos.lr *= plan.spec.divergence_lr_factor
    log.warning("%s: %s at optimizer step %d; rolled back to %s, restarting the remaining %d "
                "steps at learning rate %g", plan.description, diverged.reason, diverged.step,
                where, plan.total - pos.step, pos.lr)
    if monitor is not None:
        monitor.rule.stale = 0  # the restart gets its full patience
    pos.start, pos.batch = pos.step, 0  # a fresh optimizer, schedule and pass
    return pos.step < plan.total


def _train(plan: Fit, pos: Position,
           snapshot: Snapshot | None) -> Divergence | None:
    """One attempt from optimizer step ``pos.start`` (or ``snapshot``'s) to ``plan.total``, with
    a fresh optimizer and schedule; advances ``pos``; returns the divergence or None."""
    model, spec, monitor, total, ckpt = plan.model, plan.spec, plan.monitor, plan.total, plan.checkpoint
    optimizer = build_optimizer(model, spec, lr=pos.lr)
    scaler = grad_scaler(plan.device, spec)  # fp16 only; otherwise it passes calls through
    span = total - pos.start  # a restart's schedule spans what is left of the budget
    if spec.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, span) / span)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if snapshot is not None:
        optimizer.load_state_dict(snapshot.optimizer["optimizer"])
        sched.load_state_dict(snapshot.optimizer["scheduler"])

    def save() -> None:
        assert ckpt is not None
        pos.seconds = time.perf_counter() - plan.started
        ckpt.save(pos, model, optimizer, sched, plan.loader, monitor, plan.initial)

    model.train()
    stop = False
    while pos.step < total and not stop:
        batches = ckpt.open_pass(plan.loader, snapshot) if ckpt is not None else iter(plan.loader)
        snapshot = None
        for x, y in batches:
            x, y = x.to(plan.device, non_blocking=True), y.to(plan.device, non_blocking=True)
            with autocast(plan.device, spec):
                loss = plan.loss_of(x, y)
            reason = loss_divergence(loss)  # before backward: a NaN step is never applied
            if reason is not None:
                return Divergence(reason, pos.step - pos.start + 1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if spec.grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            sched.step()
            pos.step, pos.batch = pos.step + 1, pos.batch + 1
            pos.samples += y.numel()
            if monitor is not None and monitor.due(pos.step):
                stop = monitor.evaluate(model)
                reason = monitor.collapse()
                if reason is not None:
                    return Divergence(reason, pos.step - pos.start)
            # Every step, so an ETA and a CI log line are never stale; the loss (a device
            # sync on a GPU) every 20 steps and at the end.
            if pos.step % 20 == 0 or pos.step == total or stop:
                pos.last_loss = loss.item()
                report_progress(plan.description, pos.step, total, f"loss {pos.last_loss:.3f}")
            else:
                report_progress(plan.description, pos.step, total)
            if pos.step >= total or stop:
                break
            if ckpt is not None and ckpt.stop_requested():
                save()
                log.warning("%s: stopped by signal %d after optimizer step %d", plan.description,
                            ckpt.stop_requested(), pos.step)
                raise KeyboardInterrupt(f"signal {ckpt.stop_requested()}")
        else:
            pos.passes, pos.batch = pos.passes + 1, 0
            if ckpt is not None and ckpt.due(pos.passes):
                save()
    # A finite loss can still give non-finite gradients; after the last step no loss would
    # show it. With patience the final evaluation does (and the best weights come back).
    if monitor is None and pos.step > pos.start and not weights_finite(model):
        return Divergence("the weights became non-finite", pos.step - pos.start)
    return None

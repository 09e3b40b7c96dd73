"""Fine-tuning after a pruning step: a plain, readable training loop.

A fresh optimizer and LR schedule every call (the model's shapes changed since the last one).
bf16 autocast on CUDA when ``amp`` allows. Progress goes to
:func:`compress.progress.report_progress` (the CLI draws a bar on a terminal; the library
draws nothing).

Two budgets. Without ``finetune.patience`` a fixed one: ``epochs``, capped by ``max_steps``.
With it, up to ``max_epochs`` (and ``max_steps``), evaluating the validation data every
``eval_every`` optimizer steps (default: each epoch) and stopping once ``patience`` evaluations
in a row did not improve the monitored metric; the weights of the best evaluation are then put
back. Evaluation 0 is the model as it came in (just pruned), so a fine-tune that only hurts
restores the pruned weights. ``lr_schedule: cosine`` spans the whole max budget in both modes,
so a patience run that stops early ends at a still-high learning rate (``constant`` avoids that).

With ``finetune.distill`` the loss mixes cross-entropy with the KL divergence to a frozen
teacher (the unpruned model): see :func:`distillation_loss`.

Divergence (see :mod:`compress.divergence`): a non-finite training loss (checked every step),
non-finite weights at the end of a fixed budget, or with patience a validation metric that
collapses against evaluation 0. The first one rolls the model back to the step's best weights
so far (evaluation 0, or the weights as they came in), multiplies the learning rate by
``divergence_lr_factor`` and restarts with a fresh optimizer and schedule for the remaining
budget; a second one raises :class:`~compress.errors.CheckFailed`.

Example:
    >>> from compress.recipe import FinetuneSpec
    >>> stats = finetune_(model, bundle.train, FinetuneSpec(epochs=1), device)  # doctest: +SKIP
    >>> spec = FinetuneSpec(patience=[20, 5], max_epochs=30)
    >>> stats = finetune_(model, bundle.train, spec, device, step=2,
    ...                   val_loader=bundle.val, teacher=baseline)  # doctest: +SKIP
    >>> stats.best_evaluation, stats.stopped_early, stats.restored  # doctest: +SKIP
    (4, True, True)
    >>> stats.divergences, stats.lr_final  # doctest: +SKIP
    (0, 0.01)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from compress.divergence import Divergence, diverged_twice, loss_divergence, weights_finite
from compress.errors import CheckFailed, InputError
from compress.evaluate import evaluate
from compress.patience import BestWeights, Monitor, ValidateFn
from compress.progress import report_progress
from compress.recipe import FinetuneSpec

__all__ = ["FinetuneStats", "ValidateFn", "finetune_", "build_optimizer", "distillation_loss"]

log = logging.getLogger(__name__)

@dataclass
class FinetuneStats:
    """What one fine-tune did. The patience fields keep their defaults in fixed-budget mode.

    ``epochs``, ``steps`` and ``samples`` count every optimizer step taken, including those a
    divergence rolled back (the budget they used is gone).
    """

    epochs: float  # fractional epochs actually trained
    steps: int
    samples: int
    seconds: float  # wall time, validation included
    final_loss: float | None  # training loss of the last optimizer step
    lr_final: float  # peak learning rate of the last attempt: finetune.lr, or lowered once
    evaluations: list[float] = field(default_factory=list)  # monitored metric, [0] = untrained
    best: float | None = None
    best_evaluation: int | None = None  # index into evaluations
    stopped_early: bool = False  # patience ran out before the max budget did
    restored: bool = False  # the best evaluation's weights were loaded back
    divergences: int = 0  # rollbacks to a lower learning rate (0 or 1; a second one raises)


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


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *,
                      alpha: float, temperature: float,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - alpha) * CE(student, target) + alpha * T^2 * KL(p_teacher || p_student)``.

    Both distributions are softmaxes at temperature ``T``; the KL is summed over classes and
    averaged over the batch. ``T^2`` keeps the soft term's gradients on the scale of the hard
    term's as ``T`` grows (Hinton et al., 2015).

    Example:
        >>> s = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
        >>> float(distillation_loss(s, s, y, alpha=1.0, temperature=4.0))  # same logits: no KL
        0.0
    """
    ce = F.cross_entropy(student, target, label_smoothing=label_smoothing)
    t = temperature
    # float32: a KL of two nearly equal bf16 distributions is mostly rounding error.
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=1),
                  F.log_softmax(teacher.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def _autocast(device: torch.device, spec: FinetuneSpec) -> torch.autocast:
    enabled = device.type == "cuda" and spec.amp in ("auto", "bf16")
    if spec.amp == "bf16" and device.type != "cuda":
        raise InputError("finetune.amp: bf16 needs a CUDA device; use auto or off on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def finetune_(model: nn.Module, loader: DataLoader, spec: FinetuneSpec, device: torch.device,
              *, step: int = 1, val_loader: DataLoader | None = None,
              teacher: nn.Module | None = None, validate_fn: ValidateFn | None = None,
              description: str = "fine-tune") -> FinetuneStats:
    """Train ``model`` in place after pruning step ``step`` (1-based; picks the patience).

    Fixed budget without ``spec.patience``; otherwise early stopping on ``val_loader`` (or on
    ``validate_fn(model)``, which replaces the default ``evaluate(model, val_loader, device)``),
    ending with the best evaluation's weights. ``teacher`` is used only with ``spec.distill``;
    it is put in eval mode for the call and never updated. Raises :class:`CheckFailed` when
    the fine-tune diverges twice (the model is rolled back first).
    """
    assert step >= 1, "pruning steps are 1-based"
    patience = spec.patience_for(step)
    if spec.distill is not None and teacher is None:
        raise InputError("finetune.distill needs a teacher model (the unpruned model); pass "
                         "teacher= or remove finetune.distill")
    if patience is not None and val_loader is None and validate_fn is None:
        raise InputError("finetune.patience monitors validation data: set data.val_subset "
                         "(samples held out of the training split)")
    budget_epochs = spec.epochs if patience is None else spec.max_epochs
    if budget_epochs == 0 or spec.max_steps == 0:
        return FinetuneStats(0.0, 0, 0, 0.0, None, spec.lr)
    steps_per_epoch = len(loader) if isinstance(loader, Sized) else None
    assert steps_per_epoch, "training loader is empty"
    total = steps_per_epoch * budget_epochs
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)

    distill = spec.distill if teacher is not None else None
    assert teacher is not model, "the teacher must be a separate (unpruned) model"
    ce = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        if distill is None:
            return ce(logits, y)
        assert teacher is not None
        with torch.no_grad():
            soft = teacher(x)
        return distillation_loss(logits, soft, y, alpha=distill.alpha,
                                 temperature=distill.temperature,
                                 label_smoothing=spec.label_smoothing)

    start = time.perf_counter()  # seconds include the validation passes
    monitor = None
    if patience is not None:
        if validate_fn is None:
            assert val_loader is not None
            validate_fn = lambda m: evaluate(m, val_loader, device)  # noqa: E731
        monitor = Monitor(spec, patience, validate_fn, spec.eval_every or steps_per_epoch,
                          total)
        monitor.evaluate(model)  # evaluation 0: the model as pruned
    # What a divergence rolls back to while no evaluation is kept: the weights as they came in
    # (the monitor keeps evaluation 0's copy when it is a number; no second copy then).
    initial = None
    if monitor is None or monitor.best.state is None:
        initial = BestWeights()
        initial.save(model)

    # The teacher's BatchNorm statistics must not follow the student's batches.
    teacher_mode = None
    if distill is not None and teacher is not None:
        teacher_mode = teacher.training
        teacher.eval()
    try:
        steps, samples, last_loss, divergences, lr = _fit(
            model, loader, spec, device, total, loss_of, monitor, initial, step, description)
    finally:
        if teacher is not None and teacher_mode is not None:
            teacher.train(teacher_mode)
    seconds = time.perf_counter() - start
    stats = FinetuneStats(steps / steps_per_epoch, steps, samples, seconds, last_loss, lr,
                          divergences=divergences)
    log.info("%s: %d steps, %d samples, %.1fs, last loss %s", description, steps, samples,
             seconds, f"{last_loss:.4f}" if last_loss is not None else "n/a")
    if monitor is not None:
        monitor.finish(model, stats, stopped_early=steps < total, description=description)
    model.eval()
    return stats


def _fit(model: nn.Module, loader: DataLoader, spec: FinetuneSpec, device: torch.device,
         total: int, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
         monitor: Monitor | None, initial: BestWeights | None, pruning_step: int,
         description: str) -> tuple[int, int, float | None, int, float]:
    """Train, restarting once after a divergence: (steps, samples, last loss, divergences, lr)."""
    lr, step, samples, last_loss = spec.lr, 0, 0, None
    first: Divergence | None = None
    report_progress(description, 0, total)
    try:
        while True:
            step, done, loss, diverged = _train(model, loader, spec, device, lr, step, total,
                                                loss_of, monitor, description)
            samples += done
            last_loss = loss if loss is not None else last_loss
            if diverged is None:
                return step, samples, last_loss, int(first is not None), lr
            if monitor is not None and monitor.best.state is not None:
                monitor.best.load_into(model)
                where = f"evaluation {monitor.rule.best_index}'s weights"
            else:
                assert initial is not None
                initial.load_into(model)
                where = "the weights the fine-tune started from"
            if first is not None:
                raise CheckFailed(diverged_twice(pruning_step, first, diverged, lr))
            first, lr = diverged, lr * spec.divergence_lr_factor
            log.warning("%s: %s at optimizer step %d; rolled back to %s, restarting the "
                        "remaining %d steps at learning rate %g", description, diverged.reason,
                        diverged.step, where, total - step, lr)
            if monitor is not None:
                monitor.rule.stale = 0  # the restart gets its full patience
            if step >= total:
                return step, samples, last_loss, 1, lr
    finally:
        # Also after an error: a listener's bar for this task must end.
        report_progress(description, step, total, done=True)


def _train(model: nn.Module, loader: DataLoader, spec: FinetuneSpec, device: torch.device,
           lr: float, start: int, total: int,
           loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           monitor: Monitor | None, description: str
           ) -> tuple[int, int, float | None, Divergence | None]:
    """One attempt from optimizer step ``start`` to ``total``, with a fresh optimizer and
    schedule: (step reached, samples, last loss, divergence or None)."""
    optimizer = build_optimizer(model, spec, lr=lr)
    span = total - start  # a restart's schedule spans what is left of the budget
    if spec.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, span) / span)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model.train()
    step, samples, last_loss, stop = start, 0, None, False
    while step < total and not stop:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, spec):
                loss = loss_of(x, y)
            reason = loss_divergence(loss)  # before backward: a NaN step is never applied
            if reason is not None:
                return step, samples, last_loss, Divergence(reason, step - start + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            sched.step()
            step += 1
            samples += y.numel()
            if monitor is not None and monitor.due(step):
                stop = monitor.evaluate(model)
                reason = monitor.collapse()
                if reason is not None:
                    return step, samples, last_loss, Divergence(reason, step - start)
            if step % 20 == 0 or step == total or stop:
                last_loss = loss.item()
                report_progress(description, step, total, f"loss {last_loss:.3f}")
            if step >= total or stop:
                break
    # A finite loss can still give non-finite gradients; after the last step no loss would
    # show it. With patience the final evaluation does (and the best weights come back).
    if monitor is None and step > start and not weights_finite(model):
        return step, samples, last_loss, Divergence("the weights became non-finite",
                                                    step - start)
    return step, samples, last_loss, None


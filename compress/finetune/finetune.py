"""Fine-tuning after a pruning step: budget, patience, distillation, around a plain training
loop (:mod:`compress.finetune.trainloop`).

A fresh optimizer and LR schedule every call (the model's shapes changed since the last one).
bf16 autocast on CUDA when ``amp`` allows; a rich progress bar only on a terminal.

Two budgets. Without ``finetune.patience`` a fixed one: ``epochs``, capped by ``max_steps``.
With it, up to ``max_epochs`` (and ``max_steps``), evaluating the validation data every
``eval_every`` optimizer steps (default: each epoch) and stopping once ``patience`` evaluations
in a row did not improve the monitored metric; the weights of the best evaluation are then put
back. Evaluation 0 is the model as it came in (just pruned), so a fine-tune that only hurts
restores the pruned weights. ``lr_schedule: cosine`` spans the whole max budget in both modes,
so a patience run that stops early ends at a still-high learning rate (``constant`` avoids that).

With ``finetune.distill`` the loss mixes cross-entropy with the KL divergence to a frozen
teacher (the unpruned model): see :func:`distillation_loss`.

Divergence (:mod:`compress.finetune.divergence`): a non-finite training loss (checked every step),
non-finite weights at the end of a fixed budget, or with patience a validation metric that
collapses against evaluation 0. The first one rolls the model back to the step's best weights
so far (evaluation 0, or the weights as they came in), multiplies the learning rate by
``divergence_lr_factor`` and restarts with a fresh optimizer and schedule for the remaining
budget; a second one raises :class:`~compress.errors.CheckFailed`.

Checkpoints (:mod:`compress.finetune.checkpoint`): given a ``checkpoint``, the fine-tune saves its
exact position every ``checkpoint_every`` passes over the data and when a signal stops it, and
continues a saved position to the result an uninterrupted fine-tune would have had.

Example:
    >>> from compress.recipe.stages import FinetuneSpec
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
import time
from collections.abc import Sized

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import InputError
from compress.finetune.checkpoint import FinetuneCheckpoint
from compress.finetune.distributed import Processes
from compress.finetune.gpu import channels_last_, compiled
from compress.finetune.patience import BestWeights, Monitor, ValidateFn
from compress.finetune.stats import FinetuneStats
from compress.finetune.trainloop import Fit, fit
from compress.measure.evaluate import IGNORE_INDEX, evaluate, task_loss
from compress.recipe.stages import FinetuneSpec

__all__ = ["finetune_", "distillation_loss", "steps_for_tokens"]

log = logging.getLogger(__name__)

def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *,
                      alpha: float, temperature: float,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - alpha) * CE(student, target) + alpha * T^2 * KL(p_teacher || p_student)``.

    Both distributions are softmaxes at temperature ``T``; the KL is summed over classes and
    averaged over what the cross-entropy averages over: the samples of a classifier, the scored
    next-token positions of a language model (``(batch, length, vocab)`` logits: position t
    predicts token t + 1, targets of -100 are padding and not scored), so both terms keep their
    scale whatever the sequence length. ``T^2`` keeps the soft term's gradients on the scale of
    the hard term's as ``T`` grows (Hinton et al., 2015).

    Example:
        >>> s = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
        >>> float(distillation_loss(s, s, y, alpha=1.0, temperature=4.0))  # same logits: no KL
        0.0
    """
    ce = task_loss(student, target, label_smoothing=label_smoothing)
    if student.dim() == 3:
        scored = (target[:, 1:] != IGNORE_INDEX).flatten()
        student = student[:, :-1].flatten(0, 1)[scored]
        teacher = teacher[:, :-1].flatten(0, 1)[scored]
    t = temperature
    # float32: a KL of two nearly equal bf16 distributions is mostly rounding error.
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=-1),
                  F.log_softmax(teacher.float() / t, dim=-1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def steps_for_tokens(loader: DataLoader, tokens: int, processes: int = 1) -> int:
    """Optimizer steps that train on at least ``tokens`` tokens: ``loader``'s sequences are
    blocks of one length (text_lm), a step takes a batch of them in each of ``processes``.

    Example:
        >>> blocks = torch.zeros(10, 8, dtype=torch.long)  # ten blocks of 8 tokens
        >>> loader = DataLoader(list(zip(blocks, blocks)), batch_size=4)
        >>> steps_for_tokens(loader, 64), steps_for_tokens(loader, 65, processes=2)
        (2, 2)
    """
    target = loader.dataset[0][1]  # type: ignore[index]
    if not isinstance(target, torch.Tensor) or target.dim() != 1:
        raise InputError("finetune.max_tokens counts the tokens of a language model's training "
                         "blocks; this data has one target per sample: use finetune.max_steps")
    assert loader.batch_size, "a token budget needs batches of a fixed size"
    per_step = loader.batch_size * target.numel() * processes
    return -(-tokens // per_step)  # ceil: tokens > 0, so at least one step


def finetune_(model: nn.Module, loader: DataLoader, spec: FinetuneSpec, device: torch.device,
              *, step: int = 1, val_loader: DataLoader | None = None,
              teacher: nn.Module | None = None, validate_fn: ValidateFn | None = None,
              description: str = "fine-tune",
              checkpoint: FinetuneCheckpoint | None = None,
              dist: Processes | None = None) -> FinetuneStats:
    """Train ``model`` in place after pruning step ``step`` (1-based; picks the patience).

    Fixed budget without ``spec.patience``; otherwise early stopping on ``val_loader`` (or on
    ``validate_fn(model)``, which replaces the default ``evaluate(model, val_loader, device)``),
    ending with the best evaluation's weights. ``teacher`` is used only with ``spec.distill``;
    it is put in eval mode for the call and never updated. Raises :class:`CheckFailed` when
    the fine-tune diverges twice (the model is rolled back first).

    With ``checkpoint`` the fine-tune saves snapshots as it goes, continues
    ``checkpoint.resume`` when set (the model must hold that snapshot's weights), and a
    SIGINT/SIGTERM (see :func:`compress.signals.stop_on_signals`) stops it after the current
    batch with a snapshot saved, raising :class:`KeyboardInterrupt`. ``dist``: the processes
    of a multi-process launch (default: this one process).
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
    dist = dist or Processes()
    restore_layout = channels_last_(model, device, spec)  # before DDP wraps the parameters
    # ``net`` is what the training forward runs through: the model, data-parallel under a
    # launcher (sharded ``loader``), compiled with finetune.compile. It shares the parameters.
    tokens_loader = loader  # the process's own batches, before a launcher shards them
    net, loader = dist.prepare(model, loader)
    net = compiled(net, spec)
    steps_per_epoch = len(loader) if isinstance(loader, Sized) else None
    assert steps_per_epoch, "training loader is empty"
    total = steps_per_epoch * budget_epochs
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)
    if spec.max_tokens is not None:
        total = min(total, steps_for_tokens(tokens_loader, spec.max_tokens, dist.world_size))

    distill = spec.distill if teacher is not None else None
    assert teacher is not model, "the teacher must be a separate (unpruned) model"

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = net(x)
        if distill is None:
            return dist.agree_loss(task_loss(logits, y, label_smoothing=spec.label_smoothing))
        assert teacher is not None
        with torch.no_grad():
            soft = teacher(x)
        return dist.agree_loss(distillation_loss(logits, soft, y, alpha=distill.alpha,
                                                 temperature=distill.temperature,
                                                 label_smoothing=spec.label_smoothing))

    snapshot = checkpoint.resume if checkpoint is not None else None
    # seconds include the validation passes, and the time before an interruption
    start = time.perf_counter() - (snapshot.position.seconds if snapshot else 0.0)
    monitor = None
    if patience is not None:
        if validate_fn is None:
            assert val_loader is not None
            validate_fn = lambda m: evaluate(m, val_loader, device)  # noqa: E731
        validate_fn = dist.agreed(validate_fn)  # one decision for all processes
        monitor = Monitor(spec, patience, validate_fn, spec.eval_every or steps_per_epoch,
                          total)
        if snapshot is None:
            monitor.evaluate(model)  # evaluation 0: the model as pruned
        else:
            assert snapshot.monitor is not None, "the snapshot is not of a patience fine-tune"
            monitor.restore(snapshot.monitor, snapshot.best)
    # What a divergence rolls back to while no evaluation is kept: the weights as they came in
    # (the monitor keeps evaluation 0's copy when it is a number; no second copy then).
    initial = None
    if snapshot is not None and snapshot.initial is not None:
        initial = BestWeights()
        initial.state = snapshot.initial
    elif snapshot is None and (monitor is None or monitor.best.state is None):
        initial = BestWeights()
        initial.save(model)

    # The teacher's BatchNorm statistics must not follow the student's batches.
    teacher_mode = None
    if distill is not None and teacher is not None:
        teacher_mode = teacher.training
        teacher.eval()
    plan = Fit(model, loader, spec, device, total, loss_of, monitor, initial, step,
               description, checkpoint, start)
    try:
        pos = fit(plan, snapshot)
    finally:
        if teacher is not None and teacher_mode is not None:
            teacher.train(teacher_mode)
        restore_layout()
    seconds = time.perf_counter() - start
    stats = FinetuneStats(pos.step / steps_per_epoch, pos.step, pos.samples, seconds,
                          pos.last_loss, pos.lr, divergences=int(pos.divergence is not None))
    log.info("%s: %d steps, %d samples, %.1fs, last loss %s", description, pos.step,
             pos.samples, seconds, f"{pos.last_loss:.4f}" if pos.last_loss is not None else "n/a")
    if monitor is not None:
        monitor.finish(model, stats, stopped_early=pos.step < total, description=description)
    dist.sync_(model)
    model.eval()
    return stats

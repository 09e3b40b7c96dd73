"""Fine-tuning after a pruning step: a plain, readable training loop.

A fresh optimizer and LR schedule every call (the model's shapes changed since the last one).
bf16 autocast on CUDA when ``amp`` allows; a rich progress bar only on a terminal.

Example:
    >>> from compress.recipe import FinetuneSpec
    >>> stats = finetune_(model, bundle.train, FinetuneSpec(epochs=1), device)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sized
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import InputError
from compress.recipe import FinetuneSpec

__all__ = ["FinetuneStats", "finetune_", "build_optimizer"]

log = logging.getLogger(__name__)


@dataclass
class FinetuneStats:
    epochs: float
    steps: int
    samples: int
    seconds: float
    final_loss: float | None


def build_optimizer(model: nn.Module, spec: FinetuneSpec) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW; no weight decay on biases and norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                               nesterov=spec.momentum > 0)
    return torch.optim.AdamW(groups, lr=spec.lr)


def _autocast(device: torch.device, spec: FinetuneSpec) -> torch.autocast:
    enabled = device.type == "cuda" and spec.amp in ("auto", "bf16")
    if spec.amp == "bf16" and device.type != "cuda":
        raise InputError("finetune.amp: bf16 needs a CUDA device; use auto or off on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def finetune_(model: nn.Module, loader: DataLoader, spec: FinetuneSpec,
              device: torch.device, *, description: str = "fine-tune") -> FinetuneStats:
    """Train ``model`` in place for ``spec.epochs`` (capped by ``spec.max_steps``)."""
    if spec.epochs == 0 or spec.max_steps == 0:
        return FinetuneStats(0.0, 0, 0, 0.0, None)
    steps_per_epoch = len(loader) if isinstance(loader, Sized) else None
    assert steps_per_epoch, "training loader is empty"
    total = steps_per_epoch * spec.epochs
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)
    optimizer = build_optimizer(model, spec)
    if spec.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    model.train()
    step, samples, last_loss = 0, 0, None
    start = time.perf_counter()
    progress = _progress(total, description)
    try:
        while step < total:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device, spec):
                    loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if spec.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                optimizer.step()
                sched.step()
                step += 1
                samples += y.numel()
                if step % 20 == 0 or step == total:
                    last_loss = loss.item()
                    if progress is not None:
                        progress[0].update(progress[1], completed=step,
                                           description=f"{description} loss {last_loss:.3f}")
                if step >= total:
                    break
    finally:
        if progress is not None:
            progress[0].stop()
    seconds = time.perf_counter() - start
    log.info("%s: %d steps, %d samples, %.1fs, last loss %s", description, step, samples,
             seconds, f"{last_loss:.4f}" if last_loss is not None else "n/a")
    model.eval()
    return FinetuneStats(step / steps_per_epoch, step, samples, seconds, last_loss)


def _progress(total: int, description: str):  # type: ignore[no-untyped-def]
    """A rich progress bar on stderr when it is a terminal, else None (logs only)."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    task = progress.add_task(description, total=total)
    progress.start()
    return progress, task

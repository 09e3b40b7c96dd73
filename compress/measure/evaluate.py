"""Evaluation: top-1 accuracy and mean loss on a DataLoader; perplexity for language models.

Logits of shape ``(batch, classes)`` are classification; ``(batch, length, vocab)`` with
targets ``(batch, length)`` is language modelling, scored on next-token prediction (targets
of -100 are ignored).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = DataLoader(TensorDataset(torch.eye(4), torch.arange(4)), batch_size=2)
    >>> evaluate(torch.nn.Identity(), data, torch.device("cpu"))["accuracy"]
    100.0
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.progress import report_phase

__all__ = ["evaluate", "task_loss", "IGNORE_INDEX"]

IGNORE_INDEX = -100


def _flat(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification pairs; language modelling shifts so token t predicts token t + 1."""
    if logits.dim() == 3:
        return logits[:, :-1].flatten(0, 1), target[:, 1:].flatten()
    return logits, target


def task_loss(logits: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean",
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of classification logits, or next-token cross-entropy of LM logits.

    Example:
        >>> float(task_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1])))  # ln 2
        0.6931471824645996
    """
    flat_logits, flat_target = _flat(logits, target)
    return F.cross_entropy(flat_logits, flat_target, reduction=reduction,
                           label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, *, task: str | None = None) -> dict[str, float]:
    """Top-1 accuracy in percent, mean cross-entropy and sample count; restores train mode.

    Language models also get ``perplexity`` (exp of the mean token loss); their accuracy is
    next-token top-1 and ``samples`` counts scored tokens. With ``task``, the batches are
    reported as that phase's progress (see :mod:`compress.progress`).
    """
    with report_phase(task, len(loader) if hasattr(loader, "__len__") else 0) \
            if task else contextlib.nullcontext() as phase:
        result = _evaluate(model, loader, device, phase)
        if phase is not None:
            phase.result = f"top-1 {result['accuracy']:.2f} % on {result['samples']:,} samples"
    return result


def _evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device, phase: Any) -> dict[str, float]:
    was_training = model.training
    model.eval()
    correct, total, loss_sum, language = 0, 0, 0.0, False
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        language = logits.dim() == 3
        flat_logits, flat_target = _flat(logits, y)
        scored = flat_target != IGNORE_INDEX
        loss_sum += F.cross_entropy(flat_logits, flat_target, reduction="sum",
                                    ignore_index=IGNORE_INDEX).item()
        correct += ((flat_logits.argmax(dim=-1) == flat_target) & scored).sum().item()
        total += int(scored.sum().item())
        if phase is not None:
            phase.advance()
    model.train(was_training)
    assert total > 0, "evaluation data is empty"
    result = {"accuracy": 100.0 * correct / total, "loss": loss_sum / total, "samples": total}
    if language:
        result["perplexity"] = math.exp(min(loss_sum / total, 700.0))
    return result

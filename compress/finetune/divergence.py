"""Divergence during fine-tuning: what counts as one, and the message when it happens twice.

:mod:`compress.finetune.finetune` checks each loss (:func:`loss_divergence`), the weights at
the end of a fixed budget (:func:`weights_finite`) and, with patience, every validation result
against evaluation 0 (:func:`metric_collapse`). A first divergence rolls the model back and
restarts at a lower learning rate; a second one fails the run with :func:`diverged_twice`.

Example:
    >>> loss_divergence(torch.tensor(float("nan")))
    'loss became nan'
    >>> metric_collapse(41.0, 80.0, mode="max", name="val_accuracy", drop=30.0, factor=10.0)
    "val_accuracy fell to 41.00, 39.00 points below evaluation 0's 80.00"
    >>> metric_collapse(75.0, 80.0, mode="max", name="val_accuracy", drop=30.0, factor=10.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["Divergence", "loss_divergence", "weights_finite", "metric_collapse",
           "diverged_twice"]


@dataclass(frozen=True)
class Divergence:
    """One divergence: why, and at which optimizer step of its attempt (1-based).

    Example:
        >>> Divergence("loss became inf", 13)
        Divergence(reason='loss became inf', step=13)
    """

    reason: str
    step: int


def loss_divergence(loss: torch.Tensor) -> str | None:
    """``"loss became nan"`` (or ``inf``) for a non-finite training loss, else None.

    One host sync per call; the loss is a scalar, so nothing else is copied.

    Example:
        >>> loss_divergence(torch.tensor(0.7)) is None
        True
    """
    if bool(torch.isfinite(loss.detach())):
        return None
    return f"loss became {loss.item()}"


def weights_finite(model: nn.Module) -> bool:
    """True when every parameter and floating-point buffer is finite.

    Catches a last optimizer step that broke the weights: no later loss would show it.

    Example:
        >>> weights_finite(nn.Linear(2, 1))
        True
    """
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    # One reduction per tensor, one sync in all.
    return bool(torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all())


def metric_collapse(value: float, reference: float, *, mode: Literal["max", "min"], name: str,
                    drop: float, factor: float) -> str | None:
    """Why ``value`` is a collapse against ``reference`` (evaluation 0), or None.

    ``mode="max"`` (accuracy): non-finite, or more than ``drop`` points below the reference.
    ``mode="min"`` (loss): non-finite, or more than ``factor`` times the reference. A
    reference that is not a number itself (the pruned model was already broken) has nothing to
    collapse from, so nothing is a collapse then.

    Example:
        >>> metric_collapse(12.0, 1.0, mode="min", name="val_loss", drop=30.0, factor=10.0)
        "val_loss rose to 12, more than 10x evaluation 0's 1"
    """
    if not math.isfinite(reference):
        return None
    if not math.isfinite(value):
        return f"{name} became {value}"
    if mode == "max" and value < reference - drop:
        return (f"{name} fell to {value:.2f}, {reference - value:.2f} points below evaluation "
                f"0's {reference:.2f}")
    if mode == "min" and value > factor * reference:
        return (f"{name} rose to {value:.4g}, more than {factor:g}x evaluation 0's "
                f"{reference:.4g}")
    return None


def diverged_twice(step: int, first: Divergence, second: Divergence, lr: float) -> str:
    """The :class:`~compress.errors.CheckFailed` message after a second divergence.

    Example:
        >>> d = Divergence("loss became nan", 13)
        >>> diverged_twice(2, d, Divergence("loss became nan", 4), 0.001)  # doctest: +ELLIPSIS
        'fine-tuning after pruning step 2 diverged twice (loss became nan at optimizer step 13, \
again at step 4 after lowering the learning rate to 0.001); lower finetune.lr or set ...'
    """
    again = "again" if second.reason == first.reason else second.reason
    return (f"fine-tuning after pruning step {step} diverged twice ({first.reason} at "
            f"optimizer step {first.step}, {again} at step {second.step} after lowering the "
            f"learning rate to {lr:g}); lower finetune.lr or set finetune.grad_clip")

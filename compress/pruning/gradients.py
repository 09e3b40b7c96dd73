"""Gradients for gradient-based importance (taylor, hessian): the task loss back-propagated
over a few training batches, by the structured and the transformer pruners alike.

The model is put in eval mode while it runs: batch-norm statistics stay frozen, so the
gradients are those of the model that is about to be pruned (and its running statistics are
not moved by batches it is not trained on).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(4, 2)
    >>> batches = [(torch.randn(3, 4), torch.tensor([0, 1, 1]))]
    >>> n, squares = backprop_task_loss_(net, batches, torch.device("cpu"), importance="taylor")
    >>> n, net.weight.grad is not None, squares
    (1, True, None)
    >>> n, squares = backprop_task_loss_(net, batches, torch.device("cpu"), importance="hessian",
    ...                                  per_sample=True)
    >>> n, tuple(squares[net.weight].shape)  # one squared gradient per sample, summed
    (3, (2, 4))
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from compress.errors import InputError
from compress.measure.evaluate import task_loss

__all__ = ["backprop_task_loss_"]


def backprop_task_loss_(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        device: torch.device, *, importance: str, per_sample: bool = False
                        ) -> tuple[int, dict[nn.Parameter, torch.Tensor] | None]:
    """Accumulate the task loss's gradients over ``batches`` into ``.grad`` (cleared first).

    Returns the number of batches and, with ``per_sample``, the sum over samples of each
    parameter's squared per-sample gradient instead (``.grad`` then holds the last sample's).
    ``importance`` names the criterion in the error raised when there is no batch.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    n = 0
    squares: dict[nn.Parameter, torch.Tensor] | None = {} if per_sample else None
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        if squares is not None:
            n += _accumulate_squares(model, x, y, squares)
            continue
        task_loss(model(x), y).backward()
        n += 1
    model.train(was_training)
    if n == 0:
        raise InputError(f"importance {importance!r} needs training batches; configure data "
                         f"with a training split")
    return n, squares


def _accumulate_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        squares: dict[nn.Parameter, torch.Tensor]) -> int:
    losses = task_loss(model(x), y, reduction="none")
    for i, loss in enumerate(losses):
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=i < len(losses) - 1)
        for p in model.parameters():
            if p.grad is not None:
                g2 = p.grad.detach().pow(2)
                squares[p] = squares[p] + g2 if p in squares else g2
    return len(losses)

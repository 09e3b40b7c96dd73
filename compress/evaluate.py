"""Evaluation: top-1 accuracy and mean loss on a DataLoader.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = DataLoader(TensorDataset(torch.eye(4), torch.arange(4)), batch_size=2)
    >>> evaluate(torch.nn.Identity(), data, torch.device("cpu"))["accuracy"]
    100.0
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> dict[str, float]:
    """Top-1 accuracy in percent, mean cross-entropy and sample count; restores train mode."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    assert total > 0, "evaluation data is empty"
    return {"accuracy": 100.0 * correct / total, "loss": loss_sum / total, "samples": total}

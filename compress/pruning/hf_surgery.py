"""Row and column surgery on the projections of transformers models: ``nn.Linear`` and
transformers' ``Conv1D`` (GPT-2), which stores its weight transposed.

Example:
    >>> lin = nn.Linear(4, 3)
    >>> keep_out_(lin, torch.tensor([0, 2]))
    >>> lin.weight.shape, lin.out_features, out_width(lin)
    (torch.Size([2, 4]), 2, 2)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["dims", "out_width", "keep_out_", "keep_in_", "zero_out_", "zero_in_"]


def dims(module: nn.Module) -> tuple[int, int]:
    """(output dim, input dim) of the weight: transformers' Conv1D stores it transposed."""
    if isinstance(module, nn.Linear):
        return 0, 1
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return 1, 0
    raise AssertionError(f"unsupported projection {type(module).__name__}")


def out_width(module: nn.Module) -> int:
    return module.weight.shape[dims(module)[0]]


def _set_widths(module: nn.Module) -> None:
    out_dim, in_dim = dims(module)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:
        module.nf, module.nx = module.weight.shape[out_dim], module.weight.shape[in_dim]


def keep_out_(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep only output features ``idx`` (rows of a Linear)."""
    out_dim, _ = dims(module)
    idx = idx.to(module.weight.device)
    module.weight = nn.Parameter(module.weight.data.index_select(out_dim, idx).clone())
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.data.index_select(0, idx).clone())
    _set_widths(module)


def keep_in_(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep only input features ``idx`` (columns of a Linear)."""
    _, in_dim = dims(module)
    module.weight = nn.Parameter(
        module.weight.data.index_select(in_dim, idx.to(module.weight.device)).clone())
    _set_widths(module)


@torch.no_grad()
def zero_out_(module: nn.Module, idx: torch.Tensor) -> None:
    out_dim, _ = dims(module)
    module.weight.index_fill_(out_dim, idx.to(module.weight.device), 0.0)
    if module.bias is not None:
        module.bias.index_fill_(0, idx.to(module.bias.device), 0.0)


@torch.no_grad()
def zero_in_(module: nn.Module, idx: torch.Tensor) -> None:
    _, in_dim = dims(module)
    module.weight.index_fill_(in_dim, idx.to(module.weight.device), 0.0)

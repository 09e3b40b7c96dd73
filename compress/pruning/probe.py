"""The probe batch through a model, and the copy a mid-run export writes.

The mask kinds zero pruned weights in the parameters themselves
(:mod:`~compress.pruning.mask_store`), so a model mid-run is already the pruned model weight for
weight: an export of a step needs only a copy it may move and put in eval mode, not the
training model itself.

Example:
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> torch.equal(probe_output(net, torch.ones(3, 4), "demo"),
    ...             probe_output(export_copy(net), torch.ones(3, 4), "demo"))
    True
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from compress.errors import CheckFailed

__all__ = ["probe_output", "export_copy"]


def probe_output(model: nn.Module, probe: torch.Tensor, what: str) -> torch.Tensor:
    """``model``'s output on ``probe`` in eval mode, as float; :class:`CheckFailed` (naming
    ``what``) when it does not run or is not finite."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as err:
        raise CheckFailed(f"{what}: the model no longer runs on the probe batch "
                          f"({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)
    assert isinstance(out, torch.Tensor), "the probe output must be a tensor"
    if not torch.isfinite(out).all():
        raise CheckFailed(f"{what}: the probe output is not finite")
    return out.detach().float()


def export_copy(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``model`` on ``device`` in eval mode, without the training model's gradient
    hooks (a deep copy does not carry them): what a step's export writes.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> copied = export_copy(net)
        >>> copied is not net and not copied.training
        True
    """
    return copy.deepcopy(model).to(device).eval()

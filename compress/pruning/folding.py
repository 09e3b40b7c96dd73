"""The proof of the mask kinds: a copy with the masks folded into its weights computes what the
masked model computes.

The masked model's forward multiplies ``weight_orig`` by ``weight_mask`` in a pre-forward hook;
what is exported (and what a deployment runs) is the plain weight with the masks folded in. A
step compares the two on the probe batch and records the measured difference, within the
tolerance :func:`~compress.pruning.base.prove_removals_` applies to every proof.

Example:
    >>> from torch.nn.utils import prune
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = prune.random_unstructured(net[0], "weight", amount=0.5)
    >>> x = torch.ones(3, 4)
    >>> prove_folded(probe_output(net, x, "demo"), folded_copy(net), x, "demo", 1e-6).max_diff
    0.0
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from compress.errors import CheckFailed
from compress.pruning.base import prove_removals_
from compress.pruning.proof import Proof

__all__ = ["probe_output", "folded_copy", "prove_folded"]


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


def folded_copy(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A copy on ``device`` in eval mode with every mask folded into its weight (for mid-run
    exports, on the CPU, and for a step's proof, beside the model).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> with torch.no_grad():  # as the pruners mask: the masked weight stays a leaf
        ...     _ = prune.random_unstructured(net[0], "weight", amount=0.5)
        >>> sorted(n for n, _ in folded_copy(net).named_parameters())[:2]
        ['0.bias', '0.weight']
    """
    clone = copy.deepcopy(model).to(device).eval()
    for module in clone.modules():
        for name in [k[: -len("_orig")] for k, _ in module.named_parameters(recurse=False)
                     if k.endswith("_orig")]:
            prune.remove(module, name)
    return clone


class _Replay(nn.Module):
    """Answers its first call with an output already measured, later calls with ``model``'s
    (in eval mode): :func:`prove_removals_` then compares two models at the cost of one
    forward pass, not two."""

    def __init__(self, first: torch.Tensor, model: nn.Module, what: str) -> None:
        super().__init__()
        self.first: torch.Tensor | None = first
        self.model, self.what = model, what

    def forward(self, probe: torch.Tensor) -> torch.Tensor:
        first, self.first = self.first, None
        return first if first is not None else probe_output(self.model, probe, self.what)


def prove_folded(masked_output: torch.Tensor, folded: nn.Module, probe: torch.Tensor, what: str,
                 atol: float) -> Proof:
    """The proof that ``folded`` (masks folded into the weights) computes ``masked_output``
    (the masked model's output on ``probe``): the largest difference and the tolerance it was
    held to (that of :func:`prove_removals_`, from ``atol``); past it, :class:`CheckFailed`.

    Example:
        >>> one, zero = torch.ones(1, 2), torch.zeros(1, 2)
        >>> prove_folded(one, nn.Identity(), one, "demo", 1e-6).max_diff
        0.0
        >>> prove_folded(one, nn.Identity(), zero, "demo", 1e-6)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        compress.errors.CheckFailed: demo (masks folded into the weights): the probe output ...
    """
    what = f"{what} (masks folded into the weights)"
    try:
        proof = prove_removals_(_Replay(masked_output, folded, what), probe,
                                [(what, lambda: None)], verify=True, atol=atol)
    except CheckFailed:
        out = probe_output(folded, probe, what)  # raises its own sentence if it cannot run
        diff = (out - masked_output).abs().max().item() if out.shape == masked_output.shape \
            else float("inf")
        raise CheckFailed(f"{what}: the probe output differs from the masked model's by "
                          f"{diff:.3g}, past the proof tolerance for pruning.verify_atol "
                          f"{atol:g}; the forward does not use the masks as they are "
                          "stored") from None
    assert proof is not None, "measured: verify=True"
    return proof

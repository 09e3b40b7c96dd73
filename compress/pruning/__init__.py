"""Pruning: every kind behind one interface, every step proven where it happens.

The kinds, one module each, registered in :data:`~compress.pruning.base.PRUNING_KINDS` with
their handler, their criteria and one line for ``compress list``:

* ``structured`` (:mod:`~compress.pruning.structured_kind`): whole channels through
  torch-pruning's dependency graph (:mod:`~compress.pruning.structured`; its groups zeroed,
  removed and named by :mod:`~compress.pruning.groups`, norms over pruned channels restricted
  by :mod:`~compress.pruning.norms`, gradient criteria fed by
  :mod:`~compress.pruning.gradients`); transformers
  models get heads, FFN neurons and the hidden size cut by
  :mod:`~compress.pruning.transformer` on the layouts of :mod:`~compress.pruning.hf_layout`
  and :mod:`~compress.pruning.hf_hidden` (the transformer surgery);
* ``unstructured`` (:mod:`~compress.pruning.unstructured`) and ``n:m``
  (:mod:`~compress.pruning.nm`): single weights under masks, sharing
  :mod:`~compress.pruning.masks`; their calibrated criteria (wanda, sparsegpt) run block by
  block in :mod:`~compress.pruning.calibrated` on :mod:`~compress.pruning.calibration`'s
  streaming, with SparseGPT's numerics in :mod:`~compress.pruning.sparsegpt`.

Beside them: :mod:`~compress.pruning.criteria` (the structured criteria),
:mod:`~compress.pruning.selection` (which layers may be pruned) and
:mod:`~compress.pruning.planning` (channel ratios for a MACs target). A new kind is one module
here plus its import line at the bottom of this file.

Example:
    >>> from compress.recipe.pruning import PruningSpec
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> pruner = build_pruner(net, torch.randn(1, 8), PruningSpec(kind="unstructured", ratio=0.5),
    ...                       [0.5])
    >>> pruner.step_(0.5, torch.randn(4, 8)).unit, pruning_kind("n:m").criteria
    ('weights', ('l1', 'l2', 'random', 'wanda', 'sparsegpt'))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.pruning.base import PRUNING_KINDS, Pruner, PruningKind

if TYPE_CHECKING:
    from compress.recipe.pruning import PruningSpec

__all__ = ["build_pruner", "pruning_kind"]


def pruning_kind(name: str) -> PruningKind:
    """The registered kind called ``name`` (:class:`InputError` listing the others)."""
    return PRUNING_KINDS.get(name)


def build_pruner(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                 cumulative_ratios: Sequence[float]) -> Pruner:
    """The pruner for ``spec.kind``, planned for ``cumulative_ratios``."""
    return pruning_kind(spec.kind).build(model, example_inputs, spec,
                                         cumulative_ratios=cumulative_ratios)


# Registering kinds is a side effect of importing their modules.
from compress.pruning import nm, structured_kind, unstructured  # noqa: E402,F401

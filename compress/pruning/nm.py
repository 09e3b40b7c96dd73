"""The ``n:m`` kind: keep the ``n`` largest of every ``m`` consecutive input weights (2:4 for
sparse tensor cores), in one step.

Example:
    >>> from torch import nn
    >>> from compress.recipe.pruning import PruningSpec
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> pruner = NMPruner(model, torch.randn(1, 8), PruningSpec(kind="n:m"),
    ...                   cumulative_ratios=[0.5])
    >>> pruner.step_(0.5, torch.randn(4, 8)).removed
    64
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from compress.errors import CheckFailed
from compress.pruning.base import PRUNING_KINDS
from compress.pruning.calibrated import is_conv1d
from compress.pruning.masks import (
    MaskedTensor,
    MaskPruner,
    check_mask_criterion,
    is_dense,
    mask_kind,
)
from compress.pruning.sparsegpt import RowPattern
from compress.recipe.pruning import PruningSpec

log = logging.getLogger(__name__)

__all__ = ["NMPruner"]


class NMPruner(MaskPruner):
    """Keep the ``n`` largest of every ``m`` consecutive input weights (e.g. 2:4), one step.

    Blocks run along the input dimension: Linear ``[out, in]`` rows, Conv ``[out, in, *k]``
    across input channels at each (out, kernel position). A layer whose input width is not a
    multiple of ``m`` is skipped (:attr:`skipped` says why; its sparsity reads 0.0).
    """

    kind = "n:m"
    eligible = "is not ignored, not the output layer and has an input width divisible by m"

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                 cumulative_ratios: Sequence[float]) -> None:
        super().__init__(model, example_inputs, spec, cumulative_ratios=cumulative_ratios)
        assert len(self._ratios) == 1 and abs(self._ratios[0] - (1 - spec.n / spec.m)) < 1e-9

    @staticmethod
    def _in_dim(module: nn.Module) -> int:
        # ConvTranspose weights are [in, out/groups, *k], Conv1D's [in, out]; the others
        # [out, in/groups, *k].
        return 0 if getattr(module, "transposed", False) or is_conv1d(module) else 1

    def _select(self, name: str, module: nn.Module) -> list[MaskedTensor]:
        if not is_dense(module) or not self._calibrated_layer(name, module):
            return []
        width = module.weight.shape[self._in_dim(module)]
        if width % self.spec.m:
            self.skipped[name] = f"input width {width} is not divisible by m={self.spec.m}"
            log.info("n:m: skipping %s: %s", name, self.skipped[name])
            return []
        return [MaskedTensor(name, module, "weight")]

    def _pattern(self, t: MaskedTensor, target_ratio: float) -> RowPattern:
        return RowPattern(nm=(self.spec.n, self.spec.m))

    def _blocks(self, t: MaskedTensor, w: torch.Tensor) -> torch.Tensor:
        """``w`` as [..., blocks, m], the blocks running along the input dimension."""
        w = w.movedim(self._in_dim(t.module), -1)
        return w.reshape(*w.shape[:-1], -1, self.spec.m)

    def _keeps(self, target_ratio: float) -> Iterator[torch.Tensor]:
        for t in self._tensors:  # one tensor's scores at a time
            blocks = self._blocks(t, self._scores(t))
            keep = torch.zeros_like(blocks, dtype=torch.bool)
            keep.scatter_(-1, blocks.topk(self.spec.n, dim=-1).indices, True)  # exactly n
            shape = t.original().movedim(self._in_dim(t.module), -1).shape
            yield keep.reshape(shape).movedim(-1, self._in_dim(t.module))

    def _check_pattern(self, target_ratio: float) -> None:
        for t in self._tensors:
            worst = int((self._blocks(t, t.effective()) != 0).sum(dim=-1).max())
            if worst > self.spec.n:
                raise CheckFailed(f"n:m step: {t.key!r} has a block of {self.spec.m} weights "
                                  f"with {worst} non-zeros (at most {self.spec.n} allowed)")


def _check_nm(spec: PruningSpec) -> None:
    if spec.n >= spec.m:
        raise ValueError(f"n:m pruning needs n < m (got {spec.n}:{spec.m})")
    if spec.ratio is not None or spec.target is not None:
        raise ValueError("n:m pruning fixes the sparsity at 1 - n/m; remove 'ratio'/'target'")
    check_mask_criterion(spec)
    if spec.importance == "sparsegpt" and spec.sparsegpt_block % spec.m:
        raise ValueError(f"sparsegpt_block ({spec.sparsegpt_block}) must be a multiple of m "
                         f"({spec.m}): each block of columns holds whole groups")


PRUNING_KINDS.register("n:m")(mask_kind(NMPruner, check=_check_nm, single_step=True,
                                    final_target=lambda spec: 1.0 - spec.n / spec.m))

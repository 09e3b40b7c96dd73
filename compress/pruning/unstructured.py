"""The ``unstructured`` kind: the smallest (or random) single weights masked to zero, locally
per tensor, per output row (``scope: row``, the comparison group of Wanda, here by magnitude
alone: it tells what the group does apart from the activations) or globally, up to a
cumulative fraction of the original.

Example:
    >>> from torch import nn
    >>> from compress.recipe.pruning import PruningSpec
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> x = torch.randn(4, 8)
    >>> pruner = UnstructuredPruner(model, x[:1], PruningSpec(kind="unstructured", ratio=0.5),
    ...                             cumulative_ratios=[0.5])
    >>> pruner.step_(0.5, x).removed, pruner.sparsity()["layers"]["0"]
    (64, 0.5)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from compress.errors import CheckFailed
from compress.pruning.base import PRUNING_KINDS, check_ratio_or_target, check_transformer_fractions
from compress.pruning.calibrated import is_conv1d, weight_rows
from compress.pruning.masks import (
    NORM_LAYERS,
    MaskedTensor,
    MaskPruner,
    check_mask_criterion,
    is_dense,
    mask_kind,
)
from compress.pruning.sparsegpt import RowPattern, prune_lowest, row_counts
from compress.recipe.pruning import PruningSpec

__all__ = ["UnstructuredPruner"]


class UnstructuredPruner(MaskPruner):
    """Zero the smallest (or random) weights up to a cumulative fraction of the original.

    ``scope: local`` prunes that fraction of every tensor, ``global`` ranks all tensors
    together. Exactly ``round(target * count)`` weights are pruned: ``topk`` cuts ties, where
    a threshold could overshoot. wanda and sparsegpt spread that count over the output rows
    (:func:`~compress.pruning.sparsegpt.row_counts`) and rank within each row.
    """

    kind = "unstructured"

    def _select(self, name: str, module: nn.Module) -> list[MaskedTensor]:
        params = []
        if is_dense(module) and self._calibrated_layer(name, module):
            params = ["weight"] + (["bias"] if self.spec.prune_biases else [])
        elif isinstance(module, NORM_LAYERS) and self.spec.prune_norms:
            params = ["weight"]  # the scale; a zero shift would not remove anything
        return [MaskedTensor(name if p == "weight" else f"{name}.{p}", module, p) for p in params
                if getattr(module, p, None) is not None]

    def _pattern(self, t: MaskedTensor, target_ratio: float) -> RowPattern:
        rows, cols = weight_rows(t).shape
        return RowPattern(counts=row_counts(rows, cols, target_ratio))

    @staticmethod
    def _lowest_off(scores: torch.Tensor, k: int) -> torch.Tensor:
        keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        keep[scores.flatten().topk(k, largest=False).indices] = False
        return keep.view(scores.shape)

    @staticmethod
    def _row_keep(t: MaskedTensor, scores: torch.Tensor, target_ratio: float) -> torch.Tensor:
        """The keep mask pruning the same share of every output row (a 1-D tensor is one
        row; a convolution's row is an output channel's whole kernel)."""
        conv1d = is_conv1d(t.module) and scores.dim() == 2
        rows = (scores.T if conv1d else scores).reshape(scores.shape[-1] if conv1d else
                                                        (scores.shape[0] if scores.dim() > 1
                                                         else 1), -1)
        keep = ~prune_lowest(rows, RowPattern(counts=row_counts(*rows.shape, target_ratio)))
        return keep.T.contiguous() if conv1d else keep.view(scores.shape)

    def _keeps(self, target_ratio: float) -> Iterator[torch.Tensor]:
        if self.spec.scope in ("local", "row"):  # one tensor's scores at a time
            for t in self._tensors:
                s = self._scores(t)
                yield self._row_keep(t, s, target_ratio) if self.spec.scope == "row" \
                    else self._lowest_off(s, round(target_ratio * s.numel()))
            return
        scores = [self._scores(t) for t in self._tensors]
        flat = torch.cat([s.flatten().to(scores[0].device) for s in scores])
        parts = self._lowest_off(flat, round(target_ratio * flat.numel())).split(
            [s.numel() for s in scores])
        yield from (p.view(s.shape).to(s.device) for p, s in zip(parts, scores, strict=True))

    def _check_pattern(self, target_ratio: float) -> None:
        counts = [(t.key, self._pruned(t), t.original().numel()) for t in self._tensors]
        if self.spec.scope == "global":
            counts = [("all prunable tensors", sum(c[1] for c in counts), self._total)]
        for key, pruned, n in counts:
            if abs(pruned - target_ratio * n) > 1:
                raise CheckFailed(f"unstructured step {self._step + 1}: {key!r} has {pruned} "
                                  f"of {n} weights masked, expected {target_ratio * n:.1f}")


def _check_unstructured(spec: PruningSpec) -> None:
    check_ratio_or_target(spec)
    check_transformer_fractions(spec, structured=False)
    check_mask_criterion(spec)
    if spec.target is not None:
        raise ValueError("unstructured pruning does not reduce dense MACs; give "
                         "'ratio' (the weight sparsity) instead of 'target'")


PRUNING_KINDS.register("unstructured")(mask_kind(UnstructuredPruner, check=_check_unstructured))

"""The ``structured`` pruning kind: whole channels, heads and neurons, physically removed.

:func:`build_structured` picks the pruner a model needs: the transformer pruner for models
whose layout compress knows (heads, FFN neurons, hidden size, blocks), torch-pruning's
dependency graph (:class:`~compress.pruning.structured.StructuredPruner`) for the rest, and,
when the graph cannot trace the whole model, one graph per closed block
(:class:`~compress.pruning.local.BlockPruner`).

Example:
    >>> import torch
    >>> from compress.models.cifar_resnet import cifar_resnet
    >>> from compress.recipe.pruning import PruningSpec
    >>> model = cifar_resnet("resnet20").eval()
    >>> pruner = build_structured(model, torch.randn(1, 3, 32, 32), PruningSpec(ratio=0.5))
    >>> type(pruner).__name__
    'StructuredPruner'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.pruning.base import (
    PRUNING_KINDS,
    PruningKind,
    check_ratio_or_target,
    check_transformer_fractions,
)
from compress.pruning.criteria import IMPORTANCE, structured_criteria, structured_kind_criteria
from compress.pruning.graph_errors import graph_errors
from compress.pruning.local import BlockPruner, closed_blocks
from compress.pruning.selection import resolve_ignored
from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec

__all__ = ["build_structured"]

log = logging.getLogger(__name__)


def build_structured(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                     cumulative_ratios: Sequence[float] | None = None) -> Any:
    """Heads and FFN neurons for transformers models, torch-pruning's graph for the rest."""
    from compress.pruning.transformer import (
        TransformerPruner,
        is_transformer,
        refuse_without_layout,
    )

    if is_transformer(model):
        return TransformerPruner(model, example_inputs, spec, cumulative_ratios=cumulative_ratios)
    refuse_without_layout(model)  # never the generic graph: it breaks on unknown attention
    if IMPORTANCE.get(spec.importance).factory is None:
        raise InputError(f"pruning.importance {spec.importance!r} ranks the heads, FFN neurons "
                         f"and hidden channels of transformers models; for this model use one "
                         f"of {', '.join(structured_criteria())}")
    if (spec.heads is not None or spec.ffn is not None or spec.hidden is not None
            or spec.blocks is not None):
        raise InputError("pruning.heads, pruning.ffn, pruning.hidden and pruning.blocks apply "
                         "to transformers models only; remove them")
    try:
        with graph_errors(model, "while building the dependency graph"):
            return StructuredPruner(model, example_inputs, spec,
                                    cumulative_ratios=cumulative_ratios)
    except InputError as err:
        why = getattr(err, "untraceable", None)
        if why is None:
            raise
        ignored = [n for hits in resolve_ignored(model, spec.ignored).values() for n in hits]
        blocks = closed_blocks(model, ignored)
        if not blocks:
            raise
        pruner = BlockPruner(model, example_inputs, spec, blocks, why=why,
                             build=StructuredPruner, cumulative_ratios=cumulative_ratios)
        if not pruner.blocks:
            raise
        log.warning("%s", pruner.note())
        return pruner


def _check(spec: PruningSpec) -> None:
    check_ratio_or_target(spec)
    check_transformer_fractions(spec, structured=True)


PRUNING_KINDS.register("structured")(PruningKind(
    build_structured, criteria=structured_kind_criteria(),
    description="Structured pruning through torch-pruning's dependency graph, with a proof for "
                "every step", check=_check, shrinks_shapes=True))

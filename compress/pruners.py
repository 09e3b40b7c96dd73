"""Pruning kinds (structured, unstructured, n:m) behind one small interface.

A kind registers a factory ``(model, example_inputs, spec, cumulative_ratios) -> Pruner``.
The run drives every kind the same way: one :meth:`Pruner.step_` per scheduled step (each
step proves its own transformation), then :meth:`Pruner.finalize_` before export.

Example:
    >>> pruner = build_pruner(model, example, spec, [0.5, 0.75])  # doctest: +SKIP
    >>> record = pruner.step_(0.5, probe)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from compress.registry import Registry

if TYPE_CHECKING:
    from compress.recipe import PruningSpec

__all__ = ["Pruner", "StepRecord", "PRUNING_KINDS", "build_pruner"]


@dataclass
class StepRecord:
    """What one pruning step did, and the proof that it is exact.

    ``removed`` counts ``unit``s (channels for structured, weights otherwise); ``layers`` maps
    layer names to their output width (structured) or weight sparsity (unstructured, n:m).
    """

    target_ratio: float
    groups: int
    removed: int
    unit: str
    max_abs_diff: float
    layers: dict[str, Any] = field(default_factory=dict)


class Pruner(Protocol):
    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        ...

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        ...

    def finalize_(self) -> None:
        """Make the result plain: no masks, hooks or re-parametrisations left."""

    def get_state(self) -> dict[str, Any]:
        """JSON-safe state from which :meth:`restore_` rebuilds the pruner after a crash."""
        ...

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors the state needs besides :meth:`get_state` (masks), saved with safetensors."""
        ...

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """On the freshly built model, redo what the saved steps did (not the weights)."""


PRUNING_KINDS: Registry[Callable[..., Pruner]] = Registry("pruning kind")


def build_pruner(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                 cumulative_ratios: Sequence[float]) -> Pruner:
    """The pruner for ``spec.kind``, planned for ``cumulative_ratios``."""
    import compress.pruning  # noqa: F401  (registers "structured")
    import compress.sparsity  # noqa: F401  (registers "unstructured", "n:m")

    return PRUNING_KINDS.get(spec.kind)(model, example_inputs, spec,
                                        cumulative_ratios=cumulative_ratios)

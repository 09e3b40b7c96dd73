"""Importance criteria of structured pruning: how channels, heads and neurons are ranked.

The one list of criteria. torch-pruning's graph pruner uses every entry's ``factory``; the
transformers pruner scores heads and FFN neurons itself and supports the entries marked
``transformers``. The mask kinds (unstructured, n:m) rank single weights and declare their own
short list beside their handler; the entries without a ``factory`` (``wanda``, ``sparsegpt``)
rank single weights only, from calibration inputs (``needs_calibration``), in one step.

Example:
    >>> sorted(n for n in IMPORTANCE.names() if IMPORTANCE.get(n).transformers)
    ['activation', 'l1', 'l2', 'random', 'taylor']
    >>> IMPORTANCE.get("taylor").needs_grad, structured_criteria()[:2]
    (True, ('fpgm', 'hessian'))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp

from compress.registry import Registry

__all__ = ["Criterion", "IMPORTANCE", "transformer_criteria", "structured_criteria",
           "structured_kind_criteria"]


@dataclass(frozen=True)
class Criterion:
    """An importance criterion: a factory of torch-pruning importance objects (None: a
    criterion of single weights only)."""

    factory: Callable[[], Any] | None
    needs_grad: bool = False
    per_sample: bool = False  # needs squared per-sample gradients (Hessian diagonal estimate)
    description: str = ""
    transformers: bool = False  # the transformers pruner scores heads/neurons with it too
    needs_calibration: bool = False  # runs the calibration samples (recipe section calibration)
    one_shot: bool = False  # chooses everything in one step (schedule.kind: one-shot only)


IMPORTANCE: Registry[Criterion] = Registry("importance criterion")
IMPORTANCE.register("l1")(Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=1),
                                    description="L1 norm of the group's weights",
                                    transformers=True))
IMPORTANCE.register("l2")(Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=2),
                                    description="L2 norm of the group's weights",
                                    transformers=True))
IMPORTANCE.register("taylor")(Criterion(lambda: tp.importance.GroupTaylorImportance(),
                                        needs_grad=True,
                                        description="first-order Taylor |w * dL/dw|",
                                        transformers=True))
IMPORTANCE.register("hessian")(Criterion(lambda: tp.importance.GroupHessianImportance(),
                                         needs_grad=True, per_sample=True,
                                         description="optimal brain damage: diagonal Hessian "
                                                     "from squared per-sample gradients"))
IMPORTANCE.register("lamp")(Criterion(lambda: tp.importance.LAMPImportance(p=2),
                                      description="layer-adaptive magnitude (LAMP)"))
IMPORTANCE.register("fpgm")(Criterion(lambda: tp.importance.FPGMImportance(p=2),
                                      description="geometric median (FPGM)"))
IMPORTANCE.register("random")(Criterion(lambda: tp.importance.RandomImportance(),
                                        description="random baseline", transformers=True))
IMPORTANCE.register("activation")(Criterion(
    None, transformers=True, needs_calibration=True,
    description="Minitron's activation importance: the size of what each head or FFN neuron "
                "computes on the calibration samples (L2 over the sequence, mean over the "
                "samples), and of what each hidden channel contributes to the layers reading "
                "it (its activation there times their weight columns; transformers, "
                "structured)"))
IMPORTANCE.register("wanda")(Criterion(
    None, needs_calibration=True, one_shot=True,
    description="Wanda: |weight| x L2 norm of its input over the calibration samples, compared "
                "within each output row (unstructured, n:m)"))
IMPORTANCE.register("sparsegpt")(Criterion(
    None, needs_calibration=True, one_shot=True,
    description="SparseGPT: per-row masks from the layer-wise reconstruction error, kept "
                "weights updated to reconstruct the calibration outputs (unstructured, n:m)"))


def structured_criteria() -> tuple[str, ...]:
    """The criteria torch-pruning's graph pruner can use (those with a factory)."""
    return tuple(n for n in IMPORTANCE.names() if IMPORTANCE.get(n).factory is not None)


def structured_kind_criteria() -> tuple[str, ...]:
    """What ``kind: structured`` accepts: the graph pruner's criteria and the transformers
    pruner's (``activation`` ranks heads, neurons and hidden channels of transformers only)."""
    return tuple(n for n in IMPORTANCE.names()
                 if IMPORTANCE.get(n).factory is not None or IMPORTANCE.get(n).transformers)


def transformer_criteria() -> tuple[str, ...]:
    """The criteria the transformers pruner supports, in registry order."""
    return tuple(n for n in IMPORTANCE.names() if IMPORTANCE.get(n).transformers)
